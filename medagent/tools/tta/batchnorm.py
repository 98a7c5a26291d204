"""Batch norm with switchable statistics, shared by the CTTA tools (the "BN-statistics hooks").

`convert_bn(net)` copies a source network with each BatchNorm2d replaced by a `TTABatchNorm` that normalises with
the source statistics, the image's own statistics, a mix of both, or VPTTA's warm-up mix, and records the
statistics-alignment loss of its last forward pass (`bn_alignment_loss`).
"""

from __future__ import annotations


import torch
from torch import nn

from medagent.errors import ConfigError, ToolError


class TTABatchNorm(nn.Module):
    """A BatchNorm2d whose normalisation statistics are chosen by `mode`; (N, C, H, W) -> same.

    Modes (per sample n, channel c; "instance" statistics are the mean / variance over H, W):
        "source":   the source running mean / variance (plain eval-mode batch norm).
        "instance": the sample's own statistics (= train-mode batch norm with batch size 1).
        "mix":      mean = lam * source + (1 - lam) * instance, same for the variance (MGIPT inference, lam 0.8).
        "warmup":   mean = m * batch + (1 - m) * source with the batch statistics detached (VPTTA warm-up);
                    m is set from outside (`moment`).
    When `loss_ref` is "source" or "norm", the forward pass stores `align_loss`: the L1 distance between
    the reference mean / std (source statistics, or the statistics used to normalise) and the sample's
    own mean / std (unbiased std, like the releases), averaged over channels and samples.
    The affine weight and bias are parameters (Tent and CoTTA train them); the source statistics are buffers.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ToolError("a BatchNorm layer without running statistics (track_running_stats=False) cannot be adapted")
        c = bn.num_features
        self.num_features = c
        self.eps = float(bn.eps)
        self.weight = nn.Parameter(bn.weight.detach().clone() if bn.affine else torch.ones(c, device=bn.running_mean.device))
        self.bias = nn.Parameter(bn.bias.detach().clone() if bn.affine else torch.zeros(c, device=bn.running_mean.device))
        self.register_buffer("src_mean", bn.running_mean.detach().clone())
        self.register_buffer("src_var", bn.running_var.detach().clone())
        self.mode = "source"
        self.lam = 0.8
        self.moment = 1.0
        self.loss_ref: str | None = None
        self.align_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        src_mu = self.src_mean.view(1, c, 1, 1)
        src_var = self.src_var.view(1, c, 1, 1)
        need_stats = self.mode != "source" or self.loss_ref is not None
        if need_stats:  # one pass for both (the loss needs gradients through them)
            cur_var, cur_mu = torch.var_mean(x, (2, 3), unbiased=False, keepdim=True)
        if self.mode == "source":
            mu, var = src_mu, src_var
        elif self.mode == "instance":
            mu, var = cur_mu, cur_var
        elif self.mode == "mix":
            mu = self.lam * src_mu + (1.0 - self.lam) * cur_mu
            var = self.lam * src_var + (1.0 - self.lam) * cur_var
        elif self.mode == "warmup":
            b_var, b_mu = torch.var_mean(x.detach(), (0, 2, 3), keepdim=True)
            mu = self.moment * b_mu + (1.0 - self.moment) * src_mu
            var = self.moment * b_var + (1.0 - self.moment) * src_var
        else:
            raise ConfigError(f"TTABatchNorm.mode must be source, instance, mix or warmup, got {self.mode!r}")
        if self.loss_ref is not None:
            n = x.shape[2] * x.shape[3]
            cur_std = (cur_var * (n / max(n - 1, 1)) + 1e-12).sqrt()  # unbiased std, as the releases use
            if self.loss_ref == "source":
                ref_mu, ref_var = src_mu, src_var
            else:  # the statistics used to normalise (VPTTA's warm-up reference)
                ref_mu, ref_var = mu.detach(), var.detach()
            self.align_loss = (ref_mu - cur_mu).abs().mean() + (ref_var.clamp_min(0).sqrt() - cur_std).abs().mean()
        else:
            self.align_loss = None
        out = (x - mu) / torch.sqrt(var + self.eps)
        return out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


def convert_bn(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of `net` (in place) by a `TTABatchNorm` carrying its statistics and affine."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(net, name, TTABatchNorm(child))
        else:
            convert_bn(child)
    return net


def tta_bn_layers(net: nn.Module) -> list[TTABatchNorm]:
    return [m for m in net.modules() if isinstance(m, TTABatchNorm)]


def set_bn(net: nn.Module, mode: str | None = None, loss_ref: str | None | bool = False, **attrs: float) -> None:
    """Set the mode (and `loss_ref`, `lam`, `moment` when given) of every `TTABatchNorm` in `net`.

    `loss_ref=False` leaves it unchanged; None turns the alignment loss off.
    """
    for m in tta_bn_layers(net):
        if mode is not None:
            m.mode = mode
        if loss_ref is not False:
            m.loss_ref = loss_ref
        for k, v in attrs.items():
            setattr(m, k, v)


def bn_alignment_loss(net: nn.Module) -> torch.Tensor:
    """Mean of the `align_loss` of every `TTABatchNorm` after a forward pass with `loss_ref` set."""
    losses = [m.align_loss for m in tta_bn_layers(net) if m.align_loss is not None]
    if not losses:
        raise ToolError("no batch-norm alignment loss was recorded (set loss_ref before the forward pass)")
    return torch.stack(losses).mean()
