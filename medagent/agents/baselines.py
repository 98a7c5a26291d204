"""Baseline agents, labelled honestly.

- `OracleBoxAgent`: the target's exact bounding box, then stop. Reads the ground truth: an oracle, an
  upper reference for one-box prompting, not a policy.
- `MeanBoxAgent`: the box where the target's class lies on average in the training split (mean of the
  normalised bounding boxes), then stop. Uses training labels only: no oracle.
- `AutoAgent`: `auto_segment` with one model, then stop.
- `RandomAgent`: random tool calls with random arguments, stopping with probability `p_stop` per turn.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medagent.agents.base import Agent
from medagent.envs.coords import convert_coords
from medagent.envs.parsing import AUTO_MODELS, TOOL_NAMES, format_call


class OracleBoxAgent(Agent):
    """The ground-truth bounding box, then stop_action (an oracle)."""

    name = "oracle-box"
    uses_ground_truth = True

    def act(self, observation: dict[str, Any], env: Any) -> str:
        ep = self.episode(env)
        if ep.turns:
            return format_call("stop_action")
        ys, xs = np.nonzero(ep.gt)
        box = convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], ep.width, ep.height, to="frame").tolist()
        return format_call("add_bbox", {"bbox_2d": box})


class MeanBoxAgent(Agent):
    """The class's mean bounding box over the training split, then stop_action.

    Args:
        max_cases: training cases scanned per class (the first ones of a fixed shuffle), to bound the cost.
    """

    name = "mean-box"

    def __init__(self, max_cases: int = 200) -> None:
        self.max_cases = max_cases
        self._boxes: dict[tuple[int, str], list[int] | None] = {}

    def act(self, observation: dict[str, Any], env: Any) -> str:
        ep = self.episode(env)
        if ep.turns:
            return format_call("stop_action")
        box = self.mean_box(env, ep.target.class_name)
        if box is None:
            return format_call("stop_action")
        return format_call("add_bbox", {"bbox_2d": box})

    def mean_box(self, env: Any, class_name: str) -> list[int] | None:
        """Mean normalised [x0, y0, x1, y1] of `class_name` over training cases, in the 0-999 frame."""
        base = env.unwrapped
        key = (id(base.dataset), class_name)
        if key not in self._boxes:
            cases = base.dataset.cases("train")
            rng = np.random.default_rng(0)
            order = rng.permutation(len(cases))[: self.max_cases]
            boxes = []
            for i in order:
                # the agent's own generator: drawing from the env's would change the episodes that follow
                case = cases[int(i)].random_labelled_slice(rng, base.config.min_area)
                index = next((k for k, v in case.class_names.items() if v == class_name), None)
                if index is None or case.label is None:
                    continue
                ys, xs = np.nonzero(case.label == index)
                if xs.size == 0:
                    continue
                h, w = case.shape
                boxes.append(convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], w, h, to="frame"))
            self._boxes[key] = np.rint(np.mean(boxes, axis=0)).astype(int).tolist() if boxes else None
        return self._boxes[key]


class AutoAgent(Agent):
    """auto_segment with `model`, then stop_action."""

    name = "auto"

    def __init__(self, model: str = "unet") -> None:
        if model not in AUTO_MODELS:
            raise ValueError(f"AutoAgent model must be one of {AUTO_MODELS}, got {model!r}")
        self.model = model

    def act(self, observation: dict[str, Any], env: Any) -> str:
        if self.episode(env).turns:
            return format_call("stop_action")
        return format_call("auto_segment", {"model": self.model})


class RandomAgent(Agent):
    """Random valid-looking calls; stops with probability `p_stop` each turn."""

    name = "random"

    def __init__(self, p_stop: float = 0.2) -> None:
        self.p_stop = p_stop
        self.rng = np.random.default_rng(0)

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, observation: dict[str, Any], env: Any) -> str:
        if self.rng.uniform() < self.p_stop:
            return format_call("stop_action")
        name = str(self.rng.choice([t for t in TOOL_NAMES if t != "stop_action"]))
        args: dict[str, Any] = {}
        if name == "add_bbox":
            x, y = np.sort(self.rng.integers(0, 1000, (2, 2)), axis=1)
            args["bbox_2d"] = [int(x[0]), int(y[0]), int(x[1]), int(y[1])]
        elif name == "add_point":
            args["point_2d"] = self.rng.integers(0, 1000, 2).tolist()
            args["point_type"] = str(self.rng.choice(["positive", "negative"]))
        elif name == "auto_segment":
            args["model"] = str(self.rng.choice(AUTO_MODELS))
        return format_call(name, args)
