"""Fake tools the evaluation tests share (no weights, exact and cheap)."""

from __future__ import annotations

import numpy as np

from medagent.tools.base import Prediction, Tool, ToolKind


class SquareClicks(Tool):
    """A fake promptable tool: the box filled, plus a 5 x 5 square at each positive click, minus one at each negative."""

    name = "square-clicks"
    kind = ToolKind.PROMPTABLE
    inputs = frozenset({"boxes", "points", "point_labels"})

    def predict_2d(self, case, boxes=None, points=None, point_labels=None):
        mask = np.zeros(case.shape, np.uint8)
        for x0, y0, x1, y1 in np.asarray(boxes if boxes is not None else np.zeros((0, 4))).astype(int):
            mask[y0:y1 + 1, x0:x1 + 1] = 1
        for (x, y), label in zip(np.asarray(points if points is not None else []).astype(int), point_labels if points is not None else []):
            mask[max(y - 2, 0):y + 3, max(x - 2, 0):x + 3] = int(label)
        return Prediction(mask=mask)
