"""The refiner's state space and its post-processing: contour bands, contour maps and polygons.

The refiner's state is a binary mask restricted to a *band*: the pixels within `radius` px of the
coarse mask's contour. Only band pixels are ever flipped, so the state is a sparse representation of
the contour (its inside/outside sign near the coarse contour) and every output contour is the boundary
of a region, hence closed by construction (see docs/refiner.md for why this beats denoising a
1-px contour map directly).

All arrays are numpy, (H, W), pixel units; polygons are (K, 2) float arrays of (x, y) = (column, row).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure

_CROSS = ndimage.generate_binary_structure(2, 1)
_SQUARE = ndimage.generate_binary_structure(2, 2)


def contour_map(mask: np.ndarray) -> np.ndarray:
    """1-px inner boundary of a binary mask: foreground pixels with a 4-neighbour in the background.

    Args:
        mask: (H, W) binary array.
    Returns:
        (H, W) uint8, 1 on the contour. The image border counts as background, so a region touching
        the border still gets a closed contour.
    """
    fg = np.asarray(mask).astype(bool)
    inner = ndimage.binary_erosion(fg, structure=_CROSS, border_value=0)
    return (fg & ~inner).astype(np.uint8)


def contour_band(mask: np.ndarray, radius: float) -> np.ndarray:
    """Pixels within `radius` px (Euclidean) of the boundary between foreground and background.

    Args:
        mask: (H, W) binary array with at least one foreground pixel.
        radius: half-width of the band in pixels (> 0).
    Returns:
        (H, W) bool band. Distances are measured from pixel centres to the nearest pixel of the other
        class, so the band is symmetric around the contour: `radius` px inside and outside.
    """
    fg = np.asarray(mask).astype(bool)
    if not fg.any() or fg.all():
        return np.zeros(fg.shape, dtype=bool)
    dist_in = ndimage.distance_transform_edt(fg)       # inside: distance to the nearest background pixel
    dist_out = ndimage.distance_transform_edt(~fg)     # outside: distance to the nearest foreground pixel
    return (fg & (dist_in <= radius)) | (~fg & (dist_out <= radius))


def clean_mask(mask: np.ndarray, min_area: int = 4, max_hole_area: int = 16) -> np.ndarray:
    """Minimal post-processing: drop specks smaller than `min_area` px, fill holes up to `max_hole_area` px.

    Larger holes are kept on purpose: rings (cortex, a skull, a vessel wall) are real structures.
    Returns an (H, W) uint8 mask in {0, 1}.
    """
    fg = np.asarray(mask).astype(bool)
    if min_area > 1:
        labels, n = ndimage.label(fg, structure=_SQUARE)
        if n:
            areas = np.bincount(labels.ravel())
            keep = areas >= min_area
            keep[0] = False
            fg = keep[labels]
    if max_hole_area > 0:
        holes, n = ndimage.label(~fg, structure=_CROSS)
        if n:
            areas = np.bincount(holes.ravel())
            # Background regions touching the image border are not holes.
            border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
            small = areas <= max_hole_area
            small[0] = False
            small[border] = False
            fg = fg | small[holes]
    return fg.astype(np.uint8)


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Ordered, closed, dense polygons of a binary mask: per component its outer contour, then its holes.

    Contours are traced at the 0.5 iso-line between pixel centres (marching squares), so consecutive
    vertices are at most 1 px apart (dense) and the first vertex is repeated at the end (closed).

    Args:
        mask: (H, W) binary array.
    Returns:
        list of (K, 2) float64 arrays of (x, y) = (column, row) coordinates in pixels.
    """
    fg = np.asarray(mask).astype(bool)
    labels, n = ndimage.label(fg, structure=_SQUARE)
    polygons: list[np.ndarray] = []
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        if region is None:
            continue
        r0, c0 = region[0].start - 1, region[1].start - 1
        comp = np.pad(labels[region] == index, 1)     # pad so contours close around border pixels
        contours = measure.find_contours(comp.astype(np.float32), 0.5, fully_connected="high")
        if not contours:
            continue
        contours = sorted(contours, key=lambda c: -_polygon_area(c))  # outer boundary first
        for rc in contours:
            if len(rc) < 3:
                continue
            if not np.allclose(rc[0], rc[-1]):
                rc = np.vstack([rc, rc[:1]])
            xy = np.stack([rc[:, 1] + c0, rc[:, 0] + r0], axis=1)
            polygons.append(xy)
    return polygons


def _polygon_area(rc: np.ndarray) -> float:
    """Unsigned shoelace area of a (K, 2) polygon."""
    y, x = rc[:, 0], rc[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2.0)
