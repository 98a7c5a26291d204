"""The one conversation contract: tool declarations, the TRL adapter driving the env's own transitions,
tool state per episode, and package-level registration."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import numpy as np
import pytest

import medagent.envs as E
from medagent.envs import format_call
from medagent.envs.testing import FakeAdaptive, fake_tools, make_dataset, make_env
from medagent.envs.trl_adapter import SegToolEnvironment, tool_method_names

ENV_KWARGS = {"image_size": 32, "load_tools": False, "min_area": 9}


def make_adapter(**overrides):
    return SegToolEnvironment(dataset=make_dataset(), tools=fake_tools(), **{**ENV_KWARGS, **overrides})


def test_schema_of_the_adapter_methods_is_the_declared_schema():
    from transformers.utils import get_json_schema

    adapter = make_adapter()
    # exactly how TRL's GRPOTrainer discovers an environment's tools
    methods = [getattr(adapter, name) for name, _ in inspect.getmembers(type(adapter), predicate=inspect.isfunction)
               if name not in ("reset", "get_reward") and not name.startswith("_")]
    assert [m.__name__ for m in methods] == list(E.TOOL_NAMES) == tool_method_names()
    assert [get_json_schema(m) for m in methods] == E.tool_schema() == make_env().tool_schema()
    names = {s["function"]["name"]: s["function"] for s in E.tool_schema()}
    assert names["add_point"]["parameters"]["properties"]["point_type"]["enum"] == ["positive", "negative"]
    assert names["auto_segment"]["parameters"]["required"] == ["model"]


def test_validator_follows_the_declarations():
    for spec in E.TOOL_SPECS:
        args = {}
        good = {"coords": lambda a: [a.low] * a.length, "integer": lambda a: a.low, "choice": lambda a: a.choices[0]}
        wrong = {"coords": lambda a: [a.high + 1] * a.length, "integer": lambda a: a.high + 1, "choice": lambda a: "nope"}
        for arg in spec.args:
            args[arg.name] = good[arg.kind](arg)
        assert isinstance(E.validate_call(spec.name, args), E.ToolCall), spec.name
        for arg in spec.args:
            bad = dict(args)
            bad[arg.name] = wrong[arg.kind](arg)
            assert isinstance(E.validate_call(spec.name, bad), E.InvalidCall), (spec.name, arg.name)
        assert isinstance(E.validate_call(spec.name, {**args, "extra": 1}), E.InvalidCall)


def _box(env) -> list[int]:
    ep = env.unwrapped.episode
    ys, xs = np.nonzero(ep.gt)
    return E.convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], ep.width, ep.height, to="frame").tolist()


def _calls(text: str) -> list[tuple[str, dict]]:
    """The calls TRL's response parser finds in a canonical message (name, arguments as written)."""
    found = []
    for block in text.split("<tool_call>\n")[1:]:
        payload = json.loads(block.split("\n</tool_call>")[0])
        found.append((payload["name"], payload.get("arguments", {})))
    return found


SCRIPTS = {
    # box, a click out of range (invalid), a message with two calls, stop, then the final answer (no call)
    "stop": lambda box: [format_call("add_bbox", {"bbox_2d": box}),
                         format_call("add_point", {"point_2d": [5000, 1], "point_type": "positive"}),
                         format_call("add_point", {"point_2d": [box[0], box[1]], "point_type": "negative"}) + "\n"
                         + format_call("refine"),
                         format_call("stop_action"), "The segmentation is complete."],
    # a wrong argument name (invalid in the env; TRL would raise before the tool without **arguments), then text
    "format": lambda box: [format_call("add_bbox", {"box": box}), format_call("add_bbox", {"bbox_2d": box}),
                           "I am done."],
    # never stops: max turns truncate
    "truncate": lambda box: [format_call("undo"), format_call("add_bbox", {"bbox_2d": box})] * 3,
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_adapter_reward_equals_the_env_episode_score(script):
    env = make_env(max_turns=4)
    env.reset(seed=0, options={"case_index": 1, "target_index": 0})
    messages = SCRIPTS[script](_box(env))
    score = None
    for text in messages:
        _, _, terminated, truncated, info = env.step(text)
        score = info["episode_score"]
        if terminated or truncated:
            break
    adapter = make_adapter(max_turns=4)
    adapter.reset(seed=0, case_index=1, target_index=0)
    for text in messages:  # TRL's loop: run every call of a message; a message without one ends the rollout
        calls = _calls(text)
        if not calls:
            break
        for name, arguments in calls:
            getattr(adapter, name)(**arguments)
    assert adapter.get_reward() == pytest.approx(score)
    assert adapter.episode.trace.format_failed == env.episode.trace.format_failed == (script == "format")
    assert adapter.terms == env.episode.terms()


def test_adapter_answers_follow_the_conversation_rules():
    adapter = make_adapter(max_turns=3)
    first = adapter.reset(seed=0, case_index=0, target_index=2)
    assert first[0]["type"] == "image" and first[0]["image"].size == (32, 32) and first[1]["text"] == "Segment the square."
    out = adapter.add_bbox(bbox_2d=_box(adapter.env))
    assert out[0]["type"] == "image" and "mask now covers" in out[1]["text"] and "region" in out[1]["text"]
    bad = adapter.add_point(point_2d=[5000, 1], point_type="positive")
    assert bad[0]["type"] == "image" and "0-999" in bad[1]["text"]
    last = adapter.undo()  # the third call: max turns
    assert [b["type"] for b in last] == ["text"] and last[0]["text"].endswith(E.EPISODE_OVER)
    assert adapter.stop_action() == [{"type": "text", "text": "The episode is over; no more calls are run."}]
    stopped = make_adapter()
    stopped.reset(seed=0)
    assert stopped.stop_action() == [{"type": "text", "text": "Segmentation finished."}]


def _adapt_tools(tool):
    return {**fake_tools(), "mgipt": tool}


def test_stateful_tools_start_every_episode_from_the_same_state():
    from medagent.agents import ExpertAgent, run_episode

    tool = FakeAdaptive()
    env = make_env(tools=_adapt_tools(tool))
    masks = []
    for _ in range(2):  # the same episode twice: the second adapt call of an episode must not see the first's state
        env.reset(seed=0, options={"case_index": 0, "target_index": 2})
        env.step(format_call("adapt"))
        masks.append(env.episode.mask.copy())
    assert np.array_equal(masks[0], masks[1])
    # Within one episode the tool keeps adapting; a fork's calls leave it untouched.
    env.reset(seed=0, options={"case_index": 0, "target_index": 2})
    env.step(format_call("adapt"))
    fork = env.episode.fork()
    for _ in range(3):
        fork.run_call(E.validate_call("adapt", {}))
    env.step(format_call("adapt"))
    second = env.episode.mask.copy()
    env.reset(seed=0, options={"case_index": 0, "target_index": 2})
    env.step(format_call("adapt") + "\n" + format_call("adapt"))
    assert np.array_equal(env.episode.mask, second)
    # The expert tries adapt on forks: paired runs give identical results.
    a = [run_episode(env, ExpertAgent(), seed=s).score for s in (1, 2, 1)]
    assert a[0] == a[2]


def test_interleaved_episodes_over_one_shared_stateful_tool_do_not_leak():
    tool = FakeAdaptive()
    shared = _adapt_tools(tool)
    one, two = (SegToolEnvironment(dataset=make_dataset(), tools=shared, **ENV_KWARGS) for _ in range(2))
    for adapter in (one, two):
        adapter.reset(seed=0, case_index=0, target_index=2)
    one.adapt(), two.adapt(), one.adapt(), two.adapt()  # TRL runs rollouts in lockstep
    assert np.array_equal(one.episode.mask, two.episode.mask)


def test_import_medagent_registers_the_env_cheaply():
    code = ("import sys, medagent, gymnasium; "
            "assert 'medagent/InteractiveSeg-v0' in gymnasium.registry; "
            "assert 'medagent/InteractiveSegDict-v0' in gymnasium.registry; "
            "assert 'torch' not in sys.modules and 'medagent.envs' not in sys.modules; "
            "env = gymnasium.make('medagent/InteractiveSeg-v0', dataset='phantom', image_size=64, load_tools=False); "
            "obs, info = env.reset(seed=0); print(obs['instruction'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("Segment the")


def test_regions_are_listed_nearest_the_top_left_first_and_numbered():
    from medagent.envs.regions import describe_regions, region_boxes

    mask = np.zeros((100, 200), bool)
    mask[60:80, 150:190] = True  # far from the top-left
    mask[10:20, 10:30] = True    # nearest
    mask[0:2, 199:200] = True    # 2 pixels: below min_area
    boxes = region_boxes(mask, min_area=8)
    assert [b for b, _ in boxes] == [E.convert_coords([10, 10, 29, 19], 200, 100, to="frame").tolist(),
                                     E.convert_coords([150, 60, 189, 79], 200, 100, to="frame").tolist()]
    text = describe_regions(mask, max_regions=1, min_area=8)
    assert text.startswith(" in 2 regions, nearest the top-left first (the first 1): 1: [") and "2:" not in text
    assert text.endswith("] 200 px")  # areas are pixel counts: one token each below 1000
    assert [area for _, area in boxes] == [200, 800]
    assert describe_regions(mask, max_regions=0) == "" and describe_regions(np.zeros((4, 4), bool)) == ""
    ranked = describe_regions(mask, max_regions=3, min_area=8, with_size_ranks=True)
    assert ranked.endswith("] 200 px, size rank 2; 2: [" + ", ".join(map(str, boxes[1][0])) + "] 800 px, size rank 1")


def test_size_ranks_order_regions_by_area_with_ties_in_listed_order():
    from medagent.envs.regions import size_ranks

    assert size_ranks([([0, 0, 1, 1], 10), ([0, 0, 1, 1], 30), ([0, 0, 1, 1], 10)]) == [2, 1, 3]
    assert size_ranks([]) == []


def test_ranked_region_keeps_the_n_largest_and_takes_rank_k():
    from medagent.agents.regions import instruction_rank_and_count, ranked_region

    regions = [([0, 0, 9, 9], 120), ([20, 0, 29, 9], 6), ([40, 0, 49, 9], 90), ([60, 0, 69, 9], 300)]
    assert instruction_rank_and_count("Segment the lesion 2nd nearest the top-left corner (2 of 3 lesion instances).") == (2, 3)
    assert instruction_rank_and_count("Segment the liver.") == (1, 1)
    assert ranked_region(regions, 2, 3) == 3                 # the 6 px region (2) is dropped as a false positive
    assert ranked_region(regions, 3, 3) == 4
    assert ranked_region(regions, 1, 1) is None              # a single target keeps the automatic mask
    assert ranked_region(regions[:2], 3, 3) is None          # rank past what is listed
    assert ranked_region([], 1, 2) is None


def test_select_region_prompts_sam_with_the_listed_box():
    """select_region(k) gives the mask add_bbox gives with region k's listed box; an unlisted k fails cleanly."""
    from medagent.envs.regions import region_boxes

    env = make_env()
    env.reset(seed=3)
    ep = env.unwrapped.episode
    ep.mask = np.zeros_like(ep.gt)
    ep.mask[2:8, 2:8] = True
    ep.mask[20:28, 18:30] = True
    boxes = [box for box, _ in region_boxes(ep.mask, ep.config.region_min_area)]
    assert len(boxes) == 2
    by_box = ep.fork().run_call(E.validate_call("add_bbox", {"bbox_2d": boxes[1]}))
    by_number = ep.fork().run_call(E.validate_call("select_region", {"region": 2}))
    assert by_number.outcome == by_box.outcome == "segment"
    assert by_number.text == by_box.text and by_number.dice == by_box.dice
    missing = ep.fork().run_call(E.validate_call("select_region", {"region": 3}))
    assert missing.outcome == "failed" and "lists regions 1-2, not region 3" in missing.text
    assert isinstance(E.validate_call("select_region", {"region": "2"}), E.InvalidCall)
