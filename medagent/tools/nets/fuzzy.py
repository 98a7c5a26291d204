"""Intuitionistic fuzzy input module of IF-UNet (arXiv 2602.04227; no public code, see docs/segmenters.md).

Given a membership map mu in [0, 1] (medagent uses the robust per-image percentile min-max scaling of
`medagent.data.intensity.normalize`, the same scaling every other tool sees; that mu is min-max normalised
intensity is the paper's likely but unverified choice), the module returns three maps per input channel:

    membership      mu
    non-membership  nu = (1 - mu) / (1 + lambda * mu)          (Sugeno negation, lambda > -1; default 1.2)
                 or nu = (1 - mu**a) ** (1 / a)                  (Yager negation, a in (0, 1])
    hesitation      pi = 1 - mu - nu

For Sugeno, pi = lambda * mu * (1 - mu) / (1 + lambda * mu), which is >= 0 for lambda >= 0 and ends up
negative for -1 < lambda < 0. For Yager with a > 1 nu exceeds 1 - mu and pi < 0, so only a in (0, 1] is
accepted (a = 1 gives nu = 1 - mu, pi = 0). The maps are stacked as channels [mu, nu, pi] (3 per input
channel) and fed to an ordinary UNet.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from medagent.errors import ConfigError

NEGATIONS = ("sugeno", "yager")
_EPS = 1e-3  # keeps a learnable lambda strictly above -1 (so 1 + lambda * mu >= eps > 0)


class FuzzyInput(nn.Module):
    """(N, C, H, W) membership in [0, 1] -> (N, 3C, H, W) maps [mu, nu, pi] per channel.

    Args:
        negation: "sugeno" or "yager".
        lam: Sugeno lambda (> -1). Default 1.2, the paper's best value.
        learnable_lambda: make lambda a parameter; it is kept > -1 by lambda = -1 + 1e-3 + softplus(raw).
        yager_a: Yager exponent a in (0, 1].
    """

    def __init__(self, negation: str = "sugeno", lam: float = 1.2, learnable_lambda: bool = False, yager_a: float = 0.8) -> None:
        super().__init__()
        if negation not in NEGATIONS:
            raise ConfigError(f"fuzzy negation must be one of {NEGATIONS}, got {negation!r}")
        if not lam > -1.0:
            raise ConfigError(f"Sugeno lambda must be > -1, got {lam}")
        if not 0.0 < yager_a <= 1.0:
            raise ConfigError(f"Yager exponent a must be in (0, 1] so that hesitation stays >= 0, got {yager_a}")
        self.negation = negation
        self.yager_a = float(yager_a)
        raw = math.log(math.expm1(lam + 1.0 - _EPS))  # inverse of lam = softplus(raw) - 1 + eps
        if learnable_lambda:
            self.raw_lambda = nn.Parameter(torch.tensor(raw, dtype=torch.float32))
        else:
            self.register_buffer("raw_lambda", torch.tensor(raw, dtype=torch.float32))

    @property
    def lam(self) -> torch.Tensor:
        """Current Sugeno lambda (a scalar tensor, always > -1)."""
        return F.softplus(self.raw_lambda) - 1.0 + _EPS

    def forward(self, mu: torch.Tensor) -> torch.Tensor:
        mu = mu.clamp(0.0, 1.0)
        if self.negation == "sugeno":
            nu = (1.0 - mu) / (1.0 + self.lam * mu)
        else:
            a = self.yager_a
            nu = (1.0 - mu.pow(a)).clamp_min(0.0).pow(1.0 / a)
        pi = 1.0 - mu - nu
        if self.negation == "yager":
            pi = pi.clamp_min(0.0)  # rounding only: pi >= 0 holds exactly for a <= 1
        n, c, h, w = mu.shape
        return torch.stack([mu, nu, pi], dim=2).reshape(n, 3 * c, h, w)
