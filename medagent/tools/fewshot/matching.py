"""Reference-to-target matching on a common grid: similarity map and dense matched points.

Steps (GF-SAM's recipe, on any backbone):
1. Every image's patch features are sampled (bilinear) at the cell centres of a *matching grid* whose
   longest side is `match_size` cells (aspect kept, never finer than the image), and L2-normalised per
   cell; reference masks are area-averaged onto the same grid.
2. Reference foreground cells: mask fraction >= `fg_threshold` (a small target with no such cell uses
   every cell it touches); background cells: fraction 0.
3. Per target cell: max and mean cosine similarity to the pooled foreground cells of all references,
   both clamped at 0, multiplied, min-max normalised to [0, 1]; cells whose best background similarity
   beats their best foreground similarity are set to 0.
4. Dense matched points: the top-k cells with k = min(ceil(sum of the map), `max_points`), as pixel
   coordinates (x = column, y = row) of the cell centres, with their scores and connected regions
   (8-connected after a one-cell dilation, so neighbouring matches form one region).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medagent.tools.fewshot.backbones import FeatureMap


def match_grid(shape: tuple[int, int], match_size: int) -> tuple[int, int]:
    """(mh, mw): the matching grid of an (H, W) image, longest side `match_size` (at most the image's)."""
    h, w = shape
    scale = min(1.0, match_size / max(h, w))
    return max(1, int(round(h * scale))), max(1, int(round(w * scale)))


def sample_features(fmap: FeatureMap, grid: tuple[int, int]) -> torch.Tensor:
    """Features at the centres of a (mh, mw) grid over the image: (C, mh * mw), unit norm per cell."""
    mh, mw = grid
    fy, fx = fmap.extent
    ys = (torch.arange(mh, dtype=torch.float32) + 0.5) / mh * fy  # fraction of the feature map's height
    xs = (torch.arange(mw, dtype=torch.float32) + 0.5) / mw * fx
    gy, gx = torch.meshgrid(ys * 2 - 1, xs * 2 - 1, indexing="ij")
    pos = torch.stack([gx, gy], dim=-1)[None]  # (1, mh, mw, 2), grid_sample wants (x, y)
    feats = F.grid_sample(fmap.features[None].float(), pos, mode="bilinear", align_corners=False)[0]
    return F.normalize(feats.reshape(feats.shape[0], -1), dim=0)


def mask_fraction(mask: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Fraction of foreground per matching-grid cell: float32 (mh, mw) in [0, 1]."""
    t = torch.as_tensor((np.asarray(mask) > 0).astype(np.float32))[None, None]
    return F.adaptive_avg_pool2d(t, grid)[0, 0].numpy()


def reference_cells(fraction: np.ndarray, fg_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Boolean foreground and background cell masks (flattened) of one reference on the grid."""
    frac = fraction.reshape(-1)
    fg = frac >= fg_threshold
    if not fg.any():  # a target smaller than one cell: every cell it touches
        fg = frac > 0
    return fg, frac == 0


@dataclass
class Match:
    """Matching of one target against references.

    Attributes:
        similarity: float32 (mh, mw) in [0, 1] after min-max normalisation and the background filter.
        raw: float32 (mh, mw) the map before the background filter (for fallbacks and PerSAM).
        background_margin: float32 (mh, mw) best background minus best foreground cosine (> 0: filtered).
        points: float32 (K, 2) dense matched points, pixel (x, y) of cell centres, best first.
        scores: float32 (K,) their similarity.
        cells: int64 (K, 2) their (row, col) on the grid.
        regions: int64 (K,) connected region of each point (0..R-1).
        grid: (mh, mw).
    """

    similarity: np.ndarray
    raw: np.ndarray
    background_margin: np.ndarray
    points: np.ndarray
    scores: np.ndarray
    cells: np.ndarray
    regions: np.ndarray
    grid: tuple[int, int]

    @property
    def n_dense(self) -> int:
        return int(self.points.shape[0])


def _chunked_max(target: torch.Tensor, refs: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Max cosine of each target cell (C, N) over reference cells (C, M): (N,). -1 when M = 0."""
    if refs.shape[1] == 0:
        return torch.full((target.shape[1],), -1.0)
    best = torch.full((target.shape[1],), -1.0)
    for s in range(0, refs.shape[1], chunk):
        best = torch.maximum(best, (target.T @ refs[:, s : s + chunk]).amax(dim=1))
    return best


def cell_centres(cells: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """(K, 2) (row, col) grid cells -> (K, 2) float32 pixel (x, y) of their centres in an (H, W) image."""
    mh, mw = grid
    h, w = shape
    x = (cells[:, 1] + 0.5) * w / mw - 0.5
    y = (cells[:, 0] + 0.5) * h / mh - 0.5
    return np.stack([np.clip(x, 0, w - 1), np.clip(y, 0, h - 1)], axis=1).astype(np.float32)


def match(
    target: torch.Tensor,
    ref_feats: list[torch.Tensor],
    ref_fractions: list[np.ndarray],
    grid: tuple[int, int],
    shape: tuple[int, int],
    fg_threshold: float = 0.5,
    background_filter: bool = True,
    max_points: int = 128,
    max_ref_cells: int = 4096,
    seed: int = 0,
) -> Match:
    """Similarity map and dense matched points of a target against references (module docstring).

    Args:
        target: (C, mh * mw) unit-norm target features on the grid.
        ref_feats: per reference (C, mh_r * mw_r) unit-norm features.
        ref_fractions: per reference (mh_r, mw_r) mask fractions.
        grid: the target's (mh, mw); shape: the target image's (H, W).
        max_ref_cells: foreground / background cells kept (seeded random subset) to bound memory.
    """
    fg_list, bg_list = [], []
    for feats, frac in zip(ref_feats, ref_fractions):
        fg, bg = reference_cells(frac, fg_threshold)
        fg_list.append(feats[:, torch.from_numpy(fg)])
        bg_list.append(feats[:, torch.from_numpy(bg)])
    fg_all = torch.cat(fg_list, dim=1)
    bg_all = torch.cat(bg_list, dim=1)
    rng = np.random.default_rng(seed)
    if fg_all.shape[1] > max_ref_cells:
        fg_all = fg_all[:, torch.from_numpy(rng.choice(fg_all.shape[1], max_ref_cells, replace=False))]
    if bg_all.shape[1] > max_ref_cells:
        bg_all = bg_all[:, torch.from_numpy(rng.choice(bg_all.shape[1], max_ref_cells, replace=False))]
    fg_max = _chunked_max(target, fg_all)
    fg_mean = target.T @ fg_all.mean(dim=1)  # mean of cosines = cosine-sum with the mean vector (unit rows)
    sim = fg_max.clamp_min(0) * fg_mean.clamp_min(0)
    lo, hi = sim.min(), sim.max()
    sim = (sim - lo) / (hi - lo) if hi > lo else torch.zeros_like(sim)
    bg_max = _chunked_max(target, bg_all)
    margin = (bg_max - fg_max).reshape(grid).numpy().astype(np.float32)
    raw = sim.reshape(grid).numpy().astype(np.float32)
    filtered = raw.copy()
    if background_filter and bg_all.shape[1] > 0:
        filtered[margin > 0] = 0.0
    flat = filtered.reshape(-1)
    k = min(int(math.ceil(float(flat.sum()))), int(max_points), int(np.count_nonzero(flat > 0)))
    order = np.argsort(-flat, kind="stable")[:k]
    cells = np.stack(np.unravel_index(order, grid), axis=1).astype(np.int64)
    regions = point_regions(cells, grid)
    return Match(
        similarity=filtered,
        raw=raw,
        background_margin=margin,
        points=cell_centres(cells, grid, shape),
        scores=flat[order].astype(np.float32),
        cells=cells,
        regions=regions,
        grid=grid,
    )


def point_regions(cells: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Connected region (8-connected after a one-cell dilation) of each (row, col) cell: (K,) int64."""
    if len(cells) == 0:
        return np.zeros(0, dtype=np.int64)
    occ = np.zeros(grid, dtype=bool)
    occ[cells[:, 0], cells[:, 1]] = True
    lab, _ = ndimage.label(ndimage.binary_dilation(occ, structure=np.ones((3, 3), bool)), structure=np.ones((3, 3), bool))
    ids = lab[cells[:, 0], cells[:, 1]]
    _, dense_ids = np.unique(ids, return_inverse=True)
    return dense_ids.astype(np.int64)
