"""Coarse masks made from ground truth: the training (and bench) inputs of the refiner.

Each perturbation imitates a failure of a real segmenter:
    erode / dilate      a threshold set too high / too low (uniform under- or over-segmentation)
    elastic             smooth wrong boundary placement (a warp with a smooth random displacement field)
    cut                 a bite missing from the object (an ellipse removed at the boundary)
    merge               a blob stuck to the object (an ellipse added at the boundary, e.g. a neighbour)
    boundary_noise      a ragged boundary (random flips in a thin band, smoothed)
    lowres              a blocky mask from a network that works at low resolution (down- then up-sampling)
`perturb_mask` applies 1-3 of them at random. Everything is numpy (H, W) in pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse

from medagent.tools.refiner.representation import contour_map

PERTURBATIONS = ("erode", "dilate", "elastic", "cut", "merge", "boundary_noise", "lowres")


def _disk(radius: int) -> np.ndarray:
    r = int(radius)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (yy * yy + xx * xx) <= r * r + 0.5


def erode(mask: np.ndarray, rng: np.random.Generator, max_radius: int = 3) -> np.ndarray:
    return ndimage.binary_erosion(mask, _disk(rng.integers(1, max_radius + 1)))


def dilate(mask: np.ndarray, rng: np.random.Generator, max_radius: int = 3) -> np.ndarray:
    return ndimage.binary_dilation(mask, _disk(rng.integers(1, max_radius + 1)))


def elastic(mask: np.ndarray, rng: np.random.Generator, max_shift: float = 4.0, smoothness: float = 8.0) -> np.ndarray:
    """Warp with a Gaussian-smoothed random displacement field of peak size about `max_shift` px."""
    h, w = mask.shape
    fields = []
    for _ in range(2):
        field = ndimage.gaussian_filter(rng.standard_normal((h, w)), smoothness)
        field /= np.abs(field).max() + 1e-8
        fields.append(field * rng.uniform(1.0, max_shift))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    warped = ndimage.map_coordinates(mask.astype(np.float32), [yy + fields[0], xx + fields[1]], order=1, mode="constant")
    return warped > 0.5


def _boundary_point(mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
    ys, xs = np.nonzero(contour_map(mask))
    if ys.size == 0:
        return None
    i = rng.integers(ys.size)
    return int(ys[i]), int(xs[i])


def _blob(mask: np.ndarray, rng: np.random.Generator, max_radius: float) -> np.ndarray:
    out = np.zeros(mask.shape, dtype=bool)
    point = _boundary_point(mask, rng)
    if point is None:
        return out
    ry, rx = rng.uniform(2.0, max_radius, size=2)
    rr, cc = ellipse(point[0], point[1], ry, rx, shape=mask.shape, rotation=rng.uniform(0, np.pi))
    out[rr, cc] = True
    return out


def _object_scale(mask: np.ndarray) -> float:
    """Equivalent radius of the mean component, px (sizes blobs relative to the objects)."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return 4.0
    return float(np.sqrt(mask.sum() / n / np.pi))


def cut(mask: np.ndarray, rng: np.random.Generator, max_radius: float = 6.0) -> np.ndarray:
    radius = min(max_radius, max(2.5, 0.5 * _object_scale(mask)))
    out = mask & ~_blob(mask, rng, radius)
    return out if out.any() else mask


def merge(mask: np.ndarray, rng: np.random.Generator, max_radius: float = 6.0) -> np.ndarray:
    radius = min(max_radius, max(2.5, 0.5 * _object_scale(mask)))
    return mask | _blob(mask, rng, radius)


def boundary_noise(mask: np.ndarray, rng: np.random.Generator, width: int = 2) -> np.ndarray:
    """Flip random pixels near the boundary, then smooth a little so the result is ragged, not salty."""
    near = ndimage.binary_dilation(contour_map(mask).astype(bool), iterations=width)
    flips = near & (rng.random(mask.shape) < rng.uniform(0.2, 0.5))
    noisy = (mask ^ flips).astype(np.float32)
    return ndimage.uniform_filter(noisy, 3) > 0.5


def lowres(mask: np.ndarray, rng: np.random.Generator, factors: tuple[int, ...] = (2, 3, 4)) -> np.ndarray:
    """Average-pool by a factor of 2-4 and upsample with nearest neighbours (a blocky coarse mask)."""
    f = int(rng.choice(factors))
    h, w = mask.shape
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.zeros((hp, wp), dtype=np.float32)
    padded[:h, :w] = mask
    small = padded.reshape(hp // f, f, wp // f, f).mean(axis=(1, 3)) > 0.5
    return np.repeat(np.repeat(small, f, 0), f, 1)[:h, :w]


_FUNCS = {"erode": erode, "dilate": dilate, "elastic": elastic, "cut": cut, "merge": merge,
          "boundary_noise": boundary_noise, "lowres": lowres}


def perturb_mask(mask: np.ndarray, rng: np.random.Generator, kinds: tuple[str, ...] = PERTURBATIONS,
                 max_ops: int = 3, strength: float = 1.0) -> np.ndarray:
    """A coarse version of a binary `mask`: 1..`max_ops` random perturbations from `kinds`, in random order.

    Args:
        mask: (H, W) binary ground truth with at least one foreground pixel.
        rng: numpy Generator (seeded by the caller for reproducibility).
        kinds: names from `PERTURBATIONS`.
        max_ops: at most this many perturbations are composed.
        strength: scales radii and shifts (1.0 = errors of a few px, the scale the refiner's band covers).
    Returns:
        (H, W) uint8 coarse mask. Never empty when `mask` is not: a perturbation that would wipe
        the object out is skipped.
    """
    unknown = set(kinds) - set(_FUNCS)
    if unknown:
        raise ValueError(f"unknown perturbation(s) {sorted(unknown)}; choose from {PERTURBATIONS}")
    out = np.asarray(mask).astype(bool)
    n_ops = int(rng.integers(1, max_ops + 1))
    for name in rng.choice(list(kinds), size=n_ops, replace=True):
        kwargs: dict = {}
        if name in ("erode", "dilate"):
            kwargs["max_radius"] = max(1, int(round(3 * strength)))
        elif name == "elastic":
            kwargs["max_shift"] = max(1.0, 4.0 * strength)
        elif name in ("cut", "merge"):
            kwargs["max_radius"] = max(2.5, 6.0 * strength)
        new = _FUNCS[name](out, rng, **kwargs)
        if new.any():
            out = new
    return out.astype(np.uint8)
