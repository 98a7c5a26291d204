"""Expert and baseline agents on the toy dataset with fake tools."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.agents import (
    AutoAgent, ExpertAgent, MeanBoxAgent, OracleBoxAgent, RandomAgent, interior_point, largest_error_regions, make_agent,
    run_episode,
)
from medagent.envs import parse_message
from medagent.envs.testing import fake_tools, make_dataset, make_env


def test_error_regions_and_interior_point():
    gt = np.zeros((20, 20), bool)
    gt[2:12, 2:12] = True
    mask = np.zeros_like(gt)
    mask[2:12, 2:6] = True          # misses the right part of the square (FN 10x6)
    mask[15:18, 15:18] = True       # a small false positive (3x3)
    regions = largest_error_regions(mask, gt)
    assert [(a, p) for a, p, _ in regions] == [(60, True), (9, False)]
    assert interior_point(regions[0][2]) in {(8, 6), (8, 7), (9, 6), (9, 7)}  # centre of columns 6..11, rows 2..11
    assert interior_point(regions[1][2]) == (16, 16)


def test_expert_prompting_keeps_only_improving_actions():
    env = make_env(max_turns=5)
    agent = ExpertAgent(tools=(), tau=0.01, click_only_ratio=0.0)
    for seed in range(6):
        result = run_episode(env, agent, seed=seed)
        actions = [s.action for s in result.steps]
        assert all(parse_message(a).parseable for a in actions)
        assert '"add_bbox"' in actions[0] and '"stop_action"' in actions[-1]
        ious = [0.0] + [s.info["iou"] for s in result.steps[:-1]]
        assert all(b >= a + 0.01 for a, b in zip(ious[:-1], ious[1:]))  # every kept action gained >= tau
        assert result.steps[-1].terminated and not result.steps[-1].truncated  # ends with stop, not truncation
        assert result.total_reward == pytest.approx(result.score)


def test_expert_click_only_and_reproducible():
    env = make_env(max_turns=5)
    agent = ExpertAgent(tools=(), click_only_ratio=1.0)
    a = run_episode(env, agent, seed=3)
    b = run_episode(env, agent, seed=3)
    assert '"add_point"' in a.steps[0].action and '"positive"' in a.steps[0].action
    assert [s.action for s in a.steps] == [s.action for s in b.steps]


def test_expert_uses_a_tool_when_prompting_is_unavailable_or_worse():
    tools = fake_tools()
    tools["sam"] = None  # no promptable segmenter: only tools can help
    from medagent.envs import InteractiveSegEnv

    env = InteractiveSegEnv(dataset=make_dataset(), tools=tools, image_size=32, load_tools=False, min_area=9)
    result = run_episode(env, ExpertAgent(), seed=1)
    assert '"auto_segment"' in result.steps[0].action and '"unet"' in result.steps[0].action
    assert result.dice > 0.5


def test_expert_beats_oracle_box_and_baselines_are_ordered():
    env = make_env(max_turns=5)
    scores = {}
    for name in ("expert", "oracle-box", "mean-box", "auto", "random"):
        results = [run_episode(env, make_agent(name), seed=s) for s in range(10)]
        scores[name] = float(np.mean([r.dice for r in results]))
    assert scores["expert"] >= scores["oracle-box"] + 0.02
    assert scores["oracle-box"] > scores["mean-box"] > scores["random"]
    assert ExpertAgent.uses_ground_truth and OracleBoxAgent.uses_ground_truth
    assert not (MeanBoxAgent.uses_ground_truth or AutoAgent.uses_ground_truth or RandomAgent.uses_ground_truth)


def test_mean_box_uses_training_split_only():
    env = make_env()
    env.reset(seed=0, options={"case_index": 0, "target_index": 2})
    agent = MeanBoxAgent()
    box = agent.mean_box(env, "square")
    # squares in the toy train cases start at x 6 + 3i mod 7 and y 4 + i mod 5 (i = 0..5), 18 x 16 pixels
    xs0 = [6 + (3 * i) % 7 for i in range(6)]
    ys0 = [4 + i % 5 for i in range(6)]
    expect_x0 = np.mean([np.floor(x * 999 / 63 + 0.5) for x in xs0])
    expect_y0 = np.mean([np.floor(y * 999 / 47 + 0.5) for y in ys0])
    assert box[0] == int(np.rint(expect_x0)) and box[1] == int(np.rint(expect_y0))
    assert agent.mean_box(env, "no such class") is None


def test_random_agent_is_reproducible_and_safe():
    env = make_env(max_turns=6)
    a = [s.action for s in run_episode(env, RandomAgent(p_stop=0.1), seed=11).steps]
    b = [s.action for s in run_episode(env, RandomAgent(p_stop=0.1), seed=11).steps]
    assert a == b and len(a) >= 1
    with pytest.raises(ValueError):
        make_agent("genius")
    with pytest.raises(ValueError):
        AutoAgent(model="resnet")


def test_episode_fork_leaves_the_episode_untouched():
    from medagent.envs import format_call, validate_call

    env = make_env(max_turns=8)
    env.reset(seed=0, options={"case_index": 0, "target_index": 2})
    env.step(format_call("add_bbox", {"bbox_2d": [100, 100, 400, 400]}))
    env.step(format_call("add_point", {"point_2d": [300, 300], "point_type": "negative"}))
    ep = env.episode
    before = (ep.mask.copy(), ep.session.state.copy(), len(ep.trace.calls), ep.score, list(ep.history), len(ep.undo_stack))
    fork = ep.fork()
    for call in [validate_call("undo", {}), validate_call("add_point", {"point_2d": [900, 900], "point_type": "positive"}),
                 validate_call("undo", {}), validate_call("undo", {}), validate_call("auto_segment", {"model": "unet"})]:
        fork.run_call(call)
    assert np.array_equal(ep.mask, before[0]) and ep.session.state == before[1]
    assert (len(ep.trace.calls), ep.score, ep.history, len(ep.undo_stack)) == before[2:]
    _, _, _, _, info = env.step(format_call("undo"))  # the real undo still restores the box-only state
    assert info["outcomes"] == ["undo"] and len(env.episode.session.state.points) == 0


@pytest.mark.parametrize("name", ["ranked-regions", "expert-regions"])
def test_region_agents_segment_choose_once_then_stop(name):
    env = make_env(max_turns=5)
    result = run_episode(env, make_agent(name), seed=0)
    records = env.unwrapped.episode.trace.calls
    names = [r.name for r in records]
    assert names[0] == "auto_segment" and names[-1] == "stop_action" and len(names) in (2, 3)
    assert all(r.outcome != "invalid" for r in records) and result.turns == len(names)
