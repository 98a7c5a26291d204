"""Agents that act on the regions tool answers list (`medagent.envs.regions`), and the blob heuristic.

- `RegionExpertAgent` ("expert-regions"): a reference that reads the ground truth. It calls `auto_segment`, then chooses,
  with the ground truth, among what the policy can also see: keep the mask (stop) or prompt SAM with one of the
  listed region boxes; if no region is listed it falls back to the tight ground-truth box (what grounding
  rows teach). Every choice except that fallback is readable from the conversation, so a small policy can
  learn it by copying a box from the tool answer instead of regressing pixels.
- `RankedRegionsAgent` ("ranked-regions"): the same two moves without the ground truth, read from the
  conversation alone: after `auto_segment`, keep the `n` largest listed regions (`n` = the instance count the
  instruction names), take the one of rank `k` among them, prompt SAM with its box (`select_region`), stop; an instruction that
  names no rank (one lesion, or a whole organ) keeps the automatic mask. A non-learned reference, and the policy's default teacher: its
  choice is a function of what the policy reads (the GT-choosing teacher made the same choice on 83.8% of 80
  mni-lesion training episodes, `bench/bench_region_rules.py`), so imitation has one answer to learn.
- `BlobAgent` ("blob"): a non-learned baseline: threshold at the image's 98th percentile, connected
  components ranked nearest the top-left (the instruction's order), the box of the component the instruction
  asks for goes to SAM, then stop.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
from scipy import ndimage

from medagent.agents.base import Agent
from medagent.envs.coords import convert_coords
from medagent.envs.parsing import ToolCall, format_call
from medagent.envs.regions import region_boxes

_RANK = re.compile(r"\((\d+) of (\d+)")


def instruction_rank(instruction: str) -> int:
    """The 1-based rank an instruction asks for ("... (2 of 3 lesion instances)." -> 2; no rank -> 1)."""
    return instruction_rank_and_count(instruction)[0]


def instruction_rank_and_count(instruction: str) -> tuple[int, int]:
    """(rank k, instance count n) an instruction names ("... (2 of 3 lesion instances)." -> (2, 3); none -> (1, 1))."""
    match = _RANK.search(instruction)
    return (int(match.group(1)), int(match.group(2))) if match else (1, 1)


def ranked_region(regions: list[tuple[list[int], int]], rank: int, count: int) -> int | None:
    """The number (1-based, as the tool answer labels it) of the region a reader of the answer would prompt SAM
    with, or None to keep the mask.

    Args:
        regions: the listed regions, nearest the top-left first: [(box in the 0-999 frame, area in pixels)].
        rank: the instruction's 1-based rank k; count: its instance count n.

    The `count` largest regions are kept (smaller ones are taken for false positives), in their listed order,
    and the one of rank `rank` among them is chosen; None when nothing is listed, when the instruction names a
    single target (the box of the largest listed region scored below the automatic mask on 40 mni-lesion and
    ct-phantom test episodes: 0.692 vs 0.717 and 0.599 vs 0.907 Dice, `bench/bench_region_rules.py`), or when the
    rank is past the kept regions.
    """
    if not regions or count == 1:
        return None
    kept = sorted(sorted(range(len(regions)), key=lambda i: -regions[i][1])[:count])
    return kept[rank - 1] + 1 if rank <= len(kept) else None


class _RegionChooser(Agent):
    """The two region agents' episode: `auto_segment`, then one choice (`choose`), then `stop_action`.

    Args:
        model: the automatic segmenter to call first.
    """

    def __init__(self, model: str = "unet") -> None:
        self.model = model

    def act(self, observation: dict[str, Any], env: Any) -> str:
        ep = self.episode(env)
        if ep.turns == 0:
            return format_call("auto_segment", {"model": self.model})
        if ep.turns >= 2 or ep.turns >= ep.config.max_turns - 1:
            return format_call("stop_action")
        return self.choose(ep)

    def choose(self, ep: Any) -> str:
        """The second message, given the episode after `auto_segment`."""
        raise NotImplementedError


class RegionExpertAgent(_RegionChooser):
    """auto_segment, then the best of stop / add_bbox(listed region box), then stop (module docstring)."""

    name = "expert-regions"
    uses_ground_truth = True

    def choose(self, ep: Any) -> str:
        boxes = [box for box, _ in region_boxes(ep.mask, ep.config.region_min_area)[: ep.config.max_regions]]
        if not boxes:
            ys, xs = np.nonzero(ep.gt)
            tight = convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], ep.width, ep.height, to="frame").tolist()
            return format_call("add_bbox", {"bbox_2d": tight})
        best, best_dice = None, ep.dice
        for box in boxes:
            result = ep.fork().run_call(ToolCall("add_bbox", {"bbox_2d": box}))
            if result.outcome == "segment" and result.dice > best_dice + 1e-9:
                best, best_dice = box, result.dice
        if best is None:
            return format_call("stop_action")
        return format_call("add_bbox", {"bbox_2d": best})


class RankedRegionsAgent(_RegionChooser):
    """auto_segment, then `select_region` with `ranked_region`'s number (or stop), then stop; no ground truth.

    `select_region(region=k)` prompts SAM with exactly the box `add_bbox` would get from region k's listed box,
    so this agent's masks are those of copying the box; a policy imitating it writes one number instead of four.
    """

    name = "ranked-regions"

    def choose(self, ep: Any) -> str:
        regions = region_boxes(ep.mask, ep.config.region_min_area)[: ep.config.max_regions]
        number = ranked_region(regions, *instruction_rank_and_count(ep.target.instruction))
        return format_call("stop_action") if number is None else format_call("select_region", {"region": number})


class BlobAgent(Agent):
    """Brightest-blob heuristic (module docstring); no ground truth, no training.

    Args:
        percentile: intensity percentile of the threshold.
        min_area: smallest component kept, pixels.
    """

    name = "blob"

    def __init__(self, percentile: float = 98.0, min_area: int = 8) -> None:
        self.percentile = percentile
        self.min_area = min_area

    def act(self, observation: dict[str, Any], env: Any) -> str:
        ep = self.episode(env)
        if ep.turns:
            return format_call("stop_action")
        image = np.asarray(ep.case.image, dtype=np.float32).mean(axis=0)
        mask = image > np.percentile(image, self.percentile)
        mask = ndimage.binary_opening(mask)
        boxes = [box for box, _ in region_boxes(mask, self.min_area)]
        if not boxes:
            return format_call("stop_action")
        k = min(instruction_rank(ep.target.instruction), len(boxes))
        return format_call("add_bbox", {"bbox_2d": boxes[k - 1]})
