"""The denoiser: a small UNet-ish CNN with self-attention at the 1/8-resolution bottleneck.

Inputs, stacked as channels of one (B, C_in, H, W) tensor (H, W multiples of 8):
    image      standardised grey image (1 channel)
    coarse     the coarse mask, {0, 1}
    state      the current diffusion state x_t, {0, 1}       (diffusion variant only)
    gamma      gamma_t broadcast over the image, in [0, 1]    (diffusion variant only)
Output: (B, 1, H, W) logits of the clean mask x_0.

The one-shot baseline is the same class with `diffusion=False`: it sees only image + coarse mask and
predicts the refined mask in one pass.

Attention: queries are all bottleneck positions; keys/values are average-pooled to at most
`max_kv_side`^2 positions so memory stays bounded on large images. A depthwise 3x3 convolution before
each attention block gives the tokens their position (no fixed-size positional table, so any image
size works).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class RefinerNetConfig:
    """Shape of the denoiser.

    Attributes:
        widths: channels at full, 1/2, 1/4 and 1/8 resolution.
        attention_blocks: self-attention blocks at the 1/8 bottleneck.
        heads: attention heads (must divide widths[-1]).
        max_kv_side: keys/values are pooled to at most this many positions per side.
        diffusion: True for the diffusion denoiser (4 input channels), False for the one-shot baseline (2).
    """

    widths: tuple[int, int, int, int] = (16, 24, 40, 64)
    attention_blocks: int = 2
    heads: int = 4
    max_kv_side: int = 24
    diffusion: bool = True

    @property
    def in_channels(self) -> int:
        return 4 if self.diffusion else 2

    def to_dict(self) -> dict:
        out = asdict(self)
        out["widths"] = list(self.widths)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "RefinerNetConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "widths" in known:
            known["widths"] = tuple(int(w) for w in known["widths"])
        return cls(**known)


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.GroupNorm(_groups(c_out), c_out), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.GroupNorm(_groups(c_out), c_out), nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class AttentionBlock(nn.Module):
    """Pre-norm multi-head self-attention + MLP over the (H/8 * W/8) bottleneck tokens."""

    def __init__(self, channels: int, heads: int, max_kv_side: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention heads ({heads}) must divide the bottleneck width ({channels})")
        self.heads = heads
        self.max_kv_side = max_kv_side
        self.pos = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.norm1 = nn.GroupNorm(1, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.kv = nn.Conv2d(channels, 2 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        self.norm2 = nn.GroupNorm(1, channels)
        self.mlp = nn.Sequential(nn.Conv2d(channels, 2 * channels, 1), nn.SiLU(), nn.Conv2d(2 * channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos(x)
        b, c, h, w = x.shape
        y = self.norm1(x)
        kv_src = y
        if max(h, w) > self.max_kv_side:
            kv_src = F.adaptive_avg_pool2d(y, (min(h, self.max_kv_side), min(w, self.max_kv_side)))
        d = c // self.heads
        q = self.q(y).view(b, self.heads, d, h * w).transpose(2, 3)                # (B, heads, N, d)
        k, v = self.kv(kv_src).view(b, 2, self.heads, d, -1).transpose(3, 4).unbind(1)
        attn = F.scaled_dot_product_attention(q, k, v)                             # (B, heads, N, d)
        attn = attn.transpose(2, 3).reshape(b, c, h, w)
        x = x + self.proj(attn)
        return x + self.mlp(self.norm2(x))


class RefinerNet(nn.Module):
    """UNet with 3 down/up levels and self-attention at the bottleneck; see the module docstring."""

    def __init__(self, config: RefinerNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or RefinerNetConfig()
        w0, w1, w2, w3 = self.config.widths
        self.enc0 = ConvBlock(self.config.in_channels, w0)
        self.enc1 = ConvBlock(w0, w1)
        self.enc2 = ConvBlock(w1, w2)
        self.enc3 = ConvBlock(w2, w3)
        self.attn = nn.Sequential(*[AttentionBlock(w3, self.config.heads, self.config.max_kv_side)
                                    for _ in range(self.config.attention_blocks)])
        self.dec2 = ConvBlock(w3 + w2, w2)
        self.dec1 = ConvBlock(w2 + w1, w1)
        self.dec0 = ConvBlock(w1 + w0, w0)
        self.head = nn.Conv2d(w0, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) with H, W multiples of 8 -> (B, 1, H, W) x0 logits."""
        if x.shape[-1] % 8 or x.shape[-2] % 8:
            raise ValueError(f"RefinerNet needs H and W divisible by 8, got {tuple(x.shape[-2:])}")
        e0 = self.enc0(x)
        e1 = self.enc1(F.max_pool2d(e0, 2))
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.attn(self.enc3(F.max_pool2d(e2, 2)))
        d2 = self.dec2(torch.cat([F.interpolate(b, scale_factor=2.0, mode="nearest"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1))
        d0 = self.dec0(torch.cat([F.interpolate(d1, scale_factor=2.0, mode="nearest"), e0], 1))
        # The coarse mask is a strong prior: predict a residual on top of its logit so that an
        # untrained or unsure network defaults to "keep the coarse mask".
        coarse = x[:, 1:2]
        return self.head(d0) + 4.0 * (2.0 * coarse - 1.0)

    def make_input(self, image: torch.Tensor, coarse: torch.Tensor, state: torch.Tensor | None = None,
                   gamma: torch.Tensor | None = None) -> torch.Tensor:
        """Stack the inputs in the order the network expects; image/coarse/state (B,1,H,W), gamma (B,)."""
        parts = [image, coarse]
        if self.config.diffusion:
            if state is None or gamma is None:
                raise ValueError("the diffusion denoiser needs the state x_t and gamma_t")
            parts += [state, gamma.view(-1, 1, 1, 1).to(image.dtype).expand_as(image)]
        return torch.cat(parts, 1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
