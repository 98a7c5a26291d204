"""The episode score and the per-step rewards derived from it.

The episode score defaults to MedSAM-Agent's released formula (METHODS.md section 1):

    base    = 0.5 * IoU + 0.5 * Dice                           (of the final mask)
    if T > 1: overshoot = max_t IoU_t - IoU_T
              turn_pen  = 0.01 * T
              bonus     = 0.1 * sum_{t>=2} max(0, IoU_t - IoU_{t-1})
    else:     overshoot = turn_pen = bonus = 0
    quality = clip(base - overshoot - turn_pen + bonus, 0, 1)
    score   = 0.2 * format + 0.8 * quality

Per-step rewards are potential differences: the potential Phi(trace) is the score the episode would get if
it ended now (Phi of the empty trace is defined as 0), and r_t = Phi(trace after step t) - Phi(trace before).
They telescope, so sum_t r_t = Phi(final trace) = the episode score, whatever the terms and weights.
"""

from __future__ import annotations

from medagent.rewards import terms
from medagent.rewards.config import RewardConfig
from medagent.rewards.trace import EpisodeTrace


def medsam_agent_score(trace: EpisodeTrace, invalid_penalty: float = 0.5) -> float:
    """MedSAM-Agent's released episode reward (formula in the module docstring), in [0, 1].

    `format` is `terms.format_score` (the release's format score when there are no invalid calls).
    """
    base = terms.outcome(trace, "dice_iou")
    if len(trace.turns) > 1:
        penalty = terms.overshoot(trace) + 0.01 * terms.turn_count(trace)
        bonus = 0.1 * terms.improvement(trace)
    else:
        penalty = bonus = 0.0
    quality = min(1.0, max(0.0, base - penalty + bonus))
    return 0.2 * terms.format_score(trace, invalid_penalty) + 0.8 * quality


def reward_terms(trace: EpisodeTrace, config: RewardConfig | None = None) -> dict[str, float]:
    """Every term's raw value (before weights) plus "base" and "score"; for logging and trajectories."""
    config = config or RewardConfig()
    values = {
        "outcome": terms.outcome(trace, config.outcome),
        "improvement": terms.improvement(trace),
        "overshoot": terms.overshoot(trace),
        "turns": terms.turn_count(trace),
        "tool_cost": terms.tool_cost(trace, config.tool_costs, config.default_tool_cost),
        "format": terms.format_score(trace, config.invalid_format_penalty),
        "nsd": terms.nsd_term(trace),
        "hd95_fidelity": terms.hd95_fidelity(trace, config.hd95_scale_mm),
    }
    values["base"] = medsam_agent_score(trace, config.invalid_format_penalty) if config.base == "medsam_agent" else 0.0
    values["score"] = _combine(values, config)
    return values


def episode_score(trace: EpisodeTrace, config: RewardConfig | None = None) -> float:
    """The score of the episode if it ended with this trace (the potential Phi); 0 for an empty trace."""
    config = config or RewardConfig()
    if not trace.calls and not trace.format_failed:
        return 0.0
    return reward_terms(trace, config)["score"]


def _combine(values: dict[str, float], config: RewardConfig) -> float:
    score = (
        values["base"]
        + config.w_outcome * values["outcome"]
        + config.w_improvement * values["improvement"]
        - config.w_overshoot * values["overshoot"]
        - config.w_turn * values["turns"]
        - config.w_tool * values["tool_cost"]
        + config.w_format * values["format"]
        + config.w_nsd * values["nsd"]
        + config.w_hd95 * values["hd95_fidelity"]
    )
    if config.clip is not None:
        score = min(config.clip[1], max(config.clip[0], score))
    return float(score)


class PotentialReward:
    """Turns a growing trace into per-step rewards r_t = Phi_t - Phi_{t-1} (Phi_0 = 0).

    Usage: `reward = shaper.update(trace)` after each step; `shaper.total` equals `episode_score(trace)`
    up to float rounding, and `shaper.potential` is the current Phi.
    """

    def __init__(self, config: RewardConfig | None = None) -> None:
        self.config = config or RewardConfig()
        self.potential = 0.0
        self.total = 0.0

    def reset(self) -> None:
        self.potential = 0.0
        self.total = 0.0

    def update(self, trace: EpisodeTrace) -> float:
        """The reward for the step that produced `trace` (the difference of potentials)."""
        new = episode_score(trace, self.config)
        reward = new - self.potential
        self.potential = new
        self.total += reward
        return reward
