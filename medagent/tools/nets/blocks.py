"""Small pieces shared by the U-shaped networks: size padding and conv blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "replicate") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad a (N, C, H, W) tensor on the bottom/right so H and W are multiples of `multiple`.

    Returns the padded tensor and the original (H, W), for `crop_to`.
    """
    h, w = x.shape[-2:]
    ph = (-h) % multiple
    pw = (-w) % multiple
    if ph or pw:
        # replicate padding needs the padded amount < size for reflect; replicate has no such limit
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`: keep the top-left (H, W)."""
    return x[..., : size[0], : size[1]]


class ConvBlock(nn.Sequential):
    """Two (3x3 conv -> batch norm -> ReLU) layers: (N, in, H, W) -> (N, out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


def channel_widths(width: int, depth: int, max_width: int | None = None) -> list[int]:
    """Channels per resolution level: width, 2*width, ... (depth + 1 levels, capped at `max_width`)."""
    widths = [width * 2**i for i in range(depth + 1)]
    if max_width is not None:
        widths = [min(w, max_width) for w in widths]
    return widths
