"""The 0-999 coordinate frame of text actions, converted to and from pixels by one function.

Text actions (and MedSAM-Agent's released policy) write integer coordinates in a 0-999 frame relative to
the image, whatever its size; the library works in pixels of the original image (x = column, y = row):

    px = round(x * (W - 1) / 999),  py = round(y * (H - 1) / 999)       (frame -> pixels)
    x  = round(px * 999 / (W - 1)), y  = round(py * 999 / (H - 1))      (pixels -> frame)

`round` is round-half-up, so both directions are deterministic; boxes are inclusive in both frames and there
is no letterbox (the frame stretches with the image's aspect ratio).

Other policies write 0-999 integers with their own pixel rule (MedSAM-Agent's inference script:
px = round(x / 999 * W)); a `CoordFrame` states such a rule, and `CoordFrame.to_ours` / `from_ours` map its
values into this frame and back through pixels, so a call lands on the pixel its policy meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

FRAME_MAX = 999


def convert_coords(values: Sequence[float] | np.ndarray, width: int, height: int, to: str = "pixels") -> np.ndarray:
    """Convert interleaved (x, y, x, y, ...) coordinates between the 0-999 frame and pixels.

    Args:
        values: x, y pairs in order: a point (x, y), a box (x1, y1, x2, y2), or any (N, 2k) array.
        width: W, the image width in pixels (columns).
        height: H, the image height in pixels (rows).
        to: "pixels" (frame -> pixel indices, clipped to the image) or "frame" (pixels -> 0-999, clipped).
    Returns:
        int64 array of the same shape.
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape[-1] % 2:
        raise ValueError(f"coordinates come in x, y pairs; got a last axis of length {arr.shape[-1]}")
    size = np.empty(arr.shape[-1])
    size[0::2], size[1::2] = max(width - 1, 0), max(height - 1, 0)
    if to == "pixels":
        out = np.floor(arr * size / FRAME_MAX + 0.5)
        return np.clip(out, 0, size).astype(np.int64)
    if to == "frame":
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(size > 0, np.floor(arr * FRAME_MAX / np.maximum(size, 1) + 0.5), 0)
        return np.clip(out, 0, FRAME_MAX).astype(np.int64)
    raise ValueError(f"to must be 'pixels' or 'frame', got {to!r}")


def _round(values: np.ndarray, rounding: str) -> np.ndarray:
    if rounding == "half_up":
        return np.floor(values + 0.5)
    if rounding == "half_even":  # Python's round()
        return np.round(values)
    if rounding == "floor":
        return np.floor(values)
    raise ValueError(f"rounding must be 'half_up', 'half_even' or 'floor', got {rounding!r}")


@dataclass(frozen=True)
class CoordFrame:
    """A policy's rule from its integer coordinates to pixels: px = rnd(x * (size - offset) / divisor), clipped
    to the image. medagent's own frame is `CoordFrame()` (`convert_coords`: divisor 999, offset 1, half-up).

    Attributes:
        divisor: the frame value that maps to the image's far edge (999 for a 0-999 frame).
        offset: 1 scales by (size - 1) (the last pixel's index), 0 by size (the image's extent).
        rounding: "half_up", "half_even" (Python's `round`) or "floor" (`int()` of a positive value).
        high: the largest value the policy writes (values are clipped to 0..high when converted into it).
    """

    divisor: int = FRAME_MAX
    offset: int = 1
    rounding: Literal["half_up", "half_even", "floor"] = "half_up"
    high: int = FRAME_MAX

    def _sizes(self, n: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
        span, last = np.empty(n), np.empty(n)
        span[0::2], span[1::2] = max(width - self.offset, 1), max(height - self.offset, 1)
        last[0::2], last[1::2] = max(width - 1, 0), max(height - 1, 0)
        return span, last

    def to_pixels(self, values: Sequence[float] | np.ndarray, width: int, height: int) -> np.ndarray:
        """Interleaved (x, y, ...) values of this frame -> pixel indices of a width x height image (int64)."""
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape[-1] % 2:
            raise ValueError(f"coordinates come in x, y pairs; got a last axis of length {arr.shape[-1]}")
        span, last = self._sizes(arr.shape[-1], width, height)
        return np.clip(_round(arr * span / self.divisor, self.rounding), 0, last).astype(np.int64)

    def from_pixels(self, pixels: Sequence[float] | np.ndarray, width: int, height: int) -> np.ndarray:
        """Pixel indices -> the nearest values of this frame (half-up), clipped to 0..high (int64)."""
        arr = np.asarray(pixels, dtype=np.float64)
        if arr.shape[-1] % 2:
            raise ValueError(f"coordinates come in x, y pairs; got a last axis of length {arr.shape[-1]}")
        span, _ = self._sizes(arr.shape[-1], width, height)
        return np.clip(np.floor(arr * self.divisor / span + 0.5), 0, self.high).astype(np.int64)

    def to_ours(self, values: Sequence[float] | np.ndarray, width: int, height: int) -> np.ndarray:
        """This frame's values -> medagent's 0-999 frame, through the pixels this frame's rule gives."""
        return convert_coords(self.to_pixels(values, width, height), width, height, to="frame")

    def from_ours(self, values: Sequence[float] | np.ndarray, width: int, height: int) -> np.ndarray:
        """medagent's 0-999 values -> this frame, through the pixels `convert_coords` gives."""
        return self.from_pixels(convert_coords(values, width, height, to="pixels"), width, height)


#: medagent's frame as a `CoordFrame` (the rule `convert_coords` implements).
OUR_FRAME = CoordFrame()
