"""One promptable-segmenter session per episode (DESIGN.md's SAM session contract).

At every prompt the session sends the box, ALL clicks so far and the previous mask logits to the tool's
`predict(case, boxes=(1, 4), points=(P, 2), point_labels=(P,), mask_logits=...)`; a second box replaces
the first. A mask from any other tool (auto_segment, cps, adapt, refine) becomes the mask input of the next
prompt: if the tool offers `mask_to_logits(mask) -> logits`, that conversion is used; otherwise the session
drops the previous logits and the next prompt starts from box + clicks only (documented simplification:
SAM's low-resolution logits cannot be made from a mask without knowing the tool's preprocessing).
Inputs the tool does not declare in `tool.inputs` (when it declares any) are not sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medagent.data.case import Case
from medagent.errors import ToolError
from medagent.tools.base import Prediction


@dataclass
class SessionState:
    """Prompts so far, in pixels of the original image: box [x0, y0, x1, y1] inclusive, clicks [x, y]."""

    box: list[int] | None = None
    points: list[list[int]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    logits: Any = None

    def copy(self) -> "SessionState":
        return SessionState(None if self.box is None else list(self.box), [list(p) for p in self.points], list(self.labels), self.logits)


class PromptSession:
    """Box + clicks + previous logits of one episode, for one promptable tool.

    Args:
        tool: object with `predict(case, **inputs) -> Prediction` (e.g. `load_tool("sam")`).
        case: the 2D case at its original resolution.
        previous_logits: send the previous mask logits with every prompt (the environment contract); False
            sends the box and all clicks only. A mask set by another tool is sent either way.
    """

    def __init__(self, tool: Any, case: Case, previous_logits: bool = True) -> None:
        self.tool = tool
        self.case = case
        self.previous_logits = previous_logits
        self.state = SessionState()

    def set_box(self, box: list[int]) -> Prediction:
        """Replace the box (pixels, inclusive) and predict."""
        self.state.box = [int(v) for v in box]
        return self._predict()

    def add_click(self, point: list[int], positive: bool) -> Prediction:
        """Add a click (pixels) and predict with every prompt so far."""
        self.state.points.append([int(point[0]), int(point[1])])
        self.state.labels.append(1 if positive else 0)
        return self._predict()

    def set_mask(self, mask: np.ndarray) -> None:
        """Use a mask from another tool as the mask input of the next prompt (see module docstring)."""
        convert = getattr(self.tool, "mask_to_logits", None)
        if callable(convert):
            try:
                self.state.logits = convert(np.asarray(mask, dtype=bool))
                return
            except Exception:  # noqa: BLE001 - a failed conversion only loses the mask input
                pass
        self.state.logits = None

    def _predict(self) -> Prediction:
        declared = getattr(self.tool, "inputs", None) or None
        inputs: dict[str, Any] = {}
        if self.state.box is not None:
            inputs["boxes"] = np.asarray([self.state.box], dtype=np.float32)
        if self.state.points:
            inputs["points"] = np.asarray(self.state.points, dtype=np.float32)
            inputs["point_labels"] = np.asarray(self.state.labels, dtype=np.int64)
        if self.state.logits is not None:
            inputs["mask_logits"] = self.state.logits
        if declared is not None:
            inputs = {k: v for k, v in inputs.items() if k in declared}
        prediction = self.tool.predict(self.case, **inputs)
        if not isinstance(prediction, Prediction):
            raise ToolError(f"promptable tool returned {type(prediction).__name__}, not a Prediction")
        self.state.logits = prediction.logits if self.previous_logits else None
        return prediction
