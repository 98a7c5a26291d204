"""`cotta`: continual test-time adaptation (Wang et al., CVPR 2022) for segmentation, batch 1.

- Student: every parameter of the source network is trained (Adam) on the cross-entropy to a soft
  pseudo-label; batch norm uses the image's own statistics (train-mode BN, batch 1), as in the release.
- Teacher: an exponential moving average of the student (0.999). The pseudo-label is the teacher's
  softmax on the image, or, when the source ("anchor") model's mean max-probability on the image is
  below `confidence_threshold` (0.92), the mean of the teacher's softmax over `n_augment` augmented
  copies (brightness/contrast jitter, Gaussian noise, horizontal flip undone on the output).
- Stochastic restore: after each step every trainable weight element returns to its source value with
  probability `restore_prob` (0.01).
The image's prediction is the teacher's output after the update (CoTTA predicts with the teacher).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from medagent.tools.tta.base import (
    AdaptiveTool, build_adaptive, color_jitter, load_optimizer_tensors, optimizer_tensors, probabilities,
)
from medagent.tools.tta.batchnorm import set_bn


@dataclass
class CoTTAConfig:
    """CoTTA settings (defaults from the CoTTA release; see METHODS.md section 3).

    Attributes:
        lr: Adam learning rate.
        betas: Adam betas.
        ema: teacher = ema * teacher + (1 - ema) * student after every step.
        confidence_threshold: augment-average the pseudo-label when the anchor's mean confidence is below this.
        n_augment: augmented copies averaged (32 in the release; batched in one forward pass).
        restore_prob: per-element probability of restoring a weight to its source value after a step.
        jitter: brightness and contrast jitter strength of the augmentations.
        noise_std: std of the additive Gaussian noise of the augmentations (image scaled to [0, 1]).
        flip: also flip half of the augmented copies horizontally (undone on the outputs).
        activation: "softmax" or "sigmoid".
        seed: seeds augmentations and stochastic restore.
    """

    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    ema: float = 0.999
    confidence_threshold: float = 0.92
    n_augment: int = 32
    restore_prob: float = 0.01
    jitter: float = 0.2
    noise_std: float = 0.02
    flip: bool = True
    activation: str = "softmax"
    seed: int = 0


class CoTTATool(AdaptiveTool):
    name = "cotta"

    def _setup(self) -> None:
        self.student = self.source.adapted_copy()
        set_bn(self.student, mode="instance", loss_ref=None)
        for p in self.student.parameters():
            p.requires_grad_(True)
        self.teacher = copy.deepcopy(self.student)
        self.anchor = copy.deepcopy(self.student)
        for net in (self.teacher, self.anchor):
            for p in net.parameters():
                p.requires_grad_(False)
        self.source_state = {n: p.detach().clone() for n, p in self.student.named_parameters()}
        self.optimizer = torch.optim.Adam(list(self.student.parameters()), lr=self.config.lr, betas=tuple(self.config.betas))

    def _augment(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = int(self.config.n_augment)
        xs = x.expand(n, *x.shape[1:]).clone()
        xs = color_jitter(xs, self.config.jitter, self.config.jitter, self.generator)
        xs = xs + torch.randn(xs.shape, generator=self.generator).to(xs) * self.config.noise_std
        flips = (torch.rand(n, generator=self.generator) < 0.5) if self.config.flip else torch.zeros(n, dtype=torch.bool)
        xs[flips] = xs[flips].flip(-1)
        return xs, flips

    def _pseudo_label(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        act = self.activation
        with torch.no_grad():
            anchor_conf = float(probabilities(self.anchor(x), act).max(1)[0].mean())
            if anchor_conf < self.config.confidence_threshold and self.config.n_augment > 0:
                xs, flips = self._augment(x)
                probs = probabilities(self.teacher(xs), act)
                probs[flips] = probs[flips].flip(-1)
                return probs.mean(0, keepdim=True), anchor_conf
            return probabilities(self.teacher(x), act), anchor_conf

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        target, _ = self._pseudo_label(x)
        logits = self.student(x)
        if self.activation == "sigmoid":
            p = target if target.shape[1] == logits.shape[1] else target[:, 1:]
            loss = F.binary_cross_entropy_with_logits(logits, p)
        else:
            loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            a = self.config.ema
            for t, s in zip(self.teacher.parameters(), self.student.parameters()):
                t.mul_(a).add_(s.detach(), alpha=1 - a)
            if self.config.restore_prob > 0:
                for n, p in self.student.named_parameters():
                    keep = (torch.rand(p.shape, generator=self.generator) >= self.config.restore_prob).to(p)
                    p.copy_(p * keep + self.source_state[n] * (1 - keep))
            return self.teacher(x)

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"student.{n}": p for n, p in self.student.named_parameters()}
        out.update({f"teacher.{n}": p for n, p in self.teacher.named_parameters()})
        out.update(optimizer_tensors(self.optimizer, "optim"))
        return out

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for prefix, net in (("student", self.student), ("teacher", self.teacher)):
                for n, p in net.named_parameters():
                    p.copy_(tensors[f"{prefix}.{n}"])
        load_optimizer_tensors(self.optimizer, tensors, "optim")


def build(checkpoint: str | None = None, dataset: str | None = None, device: str = "cpu",
          config: CoTTAConfig | dict[str, Any] | None = None, **overrides: Any) -> CoTTATool:
    """Registry builder (see `medagent.tools.tta.base.load_source` for the source model)."""
    return build_adaptive(CoTTATool, CoTTAConfig, checkpoint, dataset, device, config, overrides)
