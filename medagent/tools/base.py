"""The contract every segmentation tool follows: `Prediction`, `ToolKind` and `Tool`.

A tool takes a `Case` (2D or 3D) plus tool-specific inputs and returns a `Prediction` on the case's own
grid. 2D tools get 3D cases for free: `Tool.predict` runs them slice by slice along the coarsest axis
(or `axis=`) and reassembles the volume, so the mask lands on the input grid.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from medagent.data.case import Case
from medagent.errors import DataError, ToolError


class ToolKind(str, enum.Enum):
    """What a tool needs besides the image."""

    AUTOMATIC = "automatic"      # image only
    PROMPTABLE = "promptable"    # boxes / points / previous mask
    FEW_SHOT = "few-shot"        # reference images with masks
    ADAPTIVE = "adaptive"        # adapts itself to the image stream (test-time adaptation)
    REFINER = "refiner"          # image + a coarse mask


@dataclass
class Prediction:
    """What a tool returns.

    Attributes:
        mask: uint8 class map on the case's spatial grid, (H, W) or (D, H, W).
        probabilities: float32 (K, H, W) or (K, D, H, W) per-class probabilities, or None.
        logits: raw model output the tool can take back (e.g. SAM's low-res mask logits), or None.
        score: a scalar confidence (e.g. SAM's predicted IoU), or None.
        extras: anything else worth keeping (prompts used, chosen density, timings...).
    """

    mask: np.ndarray
    probabilities: np.ndarray | None = None
    logits: np.ndarray | None = None
    score: float | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask)
        if self.mask.dtype != np.uint8:
            self.mask = self.mask.astype(np.uint8)
        if self.probabilities is not None and tuple(self.probabilities.shape[1:]) != self.mask.shape:
            raise ToolError(f"probabilities shape {self.probabilities.shape} does not match mask {self.mask.shape}")


class Tool:
    """Base class of segmentation tools.

    Subclasses set `name`, `kind`, `inputs` (names of the keyword inputs `predict` accepts besides the
    case) and implement `predict_2d` (or override `predict` for native 3D tools). Tools with a checkpoint
    implement `save_pretrained(dir)` / `from_pretrained(ref)` on `medagent.tools.checkpoint` (config.json,
    safetensors weights; `ref` a local folder or a Hub id `hf://owner/name[@revision]`).
    """

    name: ClassVar[str] = "tool"
    kind: ClassVar[ToolKind] = ToolKind.AUTOMATIC
    inputs: ClassVar[frozenset[str]] = frozenset()
    #: True when the tool handles (C, D, H, W) itself; otherwise 3D cases run slice-wise.
    native_3d: ClassVar[bool] = False
    #: True when `predict` changes the tool (test-time adaptation); such tools offer `reset()`,
    #: `state_dict()` and `load_state_dict(state)`, and the environment resets them at every episode.
    stateful: ClassVar[bool] = False

    def predict(self, case: Case, axis: int | None = None, **inputs: Any) -> Prediction:
        """Segment `case`. 3D cases run slice-wise along `axis` (default: coarsest spacing) for 2D tools."""
        unknown = set(inputs) - set(self.inputs)
        if unknown:
            raise ToolError(f"tool {self.name!r} does not accept input(s) {sorted(unknown)}; it accepts {sorted(self.inputs) or 'none'}")
        if case.ndim == 2 or self.native_3d:
            return self.predict_2d(case, **inputs)
        return self._predict_slicewise(case, axis, **inputs)

    def predict_2d(self, case: Case, **inputs: Any) -> Prediction:
        raise NotImplementedError

    def _predict_slicewise(self, case: Case, axis: int | None, **inputs: Any) -> Prediction:
        if inputs:
            raise ToolError(
                f"tool {self.name!r}: prompts on a 3D volume are ambiguous; slice the volume first (Case.slice) "
                "and prompt the 2D slice"
            )
        axis = case.default_slice_axis() if axis is None else axis
        masks, probs = [], []
        for index in range(case.shape[axis]):
            pred = self.predict_2d(case.slice(index, axis))
            masks.append(pred.mask)
            probs.append(pred.probabilities)
        mask = np.stack(masks, axis=axis)
        probabilities = None
        if all(p is not None for p in probs):
            probabilities = np.stack(probs, axis=axis + 1)
        return Prediction(mask=mask, probabilities=probabilities, extras={"slice_axis": axis})

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write this tool's checkpoint folder (config.json + weights) and return it; ToolError if it has none."""
        raise ToolError(f"tool {self.name!r} has no weights to save")

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> "Tool":
        """Load a checkpoint: a local folder (or a file in it) or a Hub id `hf://owner/name[@revision]`."""
        raise ToolError(f"tool {cls.name!r} has no weights to load")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, kind={self.kind.value!r})"


def require_2d(case: Case, tool: str) -> None:
    """Raise a clear error when a 2D-only code path gets a volume."""
    if case.ndim != 2:
        raise DataError(f"tool {tool!r} needs a 2D case here, got spatial shape {case.shape}")
