"""`vptta`: visual prompt test-time adaptation (Chen et al., CVPR 2024; METHODS.md section 3).

The source network stays frozen; a low-frequency Fourier-amplitude prompt (`FourierPrompt`, side
int(alpha * image size), at least 1) is learned per image with one Adam step on the batch-norm
statistics alignment loss. Batch norm normalises with "warm-up" statistics m * image + (1 - m) * source,
m = 1 / (sqrt(n) / warm_n + 1) with n the images seen (n counts the current image), and the loss is the
L1 distance of each layer's per-image mean / std to those warm-up statistics (averaged over layers).
Each image's prompt starts from the softmax(cos / 0.2)-weighted top-16 prompts of a FIFO memory bank
(40 entries keyed by the image's low-frequency amplitude) once it holds 16 entries, else from ones.
The Adam optimizer persists over the stream (as in the release).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medagent.errors import ConfigError, ToolError
from medagent.tools.tta.base import AdaptiveTool, build_adaptive, load_optimizer_tensors, optimizer_tensors
from medagent.tools.tta.batchnorm import bn_alignment_loss, set_bn
from medagent.tools.tta.fourier import FourierPrompt, low_frequency_amplitude, prompt_side


class MemoryBank:
    """FIFO of (key, value) pairs; `neighbours(key, k)` = softmax(cos / temperature)-weighted top-k values.

    Args:
        capacity: most pairs kept; the oldest is dropped first.
        temperature: softmax temperature of the cosine similarities.
    """

    def __init__(self, capacity: int = 40, temperature: float = 0.2) -> None:
        if capacity < 1:
            raise ConfigError(f"memory bank capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.temperature = float(temperature)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    def reset(self) -> None:
        self.keys, self.values = [], []

    def push(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys.append(key.detach().flatten().float().cpu().clone())
        self.values.append(value.detach().float().cpu().clone())
        while len(self.keys) > self.capacity:
            self.keys.pop(0)
            self.values.pop(0)

    def similarities(self, key: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of `key` to every stored key, (len,)."""
        bank = torch.stack(self.keys)
        return F.cosine_similarity(bank, key.detach().flatten().float().cpu()[None], dim=1, eps=1e-12)

    def neighbours(self, key: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted value, indices of the k nearest keys (most similar first), their weights)."""
        if not self.keys:
            raise ToolError("the memory bank is empty")
        sims = self.similarities(key)
        k = min(int(k), len(self.keys))
        top, idx = torch.topk(sims, k)
        weights = torch.softmax(top / self.temperature, dim=0)
        values = torch.stack([self.values[int(i)] for i in idx])
        blended = (weights.view(-1, *[1] * (values.dim() - 1)) * values).sum(0)
        return blended, idx, weights

    def state(self) -> dict[str, torch.Tensor]:
        if not self.keys:
            return {}
        return {"memory.keys": torch.stack(self.keys), "memory.values": torch.stack(self.values)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.reset()
        if "memory.keys" in tensors:
            self.keys = [k.clone() for k in tensors["memory.keys"]]
            self.values = [v.clone() for v in tensors["memory.values"]]


@dataclass
class VPTTAConfig:
    """VPTTA settings; defaults from the release's fundus (OPTIC) script.

    Attributes:
        lr: Adam learning rate of the prompt (0.05 fundus; the release uses 0.01 for polyps).
        betas: Adam betas (0.9, 0.99 in the release).
        steps: prompt updates per image (1).
        alpha: prompt side = int(alpha * image_size), at least 1.
        image_size: reference image side for the prompt size; None: min(H, W) of the first image.
        warm_n: warm-up constant of the statistics mix.
        memory_size: FIFO capacity of the memory bank.
        neighbours: prompts blended to initialise a new image's prompt (the bank is used once it holds this many).
        temperature: softmax temperature of the neighbours' cosine similarities.
        activation: "softmax" or "sigmoid".
        seed: unused (no randomness).
    """

    lr: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    steps: int = 1
    alpha: float = 0.01
    image_size: int | None = None
    warm_n: float = 5.0
    memory_size: int = 40
    neighbours: int = 16
    temperature: float = 0.2
    activation: str = "softmax"
    seed: int = 0


class VPTTATool(AdaptiveTool):
    name = "vptta"

    def _setup(self) -> None:
        self.net = self.source.adapted_copy()
        set_bn(self.net, mode="warmup", loss_ref="norm", moment=1.0)
        self.memory = MemoryBank(self.config.memory_size, self.config.temperature)
        self.prompt: FourierPrompt | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def _ensure_prompt(self, channels: int, size: int) -> FourierPrompt:
        if self.prompt is None:
            self.prompt = FourierPrompt(channels, prompt_side(self.config.alpha, size)).to(self.device)
            self.optimizer = torch.optim.Adam(self.prompt.parameters(), lr=self.config.lr, betas=tuple(self.config.betas))
        return self.prompt

    def moment(self) -> float:
        return float(1.0 / (np.sqrt(self.images_seen) / self.config.warm_n + 1.0))

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        prompt = self._ensure_prompt(x.shape[1], self.image_size(x))
        set_bn(self.net, moment=self.moment())
        key = low_frequency_amplitude(x, prompt.side)
        if len(self.memory) >= self.config.neighbours:
            init, _, _ = self.memory.neighbours(key, self.config.neighbours)
            prompt.set(init.to(self.device))
        else:
            prompt.reset()
        set_bn(self.net, loss_ref="norm")
        for _ in range(self.config.steps):
            px, _ = prompt(x)
            self.net(px)
            loss = bn_alignment_loss(self.net)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        set_bn(self.net, loss_ref=None)
        with torch.no_grad():
            px, _ = prompt(x)
            logits = self.net(px)
        self.memory.push(key, prompt.prompt.detach())
        return logits

    def _state_meta(self) -> dict[str, Any]:
        return {"prompt_side": None if self.prompt is None else self.prompt.side, "channels": None if self.prompt is None else int(self.prompt.prompt.shape[1])}

    def _load_state_meta(self, meta: dict[str, Any]) -> None:
        if meta.get("prompt_side") is not None:
            self._ensure_prompt(int(meta["channels"]), int(self._image_size))

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.memory.state())
        if self.prompt is not None:
            out["prompt"] = self.prompt.prompt
            out.update(optimizer_tensors(self.optimizer, "optim"))
        return out

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.memory.load({k: v.cpu() for k, v in tensors.items()})
        if self.prompt is not None and "prompt" in tensors:
            self.prompt.set(tensors["prompt"])
            load_optimizer_tensors(self.optimizer, tensors, "optim")


def build(checkpoint: str | None = None, dataset: str | None = None, device: str = "cpu",
          config: VPTTAConfig | dict[str, Any] | None = None, **overrides: Any) -> VPTTATool:
    """Registry builder (see `medagent.tools.tta.base.load_source` for the source model)."""
    return build_adaptive(VPTTATool, VPTTAConfig, checkpoint, dataset, device, config, overrides)
