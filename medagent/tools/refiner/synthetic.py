"""Procedural images with exact masks: smooth blobs on textured, shaded, noisy backgrounds.

Used for tests and as a small share of the refiner's training mix ("what you generate" is allowed
training data). Each image has 1-4 blobs whose intensity differs from the background by a random
contrast, so the only way to place the boundary exactly is to look at the image.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medagent.data.case import Case


def blob_mask(shape: tuple[int, int], rng: np.random.Generator, n_blobs: int | None = None) -> np.ndarray:
    """(H, W) bool: 1-4 star-shaped smooth blobs (random radii, 3-5 harmonics)."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    n = int(rng.integers(1, 5)) if n_blobs is None else n_blobs
    for _ in range(n):
        r0 = rng.uniform(0.08, 0.22) * min(h, w)
        cy, cx = rng.uniform(r0 + 2, h - r0 - 2), rng.uniform(r0 + 2, w - r0 - 2)
        theta = np.arctan2(yy - cy, xx - cx)
        radius = np.full_like(theta, r0)
        for k in range(2, 6):
            radius += r0 * rng.uniform(0.0, 0.25 / k * 2) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        mask |= np.hypot(yy - cy, xx - cx) <= radius
    return mask


def blob_image(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W) float32 image of `mask`: texture, shading, a blurred edge of random contrast, noise."""
    h, w = mask.shape
    texture = ndimage.gaussian_filter(rng.standard_normal((h, w)), rng.uniform(1.0, 4.0))
    texture /= texture.std() + 1e-8
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    shading = rng.uniform(-0.3, 0.3) * yy + rng.uniform(-0.3, 0.3) * xx
    contrast = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
    edge = ndimage.gaussian_filter(mask.astype(np.float64), rng.uniform(0.5, 1.5))
    image = contrast * edge + 0.15 * texture + shading + rng.normal(0.0, rng.uniform(0.03, 0.15), (h, w))
    return image.astype(np.float32)


def synthetic_case(shape: tuple[int, int] = (96, 96), seed: int = 0, n_blobs: int | None = None) -> Case:
    """One 2D `Case` with a blob image and its exact binary label (class 1 = "blob")."""
    rng = np.random.default_rng(seed)
    mask = blob_mask(shape, rng, n_blobs)
    image = blob_image(mask, rng)
    return Case(image=image[None], label=mask.astype(np.uint8), spacing=(1.0, 1.0), modality="unknown",
                class_names={0: "background", 1: "blob"}, id=f"synthetic-{seed:05d}",
                provenance={"dataset": "synthetic-blobs", "seed": seed})
