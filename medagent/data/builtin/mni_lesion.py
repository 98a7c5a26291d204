"""Synthetic lesions inserted into MNI T1 slices, with exact masks and one instance id per lesion.

Slices and splits are those of `mni-tissue` (same slabs, same subjects) with a coarser stride. Each slice
gets 1-3 lesions drawn from `numpy.random.default_rng([seed, 3003, slice_number])`:
- location: uniformly one of "periventricular" (CSF deep inside the brain and the white matter next to it),
  "juxtacortical" (grey matter near the brain surface) or "white matter";
- shape: an ellipse of semi-axes 3-14 px whose radius is perturbed by harmonics 2-4 (blob-like),
  clipped to the brain and never touching another lesion;
- appearance: hyper- or hypo-intense (50/50) by 25-80 T1 units relative to the local tissue, with
  smoothed texture noise, blended with a 0.6 px soft edge (partial volume) and clipped to 0-255.
The label (class 1 "lesion") and the instance map are the painted shapes themselves: exact by
construction ("synthetic").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medagent.data.builtin import mni
from medagent.data.builtin.base import record

LESION_CLASSES = {0: "background", 1: "lesion"}
STRIDE = 3
PLACES = ("periventricular", "juxtacortical", "white matter")


def _blob(shape: tuple[int, int], cy: float, cx: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of a harmonically perturbed ellipse centred at (cy, cx) px."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    a, b = rng.uniform(3, 14), rng.uniform(3, 14)
    ang = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(ang) + dy * np.sin(ang)
    v = -dx * np.sin(ang) + dy * np.cos(ang)
    theta = np.arctan2(v / b, u / a)
    rho = np.hypot(u / a, v / b)
    wobble = np.ones_like(theta)
    for k in (2, 3, 4):
        wobble += rng.uniform(0, 0.25) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return rho <= wobble


def _candidates(label: np.ndarray, brain: np.ndarray) -> dict[str, np.ndarray]:
    """(N, 2) pixel coordinates where each kind of lesion may be centred."""
    from scipy import ndimage as ndi

    depth = ndi.distance_transform_edt(brain)
    csf_deep = (label == 1) & (depth > 10)
    near_vent = ndi.binary_dilation(csf_deep, iterations=4) & (label == 3)
    return {
        "periventricular": np.argwhere(csf_deep | near_vent),
        "juxtacortical": np.argwhere((label == 2) & (depth > 2) & (depth < 10)),
        "white matter": np.argwhere((label == 3) & (depth > 6)),
    }


def insert_lesions(image: np.ndarray, tissue: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Insert 1-3 lesions into a 2D T1 slice.

    Args:
        image: (H, W) T1 values 0-255.
        tissue: (H, W) mni-tissue label (0 bg, 1 CSF, 2 GM, 3 WM).
        rng: the slice's generator.
    Returns:
        (image (H, W) float32, instances (H, W) uint16, per-lesion parameters).
    """
    from scipy import ndimage as ndi

    brain = tissue > 0
    inner = ndi.binary_erosion(brain, iterations=1)
    cands = _candidates(tissue, brain)
    out = image.astype(np.float32).copy()
    inst = np.zeros(image.shape, np.uint16)
    params: list[dict[str, Any]] = []
    n_want = int(rng.integers(1, 4))
    for _ in range(40):  # attempts
        if len(params) == n_want:
            break
        place = PLACES[int(rng.integers(len(PLACES)))]
        pts = cands[place] if len(cands[place]) else np.argwhere(inner)
        if len(pts) == 0:
            break
        cy, cx = pts[int(rng.integers(len(pts)))]
        shape = _blob(image.shape, float(cy), float(cx), rng) & inner
        if shape.sum() < 12 or (ndi.binary_dilation(inst > 0, iterations=2) & shape).any():
            continue
        sign = 1.0 if rng.random() < 0.5 else -1.0
        delta = rng.uniform(25, 80)
        local = float(np.median(image[shape]))
        texture = ndi.gaussian_filter(rng.normal(0, 1, image.shape), 1.0)
        texture *= rng.uniform(4, 15) / max(float(texture.std()), 1e-6)
        target = local + sign * delta + texture
        alpha = ndi.gaussian_filter(shape.astype(np.float32), 0.6) * brain
        alpha[shape] = np.maximum(alpha[shape], 0.75)  # the exact mask is clearly changed everywhere
        out = out * (1 - alpha) + target * alpha
        inst[shape] = len(params) + 1
        params.append({"place": place, "centre_yx": [int(cy), int(cx)], "sign": "hyper" if sign > 0 else "hypo",
                       "delta": float(delta), "area_px": int(shape.sum())})
    return np.clip(out, 0, 255).astype(np.float32), inst, params


def build_mni_lesion(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Derive the `mni-lesion` slices for `seed`."""
    vol = mni.load_mni_volume(crop=True)
    brain = vol.image[0] > 0
    arrays: dict[str, np.ndarray] = {}
    records = []
    for k, (axis, slab, i, split) in enumerate(mni.slab_slices(vol.shape, brain, stride=STRIDE)):
        sl = vol.slice(i, axis)
        rng = np.random.default_rng([seed, 3003, k])
        image, inst, params = insert_lesions(sl.image[0], sl.label, rng)
        arrays[f"image_{k}"] = image[None].astype(np.float16)  # 0-255 with fp16 steps <= 0.125
        arrays[f"label_{k}"] = (inst > 0).astype(np.uint8)
        arrays[f"instances_{k}"] = inst
        name = mni.AXIS_NAMES[axis]
        records.append(
            record(
                f"mnilesion_{name}_{i:03d}", f"{name}-{slab}", split, sl.spacing, sl.affine,
                seed=seed, slice_axis=name, slice_index=i, slab=slab, lesions=params,
                volume="mni152-2009-sym (cropped)",
            )
        )
    return arrays, {"cases": records}
