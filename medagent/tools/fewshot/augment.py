"""Augmented views of a reference, for choosing the point density when only one shot is given.

A view is the reference under a random similarity transform (horizontal flip with p = 0.5, rotation,
isotropic scale, translation) applied to image (linear) and mask (nearest), then a photometric change
(gamma and additive Gaussian noise on the image's own min-max range, mapped back to its units): a
small stand-in for the geometric and acquisition differences between a reference and a target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medagent.data.case import Case


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random view.

    Attributes:
        rotate_deg: rotation drawn in [-rotate_deg, rotate_deg] degrees.
        scale: (lo, hi) isotropic zoom.
        translate: shift drawn in [-translate, translate] x image size, per axis.
        log_gamma: gamma = exp(N(0, log_gamma)).
        noise: Gaussian noise std as a fraction of the image's range.
        flip: probability of a horizontal flip.
    """

    rotate_deg: float = 15.0
    scale: tuple[float, float] = (0.85, 1.15)
    translate: float = 0.08
    log_gamma: float = 0.25
    noise: float = 0.03
    flip: float = 0.5


def _transform(x: np.ndarray, matrix: np.ndarray, offset: np.ndarray, order: int) -> np.ndarray:
    return ndimage.affine_transform(x, matrix, offset=offset, order=order, mode="nearest" if order else "constant", cval=0)


def augmented_view(case: Case, mask: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None = None,
                   tries: int = 5) -> tuple[Case, np.ndarray]:
    """A random view of a 2D (case, binary mask); the mask keeps at least a quarter of its area
    (else the draw is repeated, and after `tries` draws a plain horizontal flip is used)."""
    cfg = config or AugmentConfig()
    h, w = case.shape
    area = int(np.count_nonzero(mask))
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    for _ in range(tries):
        ang = np.deg2rad(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg))
        s = rng.uniform(*cfg.scale)
        t = rng.uniform(-cfg.translate, cfg.translate, 2) * np.array([h, w])
        flip = rng.random() < cfg.flip
        # output (y, x) -> input: inverse rotation / zoom about the centre, then the flip
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) / s
        f = np.diag([1.0, -1.0 if flip else 1.0])
        matrix = f @ rot
        offset = centre - matrix @ (centre + t)
        m = _transform((mask > 0).astype(np.float32), matrix, offset, 0) > 0.5
        if np.count_nonzero(m) * 4 >= area and m.any():
            img = np.stack([_transform(c, matrix, offset, 1) for c in case.image])
            break
    else:
        m = (mask > 0)[:, ::-1]
        img = case.image[:, :, ::-1]
    lo, hi = float(img.min()), float(img.max())
    if hi > lo:
        u = (img - lo) / (hi - lo)
        u = np.clip(u, 0, 1) ** np.exp(rng.normal(0, cfg.log_gamma))
        u = u + rng.normal(0, cfg.noise, u.shape)
        img = u * (hi - lo) + lo
    view = case.replace(image=np.ascontiguousarray(img, dtype=np.float32), label=np.ascontiguousarray(m, dtype=np.uint8),
                        id=f"{case.id}_aug", provenance={**case.provenance, "augmented_from": case.id})
    return view, np.ascontiguousarray(m, dtype=np.uint8)
