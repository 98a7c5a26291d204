"""Simulated prompts: boxes from ground truth (optionally jittered) and corrective clicks.

Used alike by the SAM trainer, the benchmarks, the evaluator and expert agents, so that prompts in
training and in evaluation come from one definition:
- `iter_objects`: the prompt targets of a labelled case (instances, else connected class components).
- `mask_box`: the tight inclusive box [x0, y0, x1, y1] of a mask (x = column, y = row).
- `jitter_box`: each side moved by up to `fraction` of the box size (and at most `max_shift` px),
  clipped to the image.
- `corrective_click`: the next click of `medagent.tools.clicker.next_click` (the one click rule: the
  distance-transform maximum of the largest connected error component, positive on a false negative,
  negative on a false positive; ties drawn with a fixed seed).
- `simulate_clicks`: prompt, predict, click by that rule, feed the previous logits, repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np
from scipy import ndimage

from medagent.errors import DataError
from medagent.tools.clicker import Click, next_click

if TYPE_CHECKING:  # pragma: no cover
    from medagent.data.case import Case
    from medagent.tools.base import Prediction


def iter_objects(case: "Case", min_area: int = 16) -> Iterator[np.ndarray]:
    """The objects a prompt can target in a labelled 2D case, as boolean (H, W) masks.

    With an instance map: every instance of >= `min_area` pixels. Without: every 8-connected component
    of each foreground class with >= `min_area` pixels (classes in index order, components by label
    order). One definition for training, benchmarks and evaluation.
    """
    if case.instances is not None:
        ids, counts = np.unique(case.instances, return_counts=True)
        for i, n in zip(ids, counts):
            if i > 0 and n >= min_area:
                yield case.instances == i
        return
    if case.label is None:
        raise DataError(f"case {case.id!r} has no label: it has no objects to prompt")
    structure = np.ones((3,) * case.label.ndim, dtype=bool)
    for k in case.foreground_classes():
        lab, n = ndimage.label(case.label == k, structure=structure)
        if n == 0:
            continue
        areas = np.bincount(lab.ravel())
        for j in range(1, n + 1):
            if areas[j] >= min_area:
                yield lab == j


def mask_box(mask: np.ndarray) -> np.ndarray:
    """Tight inclusive box [x0, y0, x1, y1] (int64) of a non-empty 2D mask."""
    m = np.asarray(mask) > 0
    if m.ndim != 2:
        raise DataError(f"mask_box takes a 2D mask, got shape {m.shape}")
    if not m.any():
        raise DataError("mask_box: the mask is empty, so it has no box")
    rows = np.flatnonzero(m.any(axis=1))
    cols = np.flatnonzero(m.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.int64)


def jitter_box(
    box: np.ndarray,
    shape: tuple[int, int],
    rng: np.random.Generator,
    fraction: float = 0.1,
    max_shift: float = 20.0,
) -> np.ndarray:
    """Move each side of `box` by U(-s, s), s = min(fraction * side length, max_shift) px; clip to (H, W).

    The result keeps x0 < x1 and y0 < y1 (at least 1 px apart). Returns float64 [x0, y0, x1, y1].
    """
    h, w = shape
    x0, y0, x1, y1 = (float(v) for v in box)
    sx = min(fraction * (x1 - x0 + 1), max_shift)
    sy = min(fraction * (y1 - y0 + 1), max_shift)
    d = rng.uniform(-1.0, 1.0, size=4) * np.array([sx, sy, sx, sy])
    nx0, ny0, nx1, ny1 = x0 + d[0], y0 + d[1], x1 + d[2], y1 + d[3]
    nx0, nx1 = np.clip([nx0, nx1], 0, w - 1)
    ny0, ny1 = np.clip([ny0, ny1], 0, h - 1)
    if nx1 - nx0 < 1:
        nx0, nx1 = min(x0, w - 2), max(x1, x0 + 1)
    if ny1 - ny0 < 1:
        ny0, ny1 = min(y0, h - 2), max(y1, y0 + 1)
    return np.array([nx0, ny0, nx1, ny1], dtype=np.float64)


def corrective_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | int | None = 0) -> Click | None:
    """The click that corrects `pred` against `gt` (both 2D), or None when they agree.

    `medagent.tools.clicker.next_click` (see there for the rule and `rng`); kept under this name for the
    SAM trainer and benches. The `Click` has `x`, `y`, `positive` and `region_area`.
    """
    p = np.asarray(pred) > 0
    g = np.asarray(gt) > 0
    if p.shape != g.shape or p.ndim != 2:
        raise DataError(f"corrective_click needs two 2D masks of one shape, got {p.shape} and {g.shape}")
    return next_click(p, g, rng)


@dataclass
class ClickEpisode:
    """What `simulate_clicks` did: the predictions after the box (index 0) and after each click."""

    predictions: list["Prediction"] = field(default_factory=list)
    clicks: list[Click] = field(default_factory=list)


def simulate_clicks(
    session: object, gt: np.ndarray, n_clicks: int, box: np.ndarray | None = None, rng: np.random.Generator | int | None = 0,
) -> ClickEpisode:
    """Iterative click simulation on a `SamSession`: optional box, then up to `n_clicks` corrective clicks.

    Each click follows `corrective_click` on the current mask (ties drawn with `rng`: a seed or a
    generator); the session sends the box, every click so far and the previous low-res logits. Without a
    box the first click is the rule's click on an empty mask (and counts among the `n_clicks`). Stops
    early when the mask has no error left.
    """
    episode = ClickEpisode()
    g = np.asarray(gt) > 0
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)  # one generator for the whole episode
    if box is not None:
        pred = session.set_box(box)  # type: ignore[attr-defined]
    else:
        click = corrective_click(np.zeros_like(g), g, rng)
        if click is None:
            raise DataError("simulate_clicks: the ground truth is empty and no box was given")
        pred = session.add_point((click.x, click.y), click.positive)  # type: ignore[attr-defined]
        episode.clicks.append(click)
        n_clicks -= 1
    episode.predictions.append(pred)
    for _ in range(max(n_clicks, 0)):
        click = corrective_click(pred.mask, g, rng)
        if click is None:
            break
        pred = session.add_point((click.x, click.y), click.positive)  # type: ignore[attr-defined]
        episode.predictions.append(pred)
        episode.clicks.append(click)
    return episode
