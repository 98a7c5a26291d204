"""`RewardConfig`: which reward terms make the episode score, and their weights."""

from __future__ import annotations

from dataclasses import dataclass, field

from medagent.errors import ConfigError

#: Default relative cost of each tool for the per-tool cost term (prompts are cheap, models cost more).
DEFAULT_TOOL_COSTS: dict[str, float] = {
    "add_bbox": 0.0,
    "add_point": 0.0,
    "stop_action": 0.0,
    "undo": 0.0,
    "auto_segment": 0.5,
    "refine": 1.0,
    "cps": 1.0,
    "adapt": 1.0,
}

BASES = ("medsam_agent", "none")
OUTCOMES = ("dice", "iou", "dice_iou")


@dataclass
class RewardConfig:
    """How the episode score is composed.

    score = base (MedSAM-Agent's released formula, or 0 with base="none")
            + w_outcome * outcome + w_improvement * improvement - w_overshoot * overshoot
            - w_turn * turns - w_tool * tool_cost + w_format * format + w_nsd * nsd + w_hd95 * hd95_fidelity

    Every weight defaults to 0, so the default score is exactly the released formula (see
    `medagent.rewards.terms` for each term's formula).

    Attributes:
        base: "medsam_agent" (default) or "none".
        outcome: which overlap the outcome term uses: "dice", "iou" or "dice_iou" (0.5 Dice + 0.5 IoU).
        w_outcome: weight of the outcome term.
        w_improvement: weight of the improvement term (sum of positive IoU steps after the first turn).
        w_overshoot: weight of the overshoot cost (best-so-far IoU minus final IoU).
        w_turn: cost per turn (every call except stop_action).
        w_tool: weight of the per-tool cost (sum of `tool_costs` over the calls made).
        tool_costs: tool name -> cost of one call; tools not listed cost `default_tool_cost`.
        default_tool_cost: cost of a call to a tool missing from `tool_costs` (also unknown names).
        w_format: weight of the format term.
        invalid_format_penalty: how much each invalid call removes from the format term (floored at 0).
        w_nsd: weight of the boundary term NSD (normalised surface distance at `nsd_tolerance_mm`).
        nsd_tolerance_mm: NSD tolerance in mm.
        w_hd95: weight of the boundary term exp(-HD95 / hd95_scale_mm).
        hd95_scale_mm: length scale of the HD95 fidelity, mm.
        clip: clip the final score to this (low, high) range, or None.
    """

    base: str = "medsam_agent"
    outcome: str = "dice_iou"
    w_outcome: float = 0.0
    w_improvement: float = 0.0
    w_overshoot: float = 0.0
    w_turn: float = 0.0
    w_tool: float = 0.0
    tool_costs: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TOOL_COSTS))
    default_tool_cost: float = 1.0
    w_format: float = 0.0
    invalid_format_penalty: float = 0.5
    w_nsd: float = 0.0
    nsd_tolerance_mm: float = 1.0
    w_hd95: float = 0.0
    hd95_scale_mm: float = 10.0
    clip: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.base not in BASES:
            raise ConfigError(f"RewardConfig.base must be one of {BASES}, got {self.base!r}")
        if self.outcome not in OUTCOMES:
            raise ConfigError(f"RewardConfig.outcome must be one of {OUTCOMES}, got {self.outcome!r}")
        if self.nsd_tolerance_mm <= 0 or self.hd95_scale_mm <= 0:
            raise ConfigError("RewardConfig.nsd_tolerance_mm and hd95_scale_mm must be > 0 mm")
        if self.clip is not None:
            lo, hi = (float(v) for v in self.clip)
            if lo > hi:
                raise ConfigError(f"RewardConfig.clip must be (low, high) with low <= high, got {self.clip}")
            self.clip = (lo, hi)

    @property
    def needs_boundary(self) -> bool:
        """True when a boundary term (NSD / HD95) has a non-zero weight, so the env must compute them."""
        return self.w_nsd != 0.0 or self.w_hd95 != 0.0
