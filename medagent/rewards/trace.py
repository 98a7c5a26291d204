"""What the reward functions read: the record of an episode so far (`EpisodeTrace`, one `CallRecord` per call).

The environment appends one `CallRecord` per tool call (one call = one turn) with the IoU / Dice of the
current mask after that call. Reward functions are pure functions of the trace, so the same trace gives the
same score in the env, in trajectory files and in tests with hand-written numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: How a call ended. "segment": a tool produced a new mask (add_bbox, add_point, auto_segment, cps, adapt,
#: refine); "undo": the previous mask came back; "stop": stop_action; "invalid": the call could not be
#: parsed or validated (unknown tool, bad arguments); "failed": a well-formed call whose tool raised or
#: is unavailable.
CALL_OUTCOMES = ("segment", "undo", "stop", "invalid", "failed")


@dataclass(frozen=True)
class CallRecord:
    """One tool call and the state after it.

    Attributes:
        name: tool name as written by the policy ("" when it could not be read).
        outcome: one of `CALL_OUTCOMES`.
        iou: IoU of the current mask with the target after this call, in [0, 1].
        dice: Dice of the current mask with the target after this call, in [0, 1].
    """

    name: str
    outcome: str
    iou: float = 0.0
    dice: float = 0.0

    def __post_init__(self) -> None:
        if self.outcome not in CALL_OUTCOMES:
            raise ValueError(f"CallRecord.outcome must be one of {CALL_OUTCOMES}, got {self.outcome!r}")


@dataclass
class EpisodeTrace:
    """The calls of one episode so far.

    Attributes:
        calls: every call in order, stop included.
        format_failed: True once a message had no parseable `<tool_call>` (the episode ends with format 0).
        nsd: normalised surface distance of the current mask, in [0, 1], or None when not computed.
        hd95: 95th-percentile Hausdorff distance of the current mask in mm (inf for an empty mask), or None.
    """

    calls: list[CallRecord] = field(default_factory=list)
    format_failed: bool = False
    nsd: float | None = None
    hd95: float | None = None

    # -- views used by the reward terms ---------------------------------------------------------------
    @property
    def turns(self) -> list[CallRecord]:
        """The calls that count as turns of the score: every call except stop_action."""
        return [c for c in self.calls if c.outcome != "stop"]

    @property
    def ious(self) -> list[float]:
        """IoU_t after each turn t = 1..T."""
        return [c.iou for c in self.turns]

    @property
    def dices(self) -> list[float]:
        """Dice_t after each turn t = 1..T."""
        return [c.dice for c in self.turns]

    @property
    def final_iou(self) -> float:
        """IoU of the last mask (0 before any turn: the mask starts empty)."""
        turns = self.turns
        return turns[-1].iou if turns else 0.0

    @property
    def final_dice(self) -> float:
        """Dice of the last mask (0 before any turn)."""
        turns = self.turns
        return turns[-1].dice if turns else 0.0

    @property
    def stopped(self) -> bool:
        """True when the last call was stop_action."""
        return bool(self.calls) and self.calls[-1].outcome == "stop"

    @property
    def n_segment(self) -> int:
        """Number of calls that produced a mask."""
        return sum(c.outcome == "segment" for c in self.calls)

    @property
    def n_invalid(self) -> int:
        """Number of calls that could not be parsed or validated."""
        return sum(c.outcome == "invalid" for c in self.calls)
