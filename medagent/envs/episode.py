"""The transition logic of one episode, shared by the Gymnasium env and the TRL adapter.

`Episode.run_message(text)` and `Episode.run_call(call)` are the only ways the state changes: a call goes to
its tool, the tool's mask becomes the current mask, the trace grows by one `CallRecord` and the step reward is
the difference of potentials (`medagent.rewards`). Bad calls and tool failures never raise: they give an
error text and an "invalid" / "failed" record.

Tool state: a stateful tool (`tool.stateful`, e.g. MGIPT and the other test-time adapters) is private to
each episode: its first call in an episode starts from `tool.reset()`, later calls continue from the state
this episode left it in, and a fork (`Episode.fork`) carries its own copy. So every episode starts every tool
from the same state, forks never change what the real episode sees, and episodes played interleaved (TRL
runs a group of rollouts in lockstep over one shared tool) cannot leak into each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from medagent import metrics
from medagent.data.case import Case
from medagent.envs.config import EnvConfig
from medagent.envs.coords import convert_coords
from medagent.envs.parsing import InvalidCall, ToolCall, parse_message
from medagent.envs.provider import ToolProvider
from medagent.envs.regions import describe_regions, region_boxes
from medagent.envs.session import PromptSession
from medagent.envs.targets import Target
from medagent.rewards import CallRecord, EpisodeTrace, PotentialReward, reward_terms
from medagent.tools.base import Prediction


@dataclass(frozen=True)
class CallResult:
    """What one call did: the call, its outcome (see `medagent.rewards.CALL_OUTCOMES`), the text shown to the
    policy, the step reward, and the overlap of the current mask afterwards."""

    call: ToolCall | InvalidCall
    outcome: str
    text: str
    reward: float
    iou: float
    dice: float


def _class_index(class_names: Any, name: str) -> int | None:
    """Index of `name` in a tool's class names (dict index -> name, or a list); case-insensitive."""
    items = class_names.items() if isinstance(class_names, dict) else enumerate(class_names or [])
    for index, value in items:
        if str(value).strip().lower() == name.strip().lower():
            return int(index)
    return None


class Episode:
    """State of one episode: the case, target, current mask, prompt session, trace and history.

    Args:
        case: the 2D case (original resolution).
        target: what to segment.
        provider: where tools come from.
        config: environment settings.
        references: zero-argument function giving the cps reference cases (binary labels), called lazily.
    """

    def __init__(self, case: Case, target: Target, provider: ToolProvider, config: EnvConfig,
                 references: Callable[[], list[Case]] | None = None) -> None:
        self.case = case
        self.target = target
        self.gt = target.mask(case)
        self.provider = provider
        self.config = config
        self._references = references
        self.height, self.width = case.shape
        self.mask = np.zeros(case.shape, dtype=bool)
        self.session: PromptSession | None = None
        self.undo_stack: list[tuple[np.ndarray, Any]] = []
        self.trace = EpisodeTrace()
        self.shaper = PotentialReward(config.reward)
        self.history: list[str] = []
        self.errors_in_a_row = 0
        self.terminated = False
        self.truncated = False
        self.iou = 0.0
        self.dice = 0.0
        self.is_fork = False
        self.tool_states: dict[int, Any] = {}  # id(stateful tool) -> its state in this episode

    # -- public ---------------------------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.terminated or self.truncated

    @property
    def turns(self) -> int:
        return len(self.trace.calls)

    @property
    def score(self) -> float:
        """The episode score so far (the potential; the sum of all step rewards)."""
        return self.shaper.potential

    def terms(self) -> dict[str, float]:
        return reward_terms(self.trace, self.config.reward)

    def run_message(self, text: Any, after_call: Optional[Callable[[CallResult], None]] = None) -> tuple[list[CallResult], float]:
        """Run every call of a policy message in order; returns the results and the summed reward.

        A message with no parseable call ends the episode with format 0. Calls after the episode ends
        (stop_action, max turns, too many errors in a row) are dropped. `after_call(result)` runs after each
        call (the env renders the image the policy sees after that call).
        """
        if self.done:
            return [], 0.0
        parsed = parse_message(text)
        if not parsed.parseable:
            self.trace.format_failed = True
            reward = self.shaper.update(self.trace)
            self.history.append("(no parseable <tool_call>: episode over)")
            self.terminated = True
            return [], reward
        results = []
        for call in parsed.calls:
            if self.done:
                break
            results.append(self.run_call(call))
            if after_call is not None:
                after_call(results[-1])
        return results, float(sum(r.reward for r in results))

    def run_call(self, call: ToolCall | InvalidCall) -> CallResult:
        """Run one (parsed) call as one turn."""
        if self.done:
            return CallResult(call, "failed", "The episode is over; no more calls are run.", 0.0, self.iou, self.dice)
        if isinstance(call, InvalidCall):
            outcome, text = "invalid", f"{call.name or 'tool call'} error: {call.error}"
        else:
            try:
                outcome, text = self._dispatch(call)
            except Exception as exc:  # noqa: BLE001 - a tool that raises gives an error observation
                message = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
                outcome, text = "failed", f"{call.name} error: {message}"
        self.errors_in_a_row = self.errors_in_a_row + 1 if outcome in ("invalid", "failed") else 0
        self.iou, self.dice = metrics.iou(self.mask, self.gt), metrics.dice(self.mask, self.gt)
        if self.config.reward.needs_boundary:
            self._boundary()
        self.trace.calls.append(CallRecord(getattr(call, "name", ""), outcome, iou=self.iou, dice=self.dice))
        reward = self.shaper.update(self.trace)
        self.history.append(f"Turn {self.turns}: {call.describe()} -> {text}")
        if outcome == "stop" or self.errors_in_a_row >= self.config.max_invalid:
            self.terminated = True
        elif self.turns >= self.config.max_turns:
            self.truncated = True
        return CallResult(call, outcome, text, reward, self.iou, self.dice)

    def fork(self) -> "Episode":
        """An independent copy of the state (same case, tools and config) to try calls on without
        touching this episode; used by the expert agent to test candidate actions."""
        other = Episode.__new__(Episode)
        other.__dict__.update(self.__dict__)
        other.mask = self.mask.copy()
        if self.session is not None:
            other.session = PromptSession(self.session.tool, self.case, self.session.previous_logits)
            other.session.state = self.session.state.copy()
        other.undo_stack = list(self.undo_stack)
        other.trace = EpisodeTrace(list(self.trace.calls), self.trace.format_failed, self.trace.nsd, self.trace.hd95)
        other.shaper = PotentialReward(self.config.reward)
        other.shaper.potential, other.shaper.total = self.shaper.potential, self.shaper.total
        other.history = list(self.history)
        other.is_fork = True
        other.tool_states = dict(self.tool_states)
        return other

    def prompts(self) -> tuple[list[int] | None, list[list[int]], list[int]]:
        """Current box, clicks and click labels in original pixels (for rendering)."""
        if self.session is None:
            return None, [], []
        state = self.session.state
        return state.box, state.points, state.labels

    # -- dispatch -------------------------------------------------------------------------------
    def _dispatch(self, call: ToolCall) -> tuple[str, str]:
        name, args = call.name, call.arguments
        if name == "stop_action":
            return "stop", "Segmentation finished."
        if name == "undo":
            if not self.undo_stack:
                return "failed", "undo error: nothing to undo"
            mask, state = self.undo_stack.pop()
            self.mask = mask
            if self.session is not None and state is not None:
                self.session.state = state.copy()  # snapshots may be shared with forks: never mutate them
            return "undo", f"Back to the previous mask ({self._area_text()})."
        if name in ("add_bbox", "add_point", "select_region"):
            frame_box = args.get("bbox_2d")
            if name == "select_region":  # the box of a listed region, exactly as add_bbox would take it
                listed = region_boxes(self.mask, self.config.region_min_area)[: self.config.max_regions]
                if not 1 <= args["region"] <= len(listed):
                    shown = f"regions 1-{len(listed)}" if listed else "no regions"
                    return "failed", f"select_region error: the current mask lists {shown}, not region {args['region']}"
                frame_box = listed[args["region"] - 1][0]
            session = self._session()
            snapshot = (self.mask.copy(), session.state.copy())
            if name == "add_point":
                point = convert_coords(args["point_2d"], self.width, self.height).tolist()
                prediction = session.add_click(point, args["point_type"] == "positive")
            else:
                prediction = session.set_box(convert_coords(frame_box, self.width, self.height).tolist())
            return self._accept(snapshot, self._binary(prediction), call)
        snapshot = (self.mask.copy(), None if self.session is None else self.session.state.copy())
        if name == "auto_segment":
            tool = self.provider.get(args["model"], automatic=True)
            mask = self._class_mask(tool, self._predict(tool), args["model"])
        elif name == "adapt":
            tool = self.provider.get(self.config.adapt_tool, automatic=True)
            mask = self._class_mask(tool, self._predict(tool), "adapt")
        elif name == "refine":
            if not self.mask.any():
                return "failed", "refine error: there is no mask to refine yet"
            tool = self.provider.get(self.config.refine_tool)
            mask = self._binary(self._predict(tool, mask=self.mask.astype(np.uint8)))
        elif name == "cps":
            tool = self.provider.get(self.config.cps_tool)
            refs = self._references() if self._references is not None else []
            if not refs:
                return "failed", "cps error: no reference exemplar of this class in the training split"
            mask = self._binary(self._predict(tool, references=refs))
        else:  # validate_call only lets schema names through
            return "failed", f"{name} error: not implemented"
        if self.session is not None:
            self.session.set_mask(mask)
        return self._accept(snapshot, mask, call)

    def _predict(self, tool: Any, **inputs: Any) -> Prediction:
        """`tool.predict(case)`, with a stateful tool put in this episode's own state first (module docstring)."""
        if not getattr(tool, "stateful", False):
            return tool.predict(self.case, **inputs)
        key = id(tool)
        if key in self.tool_states:
            tool.load_state_dict(self.tool_states[key])
        else:
            tool.reset()
        try:
            return tool.predict(self.case, **inputs)
        finally:
            self.tool_states[key] = tool.state_dict()

    def _session(self) -> PromptSession:
        if self.session is None:
            self.session = PromptSession(self.provider.get(self.config.prompt_tool), self.case, self.config.prompt_previous_logits)
        return self.session

    def _accept(self, snapshot: tuple[np.ndarray, Any], mask: np.ndarray, call: ToolCall) -> tuple[str, str]:
        if mask.shape != self.mask.shape:
            return "failed", f"{call.name} error: the tool returned a mask of shape {mask.shape}, expected {self.mask.shape}"
        self.undo_stack.append(snapshot)
        self.mask = mask
        regions = describe_regions(mask, self.config.max_regions, self.config.region_min_area, self.config.region_size_ranks)
        return "segment", f"The mask now covers {self._area_text()}{regions}."

    def _binary(self, prediction: Prediction) -> np.ndarray:
        if not isinstance(prediction, Prediction):
            raise TypeError(f"the tool returned {type(prediction).__name__}, not a Prediction")
        return np.asarray(prediction.mask) > 0

    def _class_mask(self, tool: Any, prediction: Prediction, label: str) -> np.ndarray:
        if not isinstance(prediction, Prediction):
            raise TypeError(f"the tool returned {type(prediction).__name__}, not a Prediction")
        index = _class_index(getattr(tool, "class_names", None) or {}, self.target.class_name)
        if index is None:
            raise ValueError(f"{label} does not segment {self.target.class_name!r}")
        return np.asarray(prediction.mask) == index

    def _area_text(self) -> str:
        area = int(np.count_nonzero(self.mask))
        return f"{100.0 * area / self.mask.size:.1f}% of the image" if area else "nothing (empty mask)"

    def _boundary(self) -> None:
        cfg = self.config.reward
        spacing = self.case.spacing
        self.trace.nsd = metrics.nsd(self.mask, self.gt, tolerance_mm=cfg.nsd_tolerance_mm, spacing=spacing)
        self.trace.hd95 = metrics.hd95(self.mask, self.gt, spacing=spacing, empty_distance=math.inf)
