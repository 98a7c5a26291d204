"""The `sam2` tool on Meta's `sam2` package (installed by `make test` through the `[test]` extra): a random-init
stand-in of the smallest architecture (sam2.1_hiera_t, built by the package's own hydra builder) saved in the
official checkpoint layout ({"model": state_dict}) in tmp_path, loaded through the registry. Checks: prompts,
sessions (box + every click + previous logits), the embedding cache, the decoding against the package's own
`SAM2ImagePredictor`, MedSAM2's 512 px preset, safe loading, the CLI and the env. No real SAM 2.1 / MedSAM2
weights are used (none can be downloaded here): quality is not tested, only the plumbing."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from medagent.data.case import Case
from medagent.errors import CheckpointError, ToolError, ToolUnavailable
from medagent.tools import load_tool
from medagent.tools.sam.preprocess import image_to_rgb01, prepare_input
from medagent.tools.sam2 import SAM2_PRESETS, Sam2Session, Sam2Tool, build_sam2_model, detect_config

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              # SAM2ImagePredictor's transforms use torch.jit.script, which torch 2.14 warns about
              pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")]

BOX = [40, 30, 89, 59]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Official-layout stand-ins: a SAM 2.1 hiera-tiny file (1024 px) and the same weights named as MedSAM2's."""
    root = tmp_path_factory.mktemp("sam2")
    torch.manual_seed(0)
    model = build_sam2_model("sam2.1_hiera_t", 1024)
    state = model.state_dict()
    paths = {"sam2.1": root / "sam2.1_hiera_tiny.pt", "medsam2": root / "MedSAM2_latest.pt"}
    for path in paths.values():
        torch.save({"model": state}, path)
    return paths, state


@pytest.fixture(scope="module")
def tool(checkpoints) -> Sam2Tool:
    return load_tool("sam2", checkpoint=str(checkpoints[0]["sam2.1"]))


@pytest.fixture(scope="module")
def medsam2(checkpoints) -> Sam2Tool:
    return load_tool("sam2", checkpoint=str(checkpoints[0]["medsam2"]))


@pytest.fixture(scope="module")
def case() -> Case:
    rng = np.random.default_rng(0)
    image = 0.2 + 0.05 * rng.standard_normal((96, 128))
    image[30:60, 40:90] += 0.6
    return Case(image=image[None].astype(np.float32), modality="MR", id="rect")


def test_loads_the_official_layout_with_the_checkpoints_preprocessing(tool, medsam2, checkpoints):
    assert tool.config_name == "sam2.1_hiera_t" and detect_config(checkpoints[1]) == "sam2.1_hiera_t"
    assert tool.preprocessing == SAM2_PRESETS["sam2"] and tool.model.image_size == 1024 and tool.low_res_size == 256
    pre = tool.preprocessing
    assert (pre.image_size, pre.keep_aspect_ratio, pre.pixel_mean, pre.pixel_std) == (
        1024, False, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    # "medsam2" in the file name: MedSAM2's 512 px preset, the same weights (the architecture has no size-bound keys)
    assert medsam2.preprocessing.name == "medsam2" and medsam2.model.image_size == 512 and medsam2.low_res_size == 128
    for key, value in tool.model.state_dict().items():
        assert torch.equal(value, checkpoints[1][key]), key


def test_box_click_previous_logits_and_cache(tool, case):
    tool.clear_cache()
    first = tool.predict(case, boxes=BOX)
    assert first.mask.shape == case.shape and first.mask.dtype == np.uint8
    assert first.probabilities.shape == (2, *case.shape) and first.logits.shape == (1, 256, 256)
    assert first.extras["cache_hit"] is False and first.extras["config"] == "sam2.1_hiera_t"
    click = tool.predict(case, boxes=BOX, points=[[60, 45]], point_labels=[0])
    assert click.extras["cache_hit"] is True and tool.cache.hits == 1 and tool.cache.misses == 1
    assert not np.allclose(click.logits, first.logits)  # the click changes the answer
    with_logits = tool.predict(case, boxes=BOX, points=[[60, 45]], point_labels=[0], mask_logits=first.logits)
    assert not np.allclose(with_logits.logits, click.logits)  # ... and so do the previous logits
    two = tool.predict(case, boxes=[BOX, [0, 0, 20, 20]])
    assert two.extras["masks"].shape == (2, *case.shape) and two.logits.shape == (2, 256, 256)
    assert np.allclose(two.logits[0], first.logits[0], atol=1e-4)  # batched boxes decode independently
    multi = tool.predict(case, points=[[60, 45]], multimask=True)
    assert multi.extras["multimask_masks"].shape == (1, 3, *case.shape)
    with pytest.raises(ToolError, match="sam2 needs at least one prompt"):
        tool.predict(case)
    with pytest.raises(ToolError, match="outside"):
        tool.predict(case, points=[[500, 5]])
    with pytest.raises(ToolError, match="mask_logits must be"):
        tool.predict(case, boxes=BOX, mask_logits=np.zeros((64, 64), np.float32))


def test_session_sends_box_every_click_and_the_previous_logits(tool, case, monkeypatch):
    seen = []
    real = tool.predict

    def spy(c, **inputs):
        seen.append(inputs)
        return real(c, **inputs)

    monkeypatch.setattr(tool, "predict", spy)
    session = tool.session(case)
    assert isinstance(session, Sam2Session)
    a = session.set_box(BOX)
    b = session.add_point((60, 45), positive=False)
    c = session.add_point((50, 35), positive=True)
    assert seen[0]["mask_logits"] is None and np.array_equal(seen[1]["mask_logits"], a.logits[:1])
    assert np.array_equal(seen[2]["mask_logits"], b.logits[:1])
    assert seen[2]["points"].tolist() == [[60, 45], [50, 35]] and seen[2]["point_labels"].tolist() == [0, 1]
    assert all(np.array_equal(s["boxes"], np.asarray(BOX, np.float32)) for s in seen)
    assert all(p.extras["cache_hit"] for p in (a, b, c)) and c.mask.shape == case.shape
    assert session.undo() is b
    no_logits = tool.session(case, use_previous_logits=False)
    no_logits.set_box(BOX)
    no_logits.add_point((60, 45), positive=False)
    assert seen[-1]["mask_logits"] is None
    with pytest.raises(Exception, match="2D"):
        tool.session(Case(image=np.zeros((1, 4, 8, 8), np.float32), spacing=(1.0, 1.0, 1.0)))


def test_decoding_matches_the_packages_own_image_predictor(tool, case):
    """Preprocessing and decoding (box as corner points before the clicks, high-res features, post-processing,
    clamped low-res logits) against `sam2.SAM2ImagePredictor` at 1024 px on our cached embedding (one encoder
    pass less); the encoder features themselves in the next test, at 256 px."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    rgb = image_to_rgb01(case.image, case.modality, tool.predictor.intensity)
    hwc = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    reference = SAM2ImagePredictor(tool.model)
    ours = prepare_input(rgb, tool.preprocessing)
    assert torch.allclose(ours, reference._transforms(hwc)[None], atol=1e-5)  # S x S resize, ImageNet mean/std
    emb, _ = tool.predictor.embed(case.image, case.modality)
    reference._features = {"image_embed": emb.image_embed, "high_res_feats": list(emb.high_res)}
    reference._orig_hw, reference._is_image_set = [case.shape], True
    first = tool.predict(case, boxes=BOX)
    points, labels = np.array([[60, 45], [50, 35]], np.float32), np.array([0, 1])
    pred = tool.predict(case, boxes=BOX, points=points, point_labels=labels, mask_logits=first.logits)
    masks, scores, low = reference.predict(point_coords=points, point_labels=labels, box=np.asarray(BOX, np.float32),
                                           mask_input=first.logits, multimask_output=False, return_logits=True)
    assert np.allclose(pred.logits, low, atol=1e-4) and np.allclose(pred.extras["scores"], scores, atol=1e-5)
    assert np.allclose(pred.extras["masks"][0], masks[0] > 0)


def test_embedding_matches_the_packages_own_image_predictor(checkpoints, case):
    """`SAM2ImagePredictor.set_image` on the same weights built for 256 px (`image_size=256`; that class
    hard-codes the 1024 px feature sizes, so they are set for 256 here)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    small = load_tool("sam2", checkpoint=str(checkpoints[0]["sam2.1"]), image_size=256)
    assert small.model.image_size == 256 and small.low_res_size == 64 and small.preprocessing.name == "sam2"
    emb, _ = small.predictor.embed(case.image, case.modality)
    reference = SAM2ImagePredictor(small.model)
    reference._bb_feat_sizes = [(64, 64), (32, 32), (16, 16)]
    rgb = image_to_rgb01(case.image, case.modality, small.predictor.intensity)
    reference.set_image(np.ascontiguousarray(rgb.transpose(1, 2, 0)))
    assert torch.allclose(emb.image_embed, reference._features["image_embed"], atol=1e-4)
    for ours, theirs in zip(emb.high_res, reference._features["high_res_feats"]):
        assert torch.allclose(ours, theirs, atol=1e-4)


def test_medsam2_preset_runs_at_512(medsam2, case):
    pred = medsam2.predict(case, boxes=BOX)
    assert pred.mask.shape == case.shape and pred.logits.shape == (1, 128, 128)
    assert pred.extras["preprocessing"] == "medsam2"
    assert medsam2.mask_to_logits(pred.mask).shape == (1, 128, 128)


def test_architecture_detection_from_shapes():
    """Tiny / small / base+ / large and SAM 2.1 vs 2.0 from the trunk's width, depth and 2.1's extra key (synthetic
    state dicts: only the tiny one is built in these tests)."""
    def fake(width, blocks, v21=True):
        state = {"image_encoder.trunk.patch_embed.proj.weight": torch.zeros(width, 3, 7, 7)}
        state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(blocks)})
        if v21:
            state["no_obj_embed_spatial"] = torch.zeros(1, 64)
        return state

    assert [detect_config(fake(w, b)) for w, b in ((96, 12), (96, 16), (112, 24), (144, 48))] == [
        "sam2.1_hiera_t", "sam2.1_hiera_s", "sam2.1_hiera_b+", "sam2.1_hiera_l"]
    assert detect_config(fake(96, 12, v21=False)) == "sam2_hiera_t"
    with pytest.raises(CheckpointError, match="width 64 with 12 blocks"):
        detect_config(fake(64, 12))
    with pytest.raises(CheckpointError, match="not a SAM 2 state dict"):
        detect_config({"image_encoder.trunk.pos_embed": torch.zeros(1)})


def test_no_checkpoint_is_a_clear_error():
    with pytest.raises(ToolUnavailable, match="ships no weights") as info:
        load_tool("sam2")
    assert "SAM 2.1" in str(info.value) and "MedSAM2" in str(info.value) and "checkpoint" in str(info.value)


def test_missing_package_names_the_extra(checkpoints, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sam2", None)  # `import sam2` now raises ImportError
    with pytest.raises(ToolUnavailable, match=r"medagent\[sam2\]"):
        load_tool("sam2", checkpoint=str(checkpoints[0]["sam2.1"]))


def test_unsafe_or_wrong_checkpoints_are_refused(checkpoints, tmp_path):
    state = checkpoints[1]
    evil = tmp_path / "evil.pt"
    torch.save({"model": state, "args": argparse.Namespace(lr=1e-4)}, evil)  # an object weights_only will not load
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_tool("sam2", checkpoint=str(evil))
    no_model = tmp_path / "no_model.pt"
    torch.save({"weights": [1, 2, 3]}, no_model)
    with pytest.raises(CheckpointError, match="'model' state dict"):
        load_tool("sam2", checkpoint=str(no_model))
    partial = tmp_path / "partial.pt"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("sam_mask_decoder.iou_prediction_head")}}, partial)
    with pytest.raises(CheckpointError, match="missing keys: sam_mask_decoder.iou_prediction_head"):
        load_tool("sam2", checkpoint=str(partial))
    with pytest.raises(CheckpointError, match="no such SAM 2 checkpoint"):
        load_tool("sam2", checkpoint=str(tmp_path / "absent.pt"))


def test_save_pretrained_round_trip(medsam2, tmp_path):
    folder = medsam2.save_pretrained(tmp_path / "medsam2-folder")
    again = load_tool("sam2", checkpoint=str(folder))
    assert again.preprocessing == medsam2.preprocessing and again.config_name == medsam2.config_name
    assert all(torch.equal(v, medsam2.model.state_dict()[k]) for k, v in again.model.state_dict().items())


def test_cli_tool_run_and_env_play_with_sam2(checkpoints, tmp_path, case):
    from medagent.cli import app

    image = (np.clip(case.image[0], 0, 1) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "img.png")
    runner = CliRunner()
    out = tmp_path / "mask.npy"
    ckpt = str(checkpoints[0]["medsam2"])
    result = runner.invoke(app, ["tool", "run", "sam2", "--checkpoint", ckpt, "--image", str(tmp_path / "img.png"),
                                 "--box", *map(str, BOX), "--point", "60", "45", "--out", str(out)])
    assert result.exit_code == 0, result.stdout
    assert np.load(out).squeeze().shape == case.shape
    result = runner.invoke(app, ["tool", "run", "sam2", "--image", str(tmp_path / "img.png"), "--box", *map(str, BOX)])
    assert result.exit_code == 2 and "ships no weights" in result.stdout

    result = runner.invoke(app, ["env", "play", "--dataset", "phantom", "--agent", "oracle-box", "--episodes", "1",
                                 "--image-size", "64", "--prompt-tool", "sam2", "--prompt-checkpoint", ckpt])
    assert result.exit_code == 0, result.stdout
    assert "add_bbox > stop_action" in result.stdout
    result = runner.invoke(app, ["env", "play", "--dataset", "phantom", "--episodes", "1", "--prompt-tool", "sam2"])
    assert result.exit_code == 2 and "ships no weights" in result.stdout


def test_env_prompt_session_uses_sam2(medsam2):
    from medagent.envs import InteractiveSegEnv, format_call
    from medagent.envs.testing import make_dataset

    env = InteractiveSegEnv(dataset=make_dataset(), tools={"sam2": medsam2}, prompt_tool="sam2", image_size=32,
                            min_area=9, load_tools=False)
    env.reset(seed=0)
    env.step(format_call("add_bbox", {"bbox_2d": [100, 100, 600, 600]}))
    _, _, _, _, info = env.step(format_call("add_point", {"point_2d": [300, 300], "point_type": "positive"}))
    assert info["outcomes"] == ["segment"], info
    session = env.unwrapped.episode.session
    assert session.tool is medsam2 and session.state.logits.shape == (1, 128, 128) and len(session.state.points) == 1
