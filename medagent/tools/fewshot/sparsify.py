"""Sparsification operators: keep m of K dense matched points, m set by a density parameter.

`density` is the fraction of dense points kept, m = max(min_points, round(density * K)) (capped at K),
so one density value means the same thing for every operator:
- "topk": the m best-scoring points.
- "spacing": score-weighted farthest-point sampling: start at the best point, then repeatedly add the
  point maximising score x distance to the nearest kept point (the kept points spread out; a
  low-score outlier is not picked just for being far away).
- "cluster": weighted k-means (weights = scores, k-means++ seeding, fixed seed) of the point positions
  into m clusters; each cluster is represented by its member nearest the weighted centroid (a real
  matched point, so it stays on a non-convex target).
- "region" (default, region-wise cluster centres): the points' connected regions (`Match.regions`) each
  get a share of m proportional to their total score (largest remainders; at least one each while m
  allows, else the m strongest regions get one), then "cluster" runs inside each region.
Every operator returns indices into the dense points, best score first.
"""

from __future__ import annotations

import numpy as np

from medagent.errors import ConfigError

OPERATORS = ("topk", "spacing", "cluster", "region")


def n_kept(k: int, density: float, min_points: int = 1) -> int:
    """Points kept from k at `density` (fraction in (0, 1])."""
    if not 0 < density <= 1:
        raise ConfigError(f"density must be in (0, 1], got {density}")
    if k == 0:
        return 0
    return int(min(k, max(min_points, round(density * k))))


def _weighted_kmeans(x: np.ndarray, w: np.ndarray, m: int, rng: np.random.Generator, iters: int = 25) -> np.ndarray:
    """Cluster labels (K,) of points x (K, 2) with weights w (K,) into m clusters."""
    k = len(x)
    if m >= k:
        return np.arange(k)
    w = np.maximum(w.astype(np.float64), 1e-6)
    centres = [x[int(np.argmax(w))]]  # seeded at the best point, then k-means++ with weights
    d2 = ((x - centres[0]) ** 2).sum(1)
    for _ in range(1, m):
        p = w * d2
        total = p.sum()
        idx = int(rng.choice(k, p=p / total)) if total > 0 else int(rng.integers(k))
        centres.append(x[idx])
        d2 = np.minimum(d2, ((x - x[idx]) ** 2).sum(1))
    c = np.asarray(centres, dtype=np.float64)
    labels = np.zeros(k, dtype=np.int64)
    for _ in range(iters):
        dist = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        new = dist.argmin(1)
        if _ > 0 and np.array_equal(new, labels):
            break
        labels = new
        for j in range(m):
            sel = labels == j
            if sel.any():
                c[j] = (x[sel] * w[sel, None]).sum(0) / w[sel].sum()
    return labels


def _cluster_reps(x: np.ndarray, w: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of one representative per cluster (member nearest its weighted centroid)."""
    labels = _weighted_kmeans(x, w, m, rng)
    reps = []
    for j in np.unique(labels):
        idx = np.flatnonzero(labels == j)
        ww = np.maximum(w[idx], 1e-6)
        centroid = (x[idx] * ww[:, None]).sum(0) / ww.sum()
        d = ((x[idx] - centroid) ** 2).sum(1)
        reps.append(int(idx[np.lexsort((-w[idx], d))[0]]))  # nearest; ties -> higher score
    return np.asarray(reps, dtype=np.int64)


def _spacing(x: np.ndarray, w: np.ndarray, m: int) -> np.ndarray:
    kept = [int(np.argmax(w))]
    d = np.sqrt(((x - x[kept[0]]) ** 2).sum(1))
    for _ in range(1, m):
        gain = d * np.maximum(w, 1e-6)
        gain[kept] = -1.0
        nxt = int(np.argmax(gain))
        kept.append(nxt)
        d = np.minimum(d, np.sqrt(((x - x[nxt]) ** 2).sum(1)))
    return np.asarray(kept, dtype=np.int64)


def _allocate(weights: np.ndarray, m: int) -> np.ndarray:
    """Split m among regions with `weights` (largest remainders, >= 1 each while m allows)."""
    r = len(weights)
    out = np.zeros(r, dtype=np.int64)
    order = np.argsort(-weights, kind="stable")
    if m <= r:
        out[order[:m]] = 1
        return out
    out[:] = 1
    rest = m - r
    share = weights / weights.sum() * rest if weights.sum() > 0 else np.full(r, rest / r)
    out += np.floor(share).astype(np.int64)
    left = m - out.sum()
    rem = share - np.floor(share)
    out[np.argsort(-rem, kind="stable")[:left]] += 1
    return out


def sparsify(
    points: np.ndarray,
    scores: np.ndarray,
    density: float,
    method: str = "region",
    regions: np.ndarray | None = None,
    min_points: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Indices of the points kept at `density` by operator `method` (module docstring), best score first.

    Args:
        points: (K, 2) float pixel (x, y); scores: (K,) similarity; regions: (K,) region ids ("region").
    """
    if method not in OPERATORS:
        raise ConfigError(f"unknown sparsification operator {method!r}; choose from {OPERATORS}")
    k = len(points)
    m = n_kept(k, density, min_points)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    x = np.asarray(points, dtype=np.float64)
    w = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if m >= k:
        idx = np.arange(k)
    elif method == "topk":
        idx = np.argsort(-w, kind="stable")[:m]
    elif method == "spacing":
        idx = _spacing(x, w, m)
    elif method == "cluster":
        idx = _cluster_reps(x, w, m, rng)
    else:
        reg = np.zeros(k, dtype=np.int64) if regions is None else np.asarray(regions)
        ids = np.unique(reg)
        alloc = _allocate(np.array([w[reg == r].sum() for r in ids]), m)
        parts = []
        for r, n in zip(ids, alloc):
            if n == 0:
                continue
            members = np.flatnonzero(reg == r)
            parts.append(members[_cluster_reps(x[members], w[members], int(n), rng)])
        idx = np.concatenate(parts)
    idx = np.asarray(idx, dtype=np.int64)
    return idx[np.argsort(-w[idx], kind="stable")]
