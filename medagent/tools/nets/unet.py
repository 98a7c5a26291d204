"""A plain 2D UNet with configurable depth and width (batch norm, max pooling, transposed-conv upsampling)."""

from __future__ import annotations

import torch
from torch import nn

from medagent.tools.nets.blocks import ConvBlock, channel_widths, crop_to, pad_to_multiple


class UNet(nn.Module):
    """UNet: (N, in_channels, H, W) -> logits (N, num_classes, H, W), for any H, W.

    Args:
        in_channels: image channels the network takes.
        num_classes: output channels (classes, background included).
        width: channels at full resolution; level i has width * 2**i.
        depth: number of 2x down-samplings (the input is padded to a multiple of 2**depth and cropped back).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        if depth < 1 or width < 1:
            raise ValueError(f"UNet needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
        self.depth = depth
        widths = channel_widths(width, depth)
        self.down = nn.ModuleList()
        prev = in_channels
        for w in widths:
            self.down.append(ConvBlock(prev, w))
            prev = w
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w in reversed(widths[:-1]):
            self.up.append(nn.ConvTranspose2d(prev, w, 2, stride=2))
            self.dec.append(ConvBlock(2 * w, w))
            prev = w
        self.head = nn.Conv2d(prev, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, size = pad_to_multiple(x, 2**self.depth)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < self.depth:
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return crop_to(self.head(x), size)
