"""The Fourier low-frequency amplitude prompt of VPTTA and MGIPT.

`FourierPrompt` is a learnable multiplier of the low-frequency centre of the image's (fftshifted) Fourier
amplitude; the phase is unchanged and all ones leaves the image unchanged. Images are float32 (1, C, H, W).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from medagent.errors import ConfigError


def centre_slices(h: int, w: int, side: int) -> tuple[slice, slice]:
    """Rows / columns of the side x side block centred on the DC term of an fftshifted (h, w) spectrum."""
    side = max(1, min(side, h, w))
    y0, x0 = h // 2 - side // 2, w // 2 - side // 2
    return slice(y0, y0 + side), slice(x0, x0 + side)


def low_frequency_amplitude(x: torch.Tensor, side: int) -> torch.Tensor:
    """The side x side centre of the fftshifted amplitude of x (N, C, H, W) -> (N, C, side, side)."""
    amp = torch.fft.fftshift(torch.abs(torch.fft.fft2(x, dim=(-2, -1))), dim=(-2, -1))
    ys, xs = centre_slices(x.shape[-2], x.shape[-1], side)
    return amp[..., ys, xs]


def prompt_side(alpha: float, size: int) -> int:
    """Prompt side for an image of side `size`: int(alpha * size), at least 1 (VPTTA / MGIPT rule)."""
    return max(1, int(alpha * size))


class FourierPrompt(nn.Module):
    """Learnable multiplier of the low-frequency amplitude: (N, C, H, W) -> (prompted (N, C, H, W), key).

    The prompt (1, C, side, side), initialised to ones, multiplies the side x side centre of the
    fftshifted amplitude spectrum (centred on the DC term); the phase is kept; the inverse FFT's real
    part is the prompted image. `key` is the unprompted low-frequency amplitude (N, C, side, side).
    Entries where `trainable` is 0 are frozen: they take part in the forward pass but get no gradient
    (MGIPT's growing instance prompt freezes its inner part).
    """

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        self.side = int(side)
        self.prompt = nn.Parameter(torch.ones(1, channels, self.side, self.side))
        self.register_buffer("trainable", torch.ones(1, channels, self.side, self.side))

    def reset(self) -> None:
        with torch.no_grad():
            self.prompt.fill_(1.0)
        self.trainable.fill_(1.0)

    def set(self, values: torch.Tensor) -> None:
        with torch.no_grad():
            self.prompt.copy_(values.reshape(self.prompt.shape))

    def grown(self, side: int) -> "FourierPrompt":
        """A larger prompt (ones) whose inner block holds this prompt's values, frozen (only the border trains)."""
        if side < self.side or (side - self.side) % 2:
            raise ConfigError(f"a prompt grows by an even amount: {self.side} -> {side}")
        new = FourierPrompt(self.prompt.shape[1], side).to(self.prompt.device)
        pad = (side - self.side) // 2
        with torch.no_grad():
            new.prompt[..., pad : pad + self.side, pad : pad + self.side] = self.prompt.detach()
            new.trainable[..., pad : pad + self.side, pad : pad + self.side] = 0.0
        return new

    def effective(self) -> torch.Tensor:
        """The prompt with gradients only through the trainable entries."""
        return self.prompt * self.trainable + self.prompt.detach() * (1.0 - self.trainable)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        spec = torch.fft.fft2(x, dim=(-2, -1))
        amp = torch.fft.fftshift(torch.abs(spec), dim=(-2, -1))
        phase = torch.angle(spec)
        ys, xs = centre_slices(h, w, self.side)
        side_y, side_x = ys.stop - ys.start, xs.stop - xs.start
        p = self.effective()[..., :side_y, :side_x]
        full = F.pad(p, (xs.start, w - xs.stop, ys.start, h - ys.stop), value=1.0)
        new_amp = torch.fft.ifftshift(amp * full, dim=(-2, -1))
        out = torch.fft.ifft2(torch.polar(new_amp, phase), dim=(-2, -1)).real
        return out, amp[..., ys, xs].detach()
