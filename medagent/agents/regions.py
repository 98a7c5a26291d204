"""Agents that act on the regions tool answers list (`medagent.envs.regions`), and the blob heuristic.

- `RegionExpertAgent` ("expert-regions"): the teacher of the tiny policy. It calls `auto_segment`, then chooses,
  with the ground truth, among what the policy can also see: keep the mask (stop) or prompt SAM with one of the
  listed region boxes; if no region is listed it falls back to the tight ground-truth box (what grounding
  rows teach). Every choice except that fallback is readable from the conversation, so a small policy can
  learn it by copying a box from the tool answer instead of regressing pixels.
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
    match = _RANK.search(instruction)
    return int(match.group(1)) if match else 1


class RegionExpertAgent(Agent):
    """auto_segment, then the best of stop / add_bbox(listed region box), then stop (module docstring).

    Args:
        model: the automatic segmenter to call first.
    """

    name = "expert-regions"
    uses_ground_truth = True

    def __init__(self, model: str = "unet") -> None:
        self.model = model

    def act(self, observation: dict[str, Any], env: Any) -> str:
        ep = self.episode(env)
        if ep.turns == 0:
            return format_call("auto_segment", {"model": self.model})
        if ep.turns >= 2 or ep.turns >= ep.config.max_turns - 1:
            return format_call("stop_action")
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
