"""The one click simulator: where a user would click next to correct a mask, given the ground truth.

Used by the SAM prompts (`medagent.tools.sam.prompts`), hence by the SAM trainer and the benches, and by
the interactive evaluation (`medagent.eval.interactive`); it sits in the tools layer so agents, trainers
and evaluators can all import it.

The rule (the CVPR 2025 "Foundation Models for Interactive 3D Biomedical Image Segmentation" challenge's
evaluation script, CVPR25_iter_eval.py):
1. error = pred XOR gt; its connected components with full connectivity (8-connected in 2D, 26 in 3D);
2. the largest component by area wins (equal areas: the first in raster order, as `np.argmax` picks);
3. the click goes to the maximum of that component's Euclidean distance transform, computed with a
   background frame so that the image border counts as the component's border (the pixel deepest inside
   the error); several pixels at the same maximum: one is drawn with `rng` (uniformly);
4. its label is the ground truth there: positive (1) where the model under-segments (a false negative),
   negative (0) where it over-segments (a false positive).
No error at all: no click (None). On an empty mask the rule gives the first click of a click-only
protocol: the deepest pixel of the largest ground-truth component, positive.

Departures from RITM's clicker (Sofiiuk et al. 2022), which the NoC numbers of natural-image papers use:
RITM takes the global distance-transform maximum of all false negatives against all false positives (no
component step), the first pixel among ties, and never clicks the same pixel twice. The challenge rule
here is the one for biomedical images; `docs/evaluation.md` says what follows for the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from medagent.errors import DataError

__all__ = ["Click", "next_click"]


@dataclass(frozen=True)
class Click:
    """A simulated click.

    Attributes:
        index: the pixel in array order: (y, x) for a 2D mask, (z, y, x) for a 3D one.
        label: 1 positive (the pixel belongs to the target), 0 negative.
        region_area: pixels (voxels) of the error component the click corrects.
    """

    index: tuple[int, ...]
    label: int
    region_area: int

    @property
    def y(self) -> int:
        return self.index[-2]

    @property
    def x(self) -> int:
        return self.index[-1]

    @property
    def positive(self) -> bool:
        return self.label == 1

    @property
    def xy(self) -> tuple[int, int]:
        """(x, y): the order point prompts take (x = column)."""
        return self.index[-1], self.index[-2]


def next_click(pred: np.ndarray, gt: np.ndarray, rng: np.random.Generator | int | None = 0) -> Click | None:
    """The next corrective click on `pred` against `gt` by the rule of the module docstring, or None.

    Args:
        pred: the current mask, bool-like (non-zero = target), (H, W) or (D, H, W).
        gt: the ground-truth mask of the target, same shape.
        rng: breaks ties between pixels at the same distance-transform maximum. A `np.random.Generator`
            is drawn from (only when there is a tie); an int seeds a fresh generator for this call (the
            challenge re-seeds at every click), so the same masks and seed always give the same click;
            None draws from fresh OS entropy (not reproducible).
    Returns:
        `Click` with `index` (y, x) / (z, y, x), `label` 1 (false negative there) or 0 (false positive),
        `region_area`; None when pred equals gt.
    """
    p = np.asarray(pred) != 0
    g = np.asarray(gt) != 0
    if p.shape != g.shape or p.ndim not in (2, 3):
        raise DataError(f"next_click needs two 2D or 3D masks of one shape, got {p.shape} and {g.shape}")
    error = p ^ g
    if not error.any():
        return None
    labels, _ = ndimage.label(error, structure=np.ones((3,) * error.ndim, dtype=bool))
    areas = np.bincount(labels.ravel())
    areas[0] = 0
    k = int(np.argmax(areas))
    # the transform only needs the component's bounding box (+1 voxel frame, so the image border is border)
    box = ndimage.find_objects(labels, max_label=k)[k - 1]
    region = labels[box] == k
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[(slice(1, -1),) * region.ndim]
    peaks = np.argwhere(dist == dist.max())
    if len(peaks) > 1:
        generator = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        peak = peaks[int(generator.integers(len(peaks)))]
    else:
        peak = peaks[0]
    index = tuple(int(v) + s.start for v, s in zip(peak, box))
    return Click(index=index, label=int(g[index]), region_area=int(areas[k]))
