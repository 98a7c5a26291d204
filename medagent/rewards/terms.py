"""Reward terms: each a pure function of an `EpisodeTrace`, with its formula in the docstring.

Notation: T = number of turns (calls other than stop_action), IoU_t / Dice_t = overlap of the mask after
turn t with the target (t = 1..T), IoU = IoU_T, Dice = Dice_T (0 when T = 0: the mask starts empty).
"""

from __future__ import annotations

import math

from medagent.rewards.trace import EpisodeTrace


def outcome(trace: EpisodeTrace, kind: str = "dice_iou") -> float:
    """Overlap of the final mask: "dice" -> Dice, "iou" -> IoU, "dice_iou" -> 0.5 Dice + 0.5 IoU. In [0, 1]."""
    if kind == "dice":
        return trace.final_dice
    if kind == "iou":
        return trace.final_iou
    if kind == "dice_iou":
        return 0.5 * trace.final_dice + 0.5 * trace.final_iou
    raise ValueError(f"outcome kind must be 'dice', 'iou' or 'dice_iou', got {kind!r}")


def improvement(trace: EpisodeTrace) -> float:
    """Sum of the IoU gains after the first turn: sum_{t=2..T} max(0, IoU_t - IoU_{t-1}). In [0, 1]."""
    ious = trace.ious
    return float(sum(max(0.0, b - a) for a, b in zip(ious[:-1], ious[1:])))


def overshoot(trace: EpisodeTrace) -> float:
    """Best-so-far IoU minus final IoU: max_t IoU_t - IoU_T (0 when T = 0). In [0, 1]; a cost."""
    ious = trace.ious
    return float(max(ious) - ious[-1]) if ious else 0.0


def turn_count(trace: EpisodeTrace) -> float:
    """T, the number of turns (every call except stop_action, invalid and failed calls included); a cost."""
    return float(len(trace.turns))


def tool_cost(trace: EpisodeTrace, costs: dict[str, float], default: float = 1.0) -> float:
    """sum over calls c of costs[c.name] (`default` for names not in `costs`); a cost.

    Invalid calls (unknown tool, bad arguments) are charged `default` too, so spamming bad calls is never free.
    """
    total = 0.0
    for call in trace.calls:
        total += costs.get(call.name, default) if call.outcome != "invalid" else default
    return float(total)


def release_format(trace: EpisodeTrace) -> float:
    """MedSAM-Agent's format score: a = (>= 1 call produced a mask), b = (last call is stop_action);
    1 if a and b, 0.5 if exactly one holds, else 0.

    The release counts box/point calls for a; here any call that produced a mask counts (auto_segment,
    cps, adapt and refine exist only in this environment).
    """
    a = trace.n_segment >= 1
    b = trace.stopped
    return 1.0 if (a and b) else 0.5 if (a or b) else 0.0


def format_score(trace: EpisodeTrace, invalid_penalty: float = 0.5) -> float:
    """max(0, release_format - invalid_penalty * n_invalid); exactly 0 once a message had no parseable call.

    With no invalid calls this is the release's format score; each unparseable/invalid call lowers it.
    """
    if trace.format_failed:
        return 0.0
    return max(0.0, release_format(trace) - invalid_penalty * trace.n_invalid)


def nsd_term(trace: EpisodeTrace) -> float:
    """Normalised surface distance of the final mask at the configured tolerance, in [0, 1] (0 if not computed)."""
    return float(trace.nsd) if trace.nsd is not None else 0.0


def hd95_fidelity(trace: EpisodeTrace, scale_mm: float = 10.0) -> float:
    """exp(-HD95 / scale_mm) of the final mask, in [0, 1]: 1 for a perfect boundary, 0 for an empty mask
    (HD95 = inf) or when HD95 was not computed."""
    if trace.hd95 is None or not math.isfinite(trace.hd95):
        return 0.0
    return float(math.exp(-max(0.0, trace.hd95) / scale_mm))
