"""InteractiveSegEnv: parsing, coordinates, transitions, rewards, spaces, vector envs, TRL adapter."""

from __future__ import annotations


import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import medagent.envs as E
from medagent.envs import convert_coords, format_call, parse_message, validate_call
from medagent.envs.testing import make_case, make_dataset, make_dict_env, make_env
from medagent.envs.targets import list_targets


def box_message(env) -> str:
    """A tight box around the episode's target, in the 0-999 frame."""
    ep = env.unwrapped.episode
    ys, xs = np.nonzero(ep.gt)
    box = convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], ep.width, ep.height, to="frame").tolist()
    return format_call("add_bbox", {"bbox_2d": box})


# -- coordinates and parsing -----------------------------------------------------------------------------
def test_coords_both_ways():
    assert convert_coords([0, 0, 999, 999], 64, 48).tolist() == [0, 0, 63, 47]
    assert convert_coords([500, 500], 64, 48).tolist() == [32, 24]  # 500*63/999 = 31.53 -> 32; 500*47/999 = 23.52 -> 24
    assert convert_coords([63, 47], 64, 48, to="frame").tolist() == [999, 999]
    px = np.arange(64)
    back = convert_coords(convert_coords(np.stack([px, px % 48], 1), 64, 48, to="frame"), 64, 48)
    assert np.array_equal(back, np.stack([px, px % 48], 1))  # pixels survive the round trip
    with pytest.raises(ValueError):
        convert_coords([1, 2, 3], 10, 10)


def test_parse_several_calls_and_errors():
    text = ("thinking... " + format_call("add_bbox", {"bbox_2d": [1, 2, 300, 400]})
            + "<tool_call>{not json}</tool_call>"
            + format_call("add_point", {"point_2d": [5, 6], "point_type": "negative"})
            + '<tool_call>{"name": "add_point", "arguments": {"point_2d": [5, 6.0], "point_type": "positive"}}')
    parsed = parse_message(text)
    assert parsed.parseable
    kinds = [type(c).__name__ for c in parsed.calls]
    assert kinds == ["ToolCall", "InvalidCall", "ToolCall", "ToolCall"]
    assert parsed.calls[0].arguments == {"bbox_2d": [1, 2, 300, 400]}
    assert parsed.calls[3].arguments["point_2d"] == [5, 6]  # integral floats accepted, unclosed last block read
    assert not parse_message("no call here").parseable
    assert not parse_message("<tool_call>[1, 2]</tool_call>").parseable
    assert not parse_message(None).parseable
    # arguments given as a JSON string are decoded
    call = parse_message('<tool_call>{"name": "auto_segment", "arguments": "{\\"model\\": \\"unet\\"}"}</tool_call>').calls[0]
    assert call.arguments == {"model": "unet"}


@pytest.mark.parametrize("name,args,fragment", [
    ("paint", {}, "unknown tool"),
    ("add_bbox", {}, "missing"),
    ("add_bbox", {"bbox_2d": [1, 2, 3]}, "list of 4"),
    ("add_bbox", {"bbox_2d": [1, 2, 3, 1000]}, "0-999"),
    ("add_bbox", {"bbox_2d": [9, 2, 3, 4]}, "x1 <= x2"),
    ("add_bbox", {"bbox_2d": [True, 2, 3, 4]}, "integers"),
    ("add_bbox", {"bbox_2d": "1,2,3,4"}, "list of 4"),
    ("add_point", {"point_2d": [1, 2], "point_type": "maybe"}, "point_type"),
    ("add_point", {"point_2d": [1.5, 2], "point_type": "positive"}, "integers"),
    ("auto_segment", {"model": "resnet"}, "model"),
    ("stop_action", {"now": True}, "unexpected"),
    ("undo", [1], "JSON object"),
])
def test_validate_rejects_bad_calls(name, args, fragment):
    call = validate_call(name, args)
    assert isinstance(call, E.InvalidCall) and fragment in call.error


def test_dict_action_path_uses_same_validation():
    call = E.dict_action_to_call({"tool": E.TOOL_NAMES.index("add_point"), "point_2d": np.array([3, 4]), "point_type": 1,
                                  "bbox_2d": np.zeros(4), "model": 0})
    assert call == validate_call("add_point", {"point_2d": [3, 4], "point_type": "negative"}, raw=call.raw)
    bad = E.dict_action_to_call({"tool": E.TOOL_NAMES.index("add_bbox"), "bbox_2d": np.array([9, 9, 1, 1])})
    assert isinstance(bad, E.InvalidCall)
    assert isinstance(E.dict_action_to_call({"tool": 99}), E.InvalidCall)


def test_instance_targets_have_ordered_instructions():
    targets = list_targets(make_case(0), min_area=9)
    texts = [t.instruction for t in targets]
    assert [t.class_name for t in targets] == ["lesion", "lesion", "square", "disk"]
    assert "nearest the top-left corner (1 of 2" in texts[0] and "2nd nearest" in texts[1]
    assert {t.instance for t in targets[:2]} == {1, 2} and targets[2].instance == 0
    assert list_targets(make_case(0), min_area=10_000) == []


# -- transitions and rewards ---------------------------------------------------------------------------
def test_box_then_stop_scores_and_rewards_sum():
    env = make_env()
    obs, info = env.reset(seed=3, options={"case_index": 0, "target_index": 2})  # the square
    assert obs["turn"] == 0 and obs["instruction"] == "Segment the square."
    assert np.array_equal(obs["image"], env._base_image)  # raw image before any mask
    obs, r1, term, trunc, info = env.step(box_message(env))
    assert info["iou"] == pytest.approx(1.0) and not term and not trunc and obs["turn"] == 1
    assert not np.array_equal(obs["image"], env._base_image)  # the overlay is shown
    obs, r2, term, trunc, info = env.step(format_call("stop_action"))
    assert term and not trunc
    assert info["episode_score"] == pytest.approx(1.0)  # 0.2 * 1 + 0.8 * 1
    assert r1 + r2 == pytest.approx(info["episode_score"])
    assert r2 == pytest.approx(0.1)  # format 0.5 -> 1
    assert "add_bbox" in obs["history"] and "Segmentation finished" in obs["history"]
    frame = env.render()
    assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
    # stepping after the end is harmless
    assert env.step(format_call("stop_action"))[1] == 0.0


def test_rewards_sum_to_episode_score_on_random_valid_play():
    env = make_env(max_turns=6)
    rng = np.random.default_rng(0)
    for episode in range(8):
        env.reset(seed=episode)
        total, done = 0.0, False
        while not done:
            name = str(rng.choice(["add_bbox", "add_point", "auto_segment", "refine", "undo", "cps", "adapt", "stop_action"]))
            args = {"add_bbox": {"bbox_2d": sorted(rng.integers(0, 1000, 2).tolist()) * 2},
                    "add_point": {"point_2d": rng.integers(0, 1000, 2).tolist(), "point_type": str(rng.choice(["positive", "negative"]))},
                    "auto_segment": {"model": str(rng.choice(E.AUTO_MODELS))}}.get(name, {})
            if name == "add_bbox":
                b = args["bbox_2d"]
                args["bbox_2d"] = [b[0], b[0], b[1], b[1]]
            _, reward, term, trunc, info = env.step(format_call(name, args) * int(rng.integers(1, 3)))
            total += reward
            done = term or trunc
        assert total == pytest.approx(info["episode_score"], abs=1e-9)
        assert info["turns"] <= 6


def test_termination_and_truncation_rules():
    env = make_env(max_turns=3, max_invalid=2)
    env.reset(seed=0)
    _, reward, term, trunc, info = env.step("I think the answer is a lesion.")
    assert term and not trunc and info["reward_terms"]["format"] == 0.0
    env.reset(seed=0)
    _, _, term, _, info = env.step(format_call("paint") + format_call("add_bbox", {"bbox_2d": [1]}))
    assert term and info["outcomes"] == ["invalid", "invalid"]
    env.reset(seed=0)
    _, _, term, trunc, info = env.step(format_call("add_point", {"point_2d": [500, 500], "point_type": "positive"}) * 5)
    assert trunc and not term and info["turns"] == 3 and len(info["outcomes"]) == 3  # extra calls dropped
    env.reset(seed=0)
    msg = format_call("auto_segment", {"model": "unet"}) + format_call("stop_action") + format_call("undo")
    _, _, term, _, info = env.step(msg)
    assert term and info["outcomes"] == ["segment", "stop"]


def test_tools_undo_refine_and_error_observations():
    env = make_env(max_turns=10, max_invalid=5)
    env.reset(seed=0, options={"case_index": 1, "target_index": 3})  # the disk
    _, _, _, _, info = env.step(format_call("auto_segment", {"model": "unet"}))
    auto_iou = info["iou"]
    assert info["outcomes"] == ["segment"] and 0.5 < auto_iou < 1.0  # the eroded disk of the right class
    _, _, _, _, info = env.step(format_call("refine"))
    assert info["iou"] > auto_iou  # dilation undoes the erosion
    _, _, _, _, info = env.step(format_call("undo"))
    assert info["outcomes"] == ["undo"] and info["iou"] == pytest.approx(auto_iou)
    for name, args, text in [("auto_segment", {"model": "ifunet"}, "boom inside the tool"),
                             ("auto_segment", {"model": "allukan"}, "unavailable"),
                             ("adapt", {}, "unavailable")]:
        _, _, term, _, info = env.step(format_call(name, args))
        assert info["outcomes"] == ["failed"] and text in info["results"][0] and not term
        assert info["iou"] == pytest.approx(auto_iou)  # the mask is unchanged
    _, _, _, _, info = env.step(format_call("cps"))
    assert info["outcomes"] == ["segment"] and info["iou"] > 0.5  # a reference disk of another subject


def test_sam_session_keeps_box_and_all_clicks():
    env = make_env(max_turns=10)
    env.reset(seed=0, options={"case_index": 0, "target_index": 2})
    env.step(format_call("add_bbox", {"bbox_2d": [0, 0, 100, 100]}))
    env.step(format_call("add_point", {"point_2d": [800, 800], "point_type": "positive"}))
    env.step(format_call("add_point", {"point_2d": [900, 100], "point_type": "positive"}))
    box, points, labels = env.episode.prompts()
    assert box is not None and len(points) == 2 and labels == [1, 1]
    x, y = convert_coords([800, 800], 64, 48).tolist()
    assert env.episode.mask[y, x]  # the click added a disc
    env.step(format_call("add_bbox", {"bbox_2d": [500, 500, 600, 600]}))  # replaces the box, keeps clicks
    box2, points2, _ = env.episode.prompts()
    assert box2 != box and len(points2) == 2
    assert not env.episode.mask[0, 0]  # the old box is gone


# -- spaces, checker, registration, vector envs ----------------------------------------------------------------
def test_check_env_and_registration():
    check_env(make_env(render_mode="rgb_array"), skip_render_check=False)
    check_env(make_dict_env())
    env = gym.make(E.ENV_ID, dataset=make_dataset(), tools=E.testing.fake_tools(), image_size=32, load_tools=False, min_area=9)
    obs, _ = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    env = gym.make(E.DICT_ENV_ID, dataset=make_dataset(), tools=E.testing.fake_tools(), image_size=32, load_tools=False, min_area=9)
    env.reset(seed=1)
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs)


def test_reset_is_reproducible_and_config_seed():
    a, b = make_env(seed=7), make_env(seed=7)
    oa, ia = a.reset()
    ob, ib = b.reset()
    assert ia["case_id"] == ib["case_id"] and ia["instance"] == ib["instance"] and np.array_equal(oa["image"], ob["image"])
    ids = {make_env().reset(seed=s)[1]["case_id"] + make_env().reset(seed=s)[1]["class_name"] for s in range(6)}
    assert len(ids) > 1  # different seeds give different episodes


def test_sync_and_async_vector_envs_agree():
    fns = [lambda: make_env(), lambda: make_env()]
    sync = gym.vector.SyncVectorEnv(fns)
    asyn = gym.vector.AsyncVectorEnv(fns, shared_memory=False)
    try:
        so, _ = sync.reset(seed=[5, 6])
        ao, _ = asyn.reset(seed=[5, 6])
        actions = (format_call("add_bbox", {"bbox_2d": [100, 100, 600, 700]}), format_call("auto_segment", {"model": "unet"}))
        for step in range(2):
            s = sync.step(actions)
            a = asyn.step(actions)
            for key in ("image", "turn"):
                assert np.array_equal(s[0][key], a[0][key])
            assert tuple(s[0]["history"]) == tuple(a[0]["history"]) and tuple(s[0]["instruction"]) == tuple(ao["instruction"])
            assert np.allclose(s[1], a[1])
        assert tuple(so["instruction"]) == tuple(ao["instruction"])
    finally:
        sync.close()
        asyn.close()


_FRAGMENTS = ["<tool_call>", "</tool_call>", '{"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, 3, 4]}}',
              '{"name": "add_point", "arguments": {"point_2d": [999, 0], "point_type": "positive"}}',
              '{"name": "stop_action", "arguments": {}}', '{"name": "undo"}', '{"name": "refine"}', '{"name": ',
              '"arguments": null', "[[[[[[", "\x00\u202e\ud7ff", "🩻" * 50, '{"name": "auto_segment", "arguments": {"model": 3}}',
              "x" * 3000, '{"name": "cps", "arguments": {"k": 1e309}}', '"bbox_2d": [-1, 2, 3, NaN]']


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=st.lists(st.one_of(st.sampled_from(_FRAGMENTS), st.text(max_size=40)), max_size=12))
def test_random_and_adversarial_messages_never_crash(parts):
    env = _HYPOTHESIS_ENV
    obs, _ = env.reset(seed=len(parts))
    for _ in range(3):
        obs, reward, term, trunc, info = env.step("".join(parts))
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward)
        if term or trunc:
            break


_HYPOTHESIS_ENV = make_env(max_turns=4)


def test_cps_references_share_the_target_grid():
    """References of another shape are never handed to few-shot tools."""
    import numpy as np

    from medagent.data import Case
    from medagent.data.dataset import CaseList, Dataset, DatasetInfo
    from medagent.envs.testing import fake_tools, make_case

    base = make_case(0)
    odd = make_case(1)
    wide = Case(image=np.pad(odd.image, ((0, 0), (0, 0), (0, 8))), label=np.pad(odd.label, ((0, 0), (0, 8))),
                modality=odd.modality, class_names=odd.class_names, id="wide", subject="wide")
    same = make_case(2)
    info = DatasetInfo("mixed", "mixed sizes", "MR", dict(base.class_names), "procedural", "CC0", "tests")
    dataset = Dataset(info, {"train": CaseList.from_cases([wide, same]), "test": CaseList.from_cases([base])})
    from medagent.envs import InteractiveSegEnv

    env = InteractiveSegEnv(dataset=dataset, split="test", tools=fake_tools(), load_tools=False, image_size=32,
                            min_area=9, n_references=2)
    env.reset(seed=0)
    refs = env._references(env.episode.case, env.episode.target)
    assert refs and all(r.shape == base.shape for r in refs)


def test_prompt_session_can_leave_previous_logits_out():
    import numpy as np

    from medagent.envs.session import PromptSession
    from medagent.envs.testing import make_case
    from medagent.tools.base import Prediction

    class Recorder:
        inputs = frozenset({"boxes", "points", "point_labels", "mask_logits"})

        def __init__(self):
            self.calls = []

        def predict(self, case, **inputs):
            self.calls.append(sorted(inputs))
            return Prediction(mask=np.zeros(case.shape, np.uint8), logits=np.zeros((1, 8, 8), np.float32))

    case = make_case(0)
    for previous, expected in ((True, True), (False, False)):
        tool = Recorder()
        session = PromptSession(tool, case, previous_logits=previous)
        session.set_box([1, 1, 10, 10])
        session.add_click([5, 5], True)
        assert ("mask_logits" in tool.calls[1]) is expected
        assert "points" in tool.calls[1] and "boxes" in tool.calls[1]
