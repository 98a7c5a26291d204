"""Segmentation metrics: Dice, IoU, HD95, NSD, ASSD and boundary F1; binary and per class; 2D and 3D.

Every function takes numpy arrays on one grid (any non-zero value is foreground for the binary
functions) and an optional `spacing` in mm per axis, in the array's axis order ((z, y, x) for medagent
cases; None = 1 mm per axis). Distances are in mm; `boundary_f1` works in pixels on purpose.

Definitions (they follow MONAI's `compute_*` functions with `use_subvoxels=False`, and the tests check
this against MONAI itself):
- Boundary ("edge") of a mask: its voxels with at least one face neighbour (4-neighbourhood in 2D,
  6 in 3D) outside the mask, i.e. ``mask & ~binary_erosion(mask)``; outside the image counts as
  background, so an object touching the image border has an edge there.
- Surface distances: from each boundary voxel of one mask to the nearest boundary voxel of the other,
  Euclidean, in mm (voxel centres scaled by `spacing`).
- HD95: the larger of the two directed 95th percentiles (linear interpolation, as `np.percentile` and
  `torch.quantile`). `hausdorff(..., percentile=100)` is the classic Hausdorff distance.
- ASSD: the mean of both directed distance sets pooled together (MONAI's symmetric ASD), not the mean
  of the two directed means.
- NSD (normalised surface Dice at `tolerance_mm`): boundary voxels of either mask within the tolerance
  (``<=``) of the other mask's boundary, divided by all boundary voxels of both. Boundary voxels are
  counted, not weighted by surfel area (the DeepMind `surface-distance` package and MONAI's
  `use_subvoxels=True` weight by area; on coarse or anisotropic grids the two differ slightly).
- Boundary F1 at `tol_px`: precision = share of predicted boundary pixels within `tol_px` (Euclidean,
  in pixels, ignoring spacing) of the true boundary, recall the other way round, F1 their harmonic mean.

Empty masks, handled the same way by every function here and by `per_class` / `binary_metrics`:
- both empty: Dice = IoU = NSD = boundary F1 = 1.0, HD95 = Hausdorff = ASSD = 0.0 (a correct "nothing");
- exactly one empty: Dice = IoU = NSD = boundary F1 = 0.0, and the distances are `empty_distance`,
  which is NaN by default (no surface to measure to). Pass a number (mm) or the string ``"diagonal"``
  (the image diagonal in mm) to get a finite penalty instead. Aggregations must then either skip NaN
  (``np.nanmean``; `medagent.eval` reports how many were skipped) or apply the penalty explicitly.
This differs from MONAI, which returns NaN for Dice/NSD when the ground truth is empty and inf for
distances when one mask is empty.

Speed: boundaries and distance transforms (``scipy.ndimage.distance_transform_edt``) run only on the
bounding box of both masks plus a 1-voxel margin. That crop is exact, not an approximation: every
boundary voxel of both masks lies inside it, and the distance transform finds the nearest boundary
voxel anywhere in the array.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from medagent.errors import ConfigError, DataError

__all__ = [
    "METRICS",
    "dice",
    "iou",
    "hausdorff",
    "hd95",
    "nsd",
    "assd",
    "boundary_f1",
    "surface_distances",
    "binary_metrics",
    "per_class",
]

#: Metric names `binary_metrics` and `per_class` know.
METRICS = ("dice", "iou", "hd95", "nsd", "assd", "hd", "boundary_f1")
#: Metrics that are distances (mm); the rest are overlaps in [0, 1].
DISTANCE_METRICS = ("hd95", "hd", "assd")

EmptyDistance = float | str


# -- input checks ----------------------------------------------------------------------------------
def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise DataError(f"pred shape {pred.shape} differs from gt shape {gt.shape}: masks must share one grid")
    if pred.ndim < 1:
        raise DataError("pred and gt must be arrays with at least one axis, got scalars")
    return pred != 0, gt != 0


def _spacing(spacing: float | Sequence[float] | None, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    sp = np.atleast_1d(np.asarray(spacing, dtype=np.float64))
    if sp.size == 1:
        sp = np.repeat(sp, ndim)
    if sp.size != ndim:
        raise ConfigError(f"spacing {tuple(sp)} has {sp.size} values for {ndim}D masks")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ConfigError(f"spacing {tuple(sp)} must be positive and finite (mm per axis)")
    return sp


def _empty_distance(value: EmptyDistance, shape: tuple[int, ...], spacing: np.ndarray) -> float:
    if isinstance(value, str):
        if value != "diagonal":
            raise ConfigError(f"empty_distance must be a number or 'diagonal', got {value!r}")
        return float(np.linalg.norm(np.asarray(shape, dtype=np.float64) * spacing))
    return float(value)


# -- overlaps ----------------------------------------------------------------------------------------
def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice = 2|P & G| / (|P| + |G|) of two binary masks (any shape); 1.0 when both are empty."""
    p, g = _masks(pred, gt)
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(g))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(p & g)) / total


def iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU (Jaccard) = |P & G| / |P | G| of two binary masks; 1.0 when both are empty."""
    p, g = _masks(pred, gt)
    union = int(np.count_nonzero(p | g))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(p & g)) / union


# -- boundaries and distances ----------------------------------------------------------------------------
def _crop_box(p: np.ndarray, g: np.ndarray, margin: int = 1) -> tuple[slice, ...]:
    """Bounding box of p | g grown by `margin` voxels, clipped to the array."""
    union = p | g
    box = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hit = np.flatnonzero(union.any(axis=other)) if other else np.flatnonzero(union)
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, union.shape[axis])))
    return tuple(box)


def _edges(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with a face neighbour outside it (outside the array = background)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def _distances_to(edges_to: np.ndarray, edges_from: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    """Distance (in `sampling` units) from each voxel of `edges_from` to the nearest voxel of `edges_to`."""
    field = ndimage.distance_transform_edt(~edges_to, sampling=sampling)
    return field[edges_from]


def surface_distances(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Directed boundary distances in mm: (pred boundary -> gt boundary, gt boundary -> pred boundary).

    Both masks must be non-empty (see the module docstring for empty masks); raises DataError otherwise.
    Returns two float64 1-D arrays, one value per boundary voxel of pred and of gt respectively.
    """
    p, g = _masks(pred, gt)
    sp = _spacing(spacing, p.ndim)
    if not p.any() or not g.any():
        raise DataError("surface_distances needs two non-empty masks; use hd95/assd/nsd for empty-mask rules")
    box = _crop_box(p, g)
    ep, eg = _edges(p[box]), _edges(g[box])
    return _distances_to(eg, ep, sp), _distances_to(ep, eg, sp)


def hausdorff(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    percentile: float = 100.0,
    empty_distance: EmptyDistance = math.nan,
) -> float:
    """Symmetric Hausdorff distance in mm at `percentile` (100 = classic maximum, 95 = HD95)."""
    if not 0 <= percentile <= 100:
        raise ConfigError(f"percentile must be in [0, 100], got {percentile}")
    return binary_metrics(pred, gt, spacing, metrics=("hd",), hd_percentile=percentile, empty_distance=empty_distance)["hd"]


def hd95(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None, empty_distance: EmptyDistance = math.nan
) -> float:
    """95th-percentile symmetric Hausdorff distance in mm; 0.0 if both empty, `empty_distance` if one is."""
    return binary_metrics(pred, gt, spacing, metrics=("hd95",), empty_distance=empty_distance)["hd95"]


def assd(
    pred: np.ndarray, gt: np.ndarray, spacing: float | Sequence[float] | None = None, empty_distance: EmptyDistance = math.nan
) -> float:
    """Average symmetric surface distance in mm (both directions pooled); 0.0 / `empty_distance` for empties."""
    return binary_metrics(pred, gt, spacing, metrics=("assd",), empty_distance=empty_distance)["assd"]


def nsd(pred: np.ndarray, gt: np.ndarray, tolerance_mm: float = 1.0, spacing: float | Sequence[float] | None = None) -> float:
    """Normalised surface Dice at `tolerance_mm`, in [0, 1]; 1.0 if both empty, 0.0 if one is."""
    return binary_metrics(pred, gt, spacing, metrics=("nsd",), tolerance_mm=tolerance_mm)["nsd"]


def boundary_f1(pred: np.ndarray, gt: np.ndarray, tol_px: float = 2.0) -> float:
    """Boundary F-score at a tolerance of `tol_px` pixels (spacing ignored); 1.0 if both empty, 0.0 if one is."""
    return binary_metrics(pred, gt, None, metrics=("boundary_f1",), boundary_tol_px=tol_px)["boundary_f1"]


# -- all at once -------------------------------------------------------------------------------------------
def binary_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing: float | Sequence[float] | None = None,
    metrics: Iterable[str] = ("dice", "iou", "hd95", "nsd", "assd"),
    tolerance_mm: float = 1.0,
    empty_distance: EmptyDistance = math.nan,
    boundary_tol_px: float = 2.0,
    hd_percentile: float = 100.0,
) -> dict[str, float]:
    """Several metrics of one binary pair, sharing one boundary extraction and distance transform.

    Args:
        pred, gt: masks on one grid, (H, W) or (D, H, W) (any non-zero value is foreground).
        spacing: mm per axis in the arrays' axis order; None = 1 mm.
        metrics: names from `METRICS` ("hd" is the Hausdorff distance at `hd_percentile`).
        tolerance_mm: NSD tolerance in mm.
        empty_distance: distance reported when exactly one mask is empty (NaN, a number in mm, or "diagonal").
        boundary_tol_px: boundary F1 tolerance in pixels.
    Returns:
        {name: value} in the order asked.
    """
    names = tuple(metrics)
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; known: {METRICS}")
    if tolerance_mm < 0 or boundary_tol_px < 0:
        raise ConfigError(f"tolerances must be >= 0, got tolerance_mm={tolerance_mm}, boundary_tol_px={boundary_tol_px}")
    p, g = _masks(pred, gt)
    sp = _spacing(spacing, p.ndim)
    out: dict[str, float] = {}
    if "dice" in names:
        out["dice"] = dice(p, g)
    if "iou" in names:
        out["iou"] = iou(p, g)
    surface = [m for m in names if m not in ("dice", "iou")]
    if surface:
        p_any, g_any = bool(p.any()), bool(g.any())
        if not p_any and not g_any:
            out.update({m: (0.0 if m in DISTANCE_METRICS else 1.0) for m in surface})
        elif not p_any or not g_any:
            far = _empty_distance(empty_distance, p.shape, sp)
            out.update({m: (far if m in DISTANCE_METRICS else 0.0) for m in surface})
        else:
            box = _crop_box(p, g)
            ep, eg = _edges(p[box]), _edges(g[box])
            if any(m in names for m in ("hd95", "hd", "assd", "nsd")):
                d_pg, d_gp = _distances_to(eg, ep, sp), _distances_to(ep, eg, sp)
                if "hd95" in names:
                    out["hd95"] = float(max(np.percentile(d_pg, 95), np.percentile(d_gp, 95)))
                if "hd" in names:
                    out["hd"] = float(max(np.percentile(d_pg, hd_percentile), np.percentile(d_gp, hd_percentile)))
                if "assd" in names:
                    out["assd"] = float((d_pg.sum() + d_gp.sum()) / (d_pg.size + d_gp.size))
                if "nsd" in names:
                    hit = int(np.count_nonzero(d_pg <= tolerance_mm)) + int(np.count_nonzero(d_gp <= tolerance_mm))
                    out["nsd"] = hit / (d_pg.size + d_gp.size)
            if "boundary_f1" in names:
                unit = np.ones(p.ndim)
                b_pg, b_gp = _distances_to(eg, ep, unit), _distances_to(ep, eg, unit)
                precision = float(np.mean(b_pg <= boundary_tol_px))
                recall = float(np.mean(b_gp <= boundary_tol_px))
                total = precision + recall
                out["boundary_f1"] = 0.0 if total == 0 else 2 * precision * recall / total
    return {m: float(out[m]) for m in names}


def per_class(
    pred_map: np.ndarray,
    gt_map: np.ndarray,
    classes: Iterable[int] | None = None,
    metrics: Iterable[str] = ("dice", "iou", "hd95", "nsd", "assd"),
    spacing: float | Sequence[float] | None = None,
    tolerance_mm: float = 1.0,
    empty_distance: EmptyDistance = math.nan,
    boundary_tol_px: float = 2.0,
) -> dict[int, dict[str, float]]:
    """Metrics of each class of two integer class maps on one grid.

    Args:
        pred_map, gt_map: integer class maps (H, W) or (D, H, W), 0 = background.
        classes: class indices to score; default every non-zero index in either map, sorted.
            A listed class absent from both maps scores as "both empty" (see the module docstring).
        metrics, spacing, tolerance_mm, empty_distance, boundary_tol_px: as in `binary_metrics`.
    Returns:
        {class index: {metric name: value}}.
    """
    pred_map, gt_map = np.asarray(pred_map), np.asarray(gt_map)
    if pred_map.shape != gt_map.shape:
        raise DataError(f"pred_map shape {pred_map.shape} differs from gt_map shape {gt_map.shape}")
    if classes is None:
        classes = sorted(int(c) for c in np.union1d(np.unique(pred_map), np.unique(gt_map)) if c != 0)
    names = tuple(metrics)
    return {
        int(c): binary_metrics(
            pred_map == c, gt_map == c, spacing, names,
            tolerance_mm=tolerance_mm, empty_distance=empty_distance, boundary_tol_px=boundary_tol_px,
        )
        for c in classes
    }
