"""`save_overlay_png`: a mask drawn over its image, the picture `medagent data show` writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medagent.data.case import Case
from medagent.data.intensity import to_display_rgb
from medagent.errors import DataError

#: class colours (RGB), chosen to stay distinct from each other and from grey anatomy.
PALETTE = np.array([
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255),
    (170, 110, 40), (255, 250, 200), (128, 0, 0), (170, 255, 195), (128, 128, 0), (255, 215, 180),
], dtype=np.uint8)


def class_colour(index: int) -> tuple[int, int, int]:
    """Colour of class `index` (>= 1); cycles through `PALETTE`."""
    return tuple(int(v) for v in PALETTE[(index - 1) % len(PALETTE)])  # type: ignore[return-value]


def overlay_rgb(image_rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5, contours: bool = True) -> np.ndarray:
    """Blend a class map (H, W) over a uint8 (H, W, 3) image; class k gets `class_colour(k)`.

    With `contours`, each class's boundary is drawn opaque (about 1/300 of the short side wide, at least
    one pixel) so thin structures stay visible.
    """
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    out = image_rgb.astype(np.float32)
    width = max(1, int(round(min(mask.shape) / 300)))  # outline stays visible on large images
    for k in (int(v) for v in np.unique(mask) if v > 0):
        region = mask == k
        colour = np.array(class_colour(k), dtype=np.float32)
        out[region] = (1 - alpha) * out[region] + alpha * colour
        if contours:
            edge = find_boundaries(region, mode="inner")
            if width > 1:
                edge = binary_dilation(edge, iterations=width - 1) & region
            out[edge] = colour
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def pick_slice(mask: np.ndarray | None, axis: int, depth: int) -> int:
    """Index along `axis` with the most foreground voxels (the middle slice when there is none)."""
    if mask is None or not np.any(mask):
        return depth // 2
    counts = np.count_nonzero(mask, axis=tuple(a for a in range(3) if a != axis))
    return int(np.argmax(counts))


def save_overlay_png(case: Case, mask: np.ndarray | None, path: str | Path, alpha: float = 0.5, contours: bool = True,
                     axis: int | None = None, index: int | None = None, min_size: int = 256) -> Path:
    """Write `mask` over `case`'s image as an RGB PNG.

    Args:
        case: the image (2D or 3D); intensities rendered by `intensity.to_display_rgb` for its modality.
        mask: class map on the case's grid; None uses `case.label` (or draws the image alone).
        path: output .png path (parent folders are created).
        alpha: opacity of the class fill, 0..1.
        contours: draw each class's outline opaque.
        axis / index: for 3D cases, the slice to draw; default: the coarsest axis and the slice with the
            most foreground.
        min_size: upscale (nearest neighbour, integer factor) so the shorter side is at least this many pixels.

    Returns:
        The path written.
    """
    from PIL import Image

    p = Path(path)
    if not 0.0 <= alpha <= 1.0:
        raise DataError(f"alpha must be in [0, 1], got {alpha}")
    mask = case.label if mask is None else np.asarray(mask)
    if mask is not None and tuple(mask.shape) != case.shape:
        raise DataError(f"{p}: mask shape {tuple(mask.shape)} differs from case {case.id!r} grid {case.shape}")
    if case.ndim == 3:
        axis = case.default_slice_axis() if axis is None else axis
        index = pick_slice(mask, axis, case.shape[axis]) if index is None else index
        sl = case.replace(label=None, instances=None).slice(index, axis)
        image2d = sl.image
        mask2d = None if mask is None else np.take(mask, index, axis=axis)
    else:
        image2d, mask2d = case.image, mask
    rgb = to_display_rgb(image2d, case.modality)
    if mask2d is not None:
        rgb = overlay_rgb(rgb, mask2d, alpha, contours)
    factor = max(1, int(np.ceil(min_size / max(1, min(rgb.shape[:2])))))
    if factor > 1:
        rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(p)
    except Exception as exc:
        raise DataError(f"{p}: cannot write PNG: {exc}") from exc
    return p
