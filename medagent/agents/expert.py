"""`ExpertAgent`: hybrid prompting with ground truth, the source of expert trajectories (METHODS.md section 1).

Per turn the expert builds candidate calls, tries each on a fork of the episode (`Episode.fork`, so the
real episode is untouched), and writes the best one if it raises IoU by at least `tau`; otherwise it stops.

- First turn: a box from the target's bounding box with each side jittered by up to `box_jitter` of the
  box size (retries draw new jitter), or, in a `click_only_ratio` share of episodes, a positive click at the
  distance-transform maximum of the target. Later turns: a corrective click at the distance-transform
  maximum of the largest false-negative (positive click) or false-positive (negative click) region; retries
  use the next-largest regions.
- Tools: `auto_segment` (each model), `cps`, `adapt` and, once a mask exists, `refine` are candidates too;
  where one beats prompting it is used (unavailable tools simply never win).
- Up to `max_retries` prompt candidates per turn; the expert stops one turn before `max_turns` so the
  episode ends with stop_action (format 1).

Details the paper leaves open (jitter law, retry rule, tool mix) are these documented choices.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from medagent.agents.base import Agent
from medagent.envs.coords import convert_coords
from medagent.envs.episode import Episode
from medagent.envs.parsing import AUTO_MODELS, ToolCall, format_call


@dataclass
class ExpertConfig:
    """Settings of the expert.

    Attributes:
        click_only_ratio: share of episodes that use clicks only (no box), in [0, 1].
        box_jitter: maximum shift of each box side, as a fraction of the box's width/height.
        tau: minimum IoU gain for an action to be kept.
        max_retries: prompt candidates tried per turn (jittered boxes, or clicks in other error regions).
        tools: which non-prompt tools the expert tries: any of "auto_segment", "cps", "adapt", "refine".
        auto_models: models tried with auto_segment.
        try_tight_box: the first box candidate is the tight ground-truth box (no jitter); the other
            `max_retries - 1` are jittered. The best candidate is kept, so the expert starts at least as
            well as the oracle box whenever it uses a box.
    """

    click_only_ratio: float = 0.3
    box_jitter: float = 0.1
    tau: float = 0.01
    max_retries: int = 3
    tools: tuple[str, ...] = ("auto_segment", "cps", "adapt", "refine")
    try_tight_box: bool = True
    auto_models: tuple[str, ...] = AUTO_MODELS


def largest_error_regions(mask: np.ndarray, gt: np.ndarray) -> list[tuple[int, bool, np.ndarray]]:
    """Connected false-negative and false-positive regions, largest first: (area, is_false_negative, region)."""
    regions = []
    for error, positive in ((gt & ~mask, True), (mask & ~gt, False)):
        labels, n = ndimage.label(error)
        if n == 0:
            continue
        areas = ndimage.sum_labels(error, labels, index=np.arange(1, n + 1))
        for k in np.argsort(-areas, kind="stable")[:8]:
            regions.append((int(areas[k]), positive, labels == k + 1))
    regions.sort(key=lambda r: -r[0])
    return regions


def interior_point(region: np.ndarray) -> tuple[int, int]:
    """(x, y) pixel of the distance-transform maximum of a boolean region (the point deepest inside it).

    The image border counts as outside. Ties (a plateau of equal depth) go to the plateau pixel nearest the
    plateau's centroid, so clicks land mid-region rather than at its first row.
    """
    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= dist.max() - 1e-9)
    k = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
    return int(xs[k]), int(ys[k])


class ExpertAgent(Agent):
    """Hybrid-prompting expert (reads the ground truth; see module docstring)."""

    name = "expert"
    uses_ground_truth = True

    def __init__(self, config: ExpertConfig | None = None, **overrides: Any) -> None:
        import dataclasses

        self.config = dataclasses.replace(config or ExpertConfig(), **overrides)
        self.rng = np.random.default_rng(0)
        self.click_only = False
        self._static: dict[str, float] = {}

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.click_only = bool(self.rng.uniform() < self.config.click_only_ratio)
        self._static = {}

    def act(self, observation: dict[str, Any], env: Any) -> str:
        ep = self.episode(env)
        if ep.turns >= ep.config.max_turns - 1:
            return format_call("stop_action")
        best: tuple[float, ToolCall] | None = None
        for call in self._candidates(ep):
            iou = self._try(ep, call)
            if best is None or iou > best[0] + 1e-12:
                best = (iou, call)
        if best is None or best[0] < ep.iou + self.config.tau:
            return format_call("stop_action")
        return format_call(best[1].name, best[1].arguments)

    # -- candidates -------------------------------------------------------------------------------
    def _candidates(self, ep: Episode) -> list[ToolCall]:
        cfg = self.config
        calls: list[ToolCall] = []
        if not ep.mask.any() and not self.click_only:
            for attempt in range(max(1, cfg.max_retries)):
                jitter = 0.0 if attempt == 0 and cfg.try_tight_box else cfg.box_jitter
                calls.append(ToolCall("add_bbox", {"bbox_2d": self._jittered_box(ep, jitter)}))
        else:
            for _, positive, region in largest_error_regions(ep.mask, ep.gt)[: max(1, cfg.max_retries)]:
                x, y = interior_point(region)
                point = convert_coords([x, y], ep.width, ep.height, to="frame").tolist()
                calls.append(ToolCall("add_point", {"point_2d": point, "point_type": "positive" if positive else "negative"}))
        if "auto_segment" in cfg.tools:
            calls += [ToolCall("auto_segment", {"model": m}) for m in cfg.auto_models]
        calls += [ToolCall(name, {}) for name in ("cps", "adapt") if name in cfg.tools]
        if "refine" in cfg.tools and ep.mask.any():
            calls.append(ToolCall("refine", {}))
        return calls

    def _jittered_box(self, ep: Episode, j: float) -> list[int]:
        ys, xs = np.nonzero(ep.gt)
        x0, x1, y0, y1 = float(xs.min()), float(xs.max()), float(ys.min()), float(ys.max())
        w, h = x1 - x0 + 1, y1 - y0 + 1
        dx0, dx1 = self.rng.uniform(-j, j, 2) * w
        dy0, dy1 = self.rng.uniform(-j, j, 2) * h
        box = np.array([x0 + dx0, y0 + dy0, x1 + dx1, y1 + dy1])
        box[[0, 2]] = np.clip(np.sort(box[[0, 2]]), 0, ep.width - 1)
        box[[1, 3]] = np.clip(np.sort(box[[1, 3]]), 0, ep.height - 1)
        return convert_coords(np.rint(box), ep.width, ep.height, to="frame").tolist()

    def _try(self, ep: Episode, call: ToolCall) -> float:
        """IoU the call would give, run on a fork; image-only tools are tried once per episode."""
        static = call.name in ("auto_segment", "cps", "adapt")
        key = call.describe()
        if static and key in self._static:
            return self._static[key]
        fork = ep.fork()
        result = fork.run_call(call)
        iou = result.iou if result.outcome == "segment" else -1.0
        if static:
            self._static[key] = iou
        return iou
