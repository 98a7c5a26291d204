"""`tent`: test entropy minimisation (Wang et al., ICLR 2021) in the continual, batch-1 protocol.

Only the batch-norm affine parameters (weight, bias) are trained, with Adam, on the mean per-pixel
entropy of the prediction (binary entropy per channel for sigmoid outputs); batch norm normalises with
the image's own statistics (train-mode BN with batch size 1). The optimizer and the affine parameters
persist across images (no reset between centres in the continual protocol). The image is predicted
after its update(s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medagent.tools.tta.base import AdaptiveTool, build_adaptive, entropy, load_optimizer_tensors, optimizer_tensors
from medagent.tools.tta.batchnorm import set_bn, tta_bn_layers


@dataclass
class TentConfig:
    """Tent settings (defaults: the Tent paper's Adam 1e-3, one step per batch).

    Attributes:
        lr: Adam learning rate.
        betas: Adam betas.
        steps: gradient steps per image.
        activation: "softmax" (entropy over classes) or "sigmoid" (binary entropy per channel).
        seed: unused by Tent itself (no randomness).
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    steps: int = 1
    activation: str = "softmax"
    seed: int = 0


class TentTool(AdaptiveTool):
    name = "tent"

    def _setup(self) -> None:
        self.net = self.source.adapted_copy()
        set_bn(self.net, mode="instance", loss_ref=None)
        self.params = []
        for m in tta_bn_layers(self.net):
            for p in (m.weight, m.bias):
                p.requires_grad_(True)
                self.params.append(p)
        self.optimizer = torch.optim.Adam(self.params, lr=self.config.lr, betas=tuple(self.config.betas))

    def trainable_names(self) -> list[str]:
        return [n for n, p in self.net.named_parameters() if p.requires_grad]

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.config.steps):
            loss = entropy(self.net(x), self.activation)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            return self.net(x)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"net.{n}": p for n, p in self.net.named_parameters() if p.requires_grad}
        out.update(optimizer_tensors(self.optimizer, "optim"))
        return out

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.net.named_parameters():
                if f"net.{n}" in tensors:
                    p.copy_(tensors[f"net.{n}"])
        load_optimizer_tensors(self.optimizer, tensors, "optim")


def build(checkpoint: str | None = None, dataset: str | None = None, device: str = "cpu",
          config: TentConfig | dict[str, Any] | None = None, **overrides: Any) -> TentTool:
    """Registry builder (see `medagent.tools.tta.base.load_source` for the source model)."""
    return build_adaptive(TentTool, TentConfig, checkpoint, dataset, device, config, overrides)
