"""What the policy sees: the resized image with the current mask overlaid, prompts drawn, and clean text.

The image is shown at the policy's size (square, no letterbox, as MedSAM-Agent's 512x512 input); tools
always get the original resolution. Overlay: pixel = (1 - alpha) * image + alpha * colour inside the mask.
"""

from __future__ import annotations

import string

import numpy as np
from PIL import Image

#: Characters allowed in Text observations (Python's printable set: letters, digits, punctuation, whitespace).
CHARSET = string.printable
_ALLOWED = frozenset(CHARSET)
OVERLAY_COLOUR = (0, 255, 0)
BOX_COLOUR = (255, 255, 0)
POSITIVE_COLOUR = (0, 128, 255)
NEGATIVE_COLOUR = (255, 0, 0)


def sanitize_text(text: object, max_length: int, keep: str = "head") -> str:
    """Printable-only text of at most `max_length` characters.

    Characters outside `CHARSET` become "?". Longer text is cut to its first (`keep="head"`) or last
    (`keep="tail"`) characters with "..." marking the cut.
    """
    text = "".join(c if c in _ALLOWED else "?" for c in str(text))
    if len(text) <= max_length:
        return text
    if max_length <= 3:
        return text[:max_length] if keep == "head" else text[len(text) - max_length:]
    if keep == "tail":
        return "..." + text[len(text) - (max_length - 3):]
    return text[: max_length - 3] + "..."


def resize_rgb(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (size, size, 3), bilinear."""
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool (H, W) -> bool (size, size), nearest neighbour."""
    if mask.shape == (size, size):
        return mask.astype(bool)
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size, size), Image.NEAREST)) > 127


def overlay(image: np.ndarray, mask: np.ndarray | None, alpha: float = 0.5, colour: tuple[int, int, int] = OVERLAY_COLOUR) -> np.ndarray:
    """Blend `colour` into uint8 (H, W, 3) `image` where bool `mask` is set; returns a new uint8 array."""
    out = image.copy()
    if mask is None or not mask.any():
        return out
    blend = (1.0 - alpha) * image[mask].astype(np.float32) + alpha * np.asarray(colour, np.float32)
    out[mask] = np.clip(blend + 0.5, 0, 255).astype(np.uint8)
    return out


def draw_prompts(image: np.ndarray, box: list[int] | None, points: list[list[int]], labels: list[int],
                 scale: tuple[float, float]) -> np.ndarray:
    """Draw the box (yellow outline) and clicks (blue positive, red negative discs) on a copy of `image`.

    Args:
        image: uint8 (h, w, 3) at the display size.
        box / points: prompts in original-image pixels; `scale` = (w / W, h / H) maps them to the display.
    """
    from skimage.draw import disk, rectangle_perimeter

    out = image.copy()
    h, w = out.shape[:2]
    sx, sy = scale
    if box is not None:
        x0, y0, x1, y1 = box
        rr, cc = rectangle_perimeter((int(y0 * sy), int(x0 * sx)), end=(int(y1 * sy), int(x1 * sx)), shape=(h, w), clip=True)
        out[rr, cc] = BOX_COLOUR
    radius = max(2, min(h, w) // 100)
    for (x, y), label in zip(points, labels):
        rr, cc = disk((y * sy, x * sx), radius, shape=(h, w))
        out[rr, cc] = POSITIVE_COLOUR if label else NEGATIVE_COLOUR
    return out
