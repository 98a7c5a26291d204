"""`noadapt`: the frozen source model, unadapted (the reference method of CTTA benchmarks)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from medagent.tools.tta.base import AdaptiveTool, build_adaptive


@dataclass
class NoAdaptConfig:
    """Nothing to configure besides the output activation.

    Attributes:
        activation: "softmax" (K-class outputs) or "sigmoid" (one or more binary channels).
        seed: unused (kept so every method's config has one).
    """

    activation: str = "softmax"
    seed: int = 0


class NoAdaptTool(AdaptiveTool):
    """Source model in eval mode (source BN statistics); has no state besides the image count."""

    name = "noadapt"
    needs_bn = False

    def _setup(self) -> None:
        pass

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.source.net(x)


def build(checkpoint: str | None = None, dataset: str | None = None, device: str = "cpu",
          config: NoAdaptConfig | dict[str, Any] | None = None, **overrides: Any) -> NoAdaptTool:
    """Registry builder: the source model of `dataset` (shipped ctta-source-*) or `checkpoint`."""
    return build_adaptive(NoAdaptTool, NoAdaptConfig, checkpoint, dataset, device, config, overrides)
