"""Reward formulas on hand-computed cases, and the potential-difference property."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medagent.errors import ConfigError
from medagent.rewards import CallRecord, EpisodeTrace, PotentialReward, RewardConfig, episode_score, reward_terms
from medagent.rewards import terms


def seg(name: str, iou: float, dice: float) -> CallRecord:
    return CallRecord(name, "segment", iou=iou, dice=dice)


STOP = CallRecord("stop_action", "stop")


def test_release_formula_one_box_then_stop():
    # T = 1: no penalties; format 1 -> 0.2 + 0.8 * (0.5*0.6 + 0.5*0.75) = 0.2 + 0.8*0.675 = 0.74
    trace = EpisodeTrace([seg("add_bbox", 0.6, 0.75), STOP])
    assert episode_score(trace) == pytest.approx(0.74)


def test_release_formula_three_turns_with_overshoot():
    # IoU 0.5 -> 0.7 -> 0.6, Dice final 0.75, then stop. T = 3.
    # base 0.675; overshoot 0.1; turn_pen 0.03; bonus 0.1*0.2 = 0.02 -> quality 0.565 -> 0.2 + 0.452 = 0.652
    trace = EpisodeTrace([seg("add_bbox", 0.5, 0.6667), seg("add_point", 0.7, 0.8235), seg("add_point", 0.6, 0.75), STOP])
    assert episode_score(trace) == pytest.approx(0.652)
    values = reward_terms(trace)
    assert values["overshoot"] == pytest.approx(0.1)
    assert values["improvement"] == pytest.approx(0.2)
    assert values["turns"] == 3


def test_release_formula_format_cases_and_clip():
    # No stop: format 0.5 -> 0.1 + 0.8 * 0.675
    assert episode_score(EpisodeTrace([seg("add_bbox", 0.6, 0.75)])) == pytest.approx(0.1 + 0.8 * 0.675)
    # Stop only: format 0.5, quality 0
    assert episode_score(EpisodeTrace([STOP])) == pytest.approx(0.1)
    # quality 1 - 0.02 + 0.1*0.8 = 1.06 is clipped to 1 -> score 1
    trace = EpisodeTrace([seg("add_bbox", 0.2, 0.33), seg("add_point", 1.0, 1.0), STOP])
    assert episode_score(trace) == pytest.approx(1.0)
    # An unparseable message: format 0 whatever came before
    trace = EpisodeTrace([seg("add_bbox", 0.6, 0.75)], format_failed=True)
    assert episode_score(trace) == pytest.approx(0.8 * 0.675)
    # One invalid call costs 0.5 of the format term (and is a turn: T = 2, turn_pen 0.02)
    trace = EpisodeTrace([CallRecord("paint", "invalid"), seg("add_bbox", 0.6, 0.75), STOP])
    # ious [0, 0.6]: overshoot 0, bonus 0.06 -> quality 0.675 - 0.02 + 0.06 = 0.715
    assert episode_score(trace) == pytest.approx(0.2 * 0.5 + 0.8 * 0.715)


def test_empty_trace_has_zero_potential():
    assert episode_score(EpisodeTrace()) == 0.0


def test_potential_rewards_sum_to_episode_score():
    rng = np.random.default_rng(0)
    outcomes = ["segment", "segment", "undo", "invalid", "failed"]
    for _ in range(50):
        config = RewardConfig(w_turn=float(rng.uniform(0, 0.1)), w_tool=float(rng.uniform(0, 0.1)),
                              w_improvement=float(rng.uniform(0, 1)), w_overshoot=float(rng.uniform(0, 1)))
        trace, shaper, rewards = EpisodeTrace(), PotentialReward(config), []
        for _ in range(int(rng.integers(1, 7))):
            iou = float(rng.uniform())
            trace.calls.append(CallRecord(str(rng.choice(["add_bbox", "refine", "cps"])), str(rng.choice(outcomes)),
                                          iou=iou, dice=2 * iou / (1 + iou)))
            rewards.append(shaper.update(trace))
        if rng.uniform() < 0.5:
            trace.calls.append(STOP)
            rewards.append(shaper.update(trace))
        assert sum(rewards) == pytest.approx(episode_score(trace, config), abs=1e-12)
        assert shaper.total == pytest.approx(shaper.potential, abs=1e-12)


def test_weighted_terms_compose():
    trace = EpisodeTrace([seg("add_bbox", 0.5, 0.6), seg("refine", 0.8, 0.9), STOP], nsd=0.7, hd95=5.0)
    config = RewardConfig(base="none", outcome="dice", w_outcome=1.0)
    assert episode_score(trace, config) == pytest.approx(0.9)
    config = RewardConfig(base="none", w_tool=1.0, tool_costs={"refine": 2.0}, default_tool_cost=0.25)
    # add_bbox -> default 0.25, refine 2.0, stop_action -> default 0.25
    assert episode_score(trace, config) == pytest.approx(-2.5)
    config = RewardConfig(base="none", w_turn=0.1, w_format=1.0)
    assert episode_score(trace, config) == pytest.approx(-0.2 + 1.0)
    config = RewardConfig(base="none", w_nsd=1.0, w_hd95=1.0, hd95_scale_mm=5.0)
    assert episode_score(trace, config) == pytest.approx(0.7 + math.exp(-1.0))
    assert config.needs_boundary and not RewardConfig().needs_boundary
    config = RewardConfig(base="none", w_outcome=3.0, clip=(0.0, 1.0))
    assert episode_score(trace, config) == 1.0


def test_term_edge_cases():
    assert terms.hd95_fidelity(EpisodeTrace(hd95=math.inf)) == 0.0
    assert terms.hd95_fidelity(EpisodeTrace(hd95=0.0)) == 1.0
    assert terms.overshoot(EpisodeTrace()) == 0.0
    assert terms.outcome(EpisodeTrace([seg("a", 0.25, 0.4)]), "iou") == 0.25
    with pytest.raises(ValueError):
        CallRecord("x", "exploded")
    with pytest.raises(ConfigError):
        RewardConfig(outcome="f1")
    with pytest.raises(ConfigError):
        RewardConfig(clip=(1.0, 0.0))
