"""ALL U-KAN: a U-shaped network in which every linear and conv layer is a KA layer.

Encoder/decoder blocks are (KAonv 3x3 -> batch norm) x 2; down-sampling is max pooling, up-sampling is
bilinear interpolation followed by concatenation with the skip; the head is a 1x1 KAonv (a KA linear
layer per pixel). No ordinary conv or linear layer is left. With `layer="stacked"` every KA layer is the
per-edge-spline reference (`StackedKANLinear`) at identical widths, for the cost comparison.
Batch norm keeps the inputs of each KA layer near the spline grid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medagent.tools.nets.blocks import channel_widths, crop_to, pad_to_multiple
from medagent.tools.nets.kan import DEFAULT_FORM, KAonv2d


class KABlock(nn.Module):
    """(N, in, H, W) -> (N, out, H, W): two KAonv 3x3 layers, each followed by batch norm."""

    def __init__(self, in_channels: int, out_channels: int, **ka: object) -> None:
        super().__init__()
        self.conv1 = KAonv2d(in_channels, out_channels, 3, **ka)  # type: ignore[arg-type]
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = KAonv2d(out_channels, out_channels, 3, **ka)  # type: ignore[arg-type]
        self.norm2 = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.norm1(self.conv1(x))))


class ALLUKAN(nn.Module):
    """(N, in_channels, H, W) -> logits (N, num_classes, H, W) for any H, W (padded to 2**depth, cropped back).

    Args:
        in_channels, num_classes, width, depth: as for `UNet`.
        layer: "sakan" (SaKAN layers) or "stacked" (per-edge-spline reference).
        form: SaKAN form ("shared", "per_output", "sprecher"); ignored for "stacked".
        grad_free: Grad-Free Spline in the SaKAN layers.
        grid_size, spline_order: B-spline grid of every KA layer.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 8, depth: int = 3,
                 layer: str = "sakan", form: str = DEFAULT_FORM, grad_free: bool = True, grid_size: int = 5,
                 spline_order: int = 3) -> None:
        super().__init__()
        ka = dict(layer=layer, form=form, grad_free=grad_free, grid_size=grid_size, order=spline_order)
        self.depth = depth
        widths = channel_widths(width, depth)
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down.append(KABlock(prev, w, **ka))
            prev = w
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.dec.append(KABlock(prev + w, w, **ka))
            prev = w
        self.head = KAonv2d(prev, num_classes, 1, **ka)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 2**self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = F.max_pool2d(x, 2)
        for dec, skip in zip(self.dec, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = dec(torch.cat([x, skip], dim=1))
        return crop_to(self.head(x), size)
