"""The 0-999 coordinate frame of text actions, converted to and from pixels by one function.

Text actions (and MedSAM-Agent's released policy) write integer coordinates in a 0-999 frame relative to
the image, whatever its size; the library works in pixels of the original image (x = column, y = row):

    px = round(x * (W - 1) / 999),  py = round(y * (H - 1) / 999)       (frame -> pixels)
    x  = round(px * 999 / (W - 1)), y  = round(py * 999 / (H - 1))      (pixels -> frame)

`round` is round-half-up, so both directions are deterministic; boxes are inclusive in both frames and there
is no letterbox (the frame stretches with the image's aspect ratio).
"""

from __future__ import annotations

from typing import Sequence

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
