"""The `sam` tool: prompt combinations, batched boxes, embedding cache, sessions, preprocessing geometry,
simulated prompts, checkpoint round trips (tiny folder; official vit_b .pth in one slow test) and bad inputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from medagent.data.case import Case
from medagent.errors import CheckpointError, DataError, ToolError
from medagent.tools.sam import (
    PRESETS,
    TINY_ARCH,
    EmbeddingCache,
    SamTool,
    build,
    build_sam,
    corrective_click,
    jitter_box,
    mask_box,
    simulate_clicks,
)
from medagent.tools.sam.model import count_parameters
from medagent.tools.sam.preprocess import logits_to_image, mask_to_low_res_logits, prepare_input


def _disk(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


@pytest.fixture(scope="module")
def tool() -> SamTool:
    torch.manual_seed(0)
    return SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH)


@pytest.fixture(scope="module")
def case() -> Case:
    rng = np.random.default_rng(0)
    label = _disk((90, 120), 40, 50, 18) + 2 * _disk((90, 120), 60, 95, 10)
    image = (0.2 + 0.5 * (label == 1) + 0.8 * (label == 2) + 0.05 * rng.standard_normal(label.shape))[None]
    return Case(image=image.astype(np.float32), label=label, modality="MR", id="disks")


def _fresh_case(case: Case, offset: float) -> Case:
    return case.replace(image=case.image + offset, id=f"c{offset}")


def test_tiny_config_is_small_and_consistent():
    model = build_sam(TINY_ARCH)
    n = count_parameters(model)
    assert n["mask_decoder"] < 1_000_000  # SAM's default decoder is ~4 M
    assert n["total"] * 4 < 8 * 2**20
    assert model.prompt_encoder.mask_input_size == (TINY_ARCH.low_res_size,) * 2
    with pytest.raises(Exception):
        dataclasses.replace(TINY_ARCH, prompt_embed_dim=100)  # not divisible by heads / 8


def test_prompt_combinations(tool, case):
    h, w = case.shape
    L = tool.low_res_size
    box = [30, 20, 70, 60]
    results = {
        "box": tool.predict(case, boxes=box),
        "points": tool.predict(case, points=[[50, 40], [95, 60]], point_labels=[1, 0]),
        "box+points": tool.predict(case, boxes=box, points=[[50, 40]], point_labels=[1]),
    }
    prev = results["box"].logits
    results["mask"] = tool.predict(case, mask_logits=prev)
    results["all"] = tool.predict(case, boxes=box, points=[[50, 40]], point_labels=[0], mask_logits=prev)
    for name, pred in results.items():
        assert pred.mask.shape == (h, w) and pred.mask.dtype == np.uint8, name
        assert pred.logits.shape == (1, L, L), name
        assert pred.probabilities.shape == (2, h, w)
        assert np.allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
        assert isinstance(pred.score, float)
    # prompts matter: a negative click changes the output of the same box
    assert not np.allclose(results["all"].logits, results["box"].logits)
    # point labels default to positive
    a = tool.predict(case, points=[[50, 40]])
    b = tool.predict(case, points=[[50, 40]], point_labels=[1])
    np.testing.assert_allclose(a.logits, b.logits)


def test_batched_boxes_equal_single_calls_and_union(tool, case):
    boxes = np.array([[30, 20, 70, 60], [84, 49, 106, 71], [5, 5, 40, 30]])
    batched = tool.predict(case, boxes=boxes)
    assert batched.extras["masks"].shape == (3, *case.shape)
    assert batched.extras["scores"].shape == (3,)
    assert batched.logits.shape == (3, tool.low_res_size, tool.low_res_size)
    for i, box in enumerate(boxes):
        single = tool.predict(case, boxes=box)
        np.testing.assert_allclose(batched.logits[i], single.logits[0], atol=1e-4)
    np.testing.assert_array_equal(batched.mask, batched.extras["masks"].max(0))
    # per-box previous logits go back in
    again = tool.predict(case, boxes=boxes, mask_logits=batched.logits)
    assert again.logits.shape == batched.logits.shape


def test_multimask_outputs(tool, case):
    pred = tool.predict(case, boxes=[30, 20, 70, 60], multimask=True)
    mm, sc = pred.extras["multimask_masks"], pred.extras["multimask_scores"]
    assert mm.shape == (1, 3, *case.shape) and sc.shape == (1, 3)
    best = int(np.argmax(sc[0]))
    np.testing.assert_array_equal(pred.mask, mm[0, best])
    assert pred.score == pytest.approx(float(sc[0, best]))


def test_embedding_cache_hits_and_bounds(case):
    torch.manual_seed(1)
    t = SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH)
    first = t.predict(case, boxes=[30, 20, 70, 60])
    second = t.predict(case, points=[[50, 40]])
    assert first.extras["cache_hit"] is False and second.extras["cache_hit"] is True
    assert (t.cache.hits, t.cache.misses) == (1, 1)
    other = _fresh_case(case, 0.3)
    # percentile scaling makes a shifted image identical after normalisation, but its bytes differ
    assert t.predict(other, boxes=[30, 20, 70, 60]).extras["cache_hit"] is False
    # the cached embedding gives exactly what a fresh encoder pass gives
    t.clear_cache()
    fresh = t.predict(case, points=[[50, 40]])
    np.testing.assert_allclose(fresh.logits, second.logits, atol=1e-6)
    # LRU bound: one entry -> the older image is evicted
    t.cache.max_entries = 1
    t.predict(case, boxes=[30, 20, 70, 60])
    t.predict(other, boxes=[30, 20, 70, 60])
    assert len(t.cache) == 1
    assert t.predict(case, boxes=[30, 20, 70, 60]).extras["cache_hit"] is False


def test_cache_lru_order_and_byte_bound():
    from medagent.tools.sam.predictor import ImageEmbedding, content_key

    cache = EmbeddingCache(max_entries=2, max_bytes=10**9)
    e = lambda: ImageEmbedding(torch.zeros(1, 4, 2, 2), (8, 8))  # noqa: E731
    cache.put("a", e()); cache.put("b", e())
    assert cache.get("a") is not None  # a becomes most recent
    cache.put("c", e())
    assert "b" not in cache and "a" in cache and "c" in cache
    small = EmbeddingCache(max_entries=10, max_bytes=e().nbytes * 2)
    for k in "xyz":
        small.put(k, e())
    assert len(small) == 2
    img = np.zeros((1, 4, 4), np.float32)
    assert content_key(img, "MR", None, PRESETS["sam"]) != content_key(img, "MR", None, PRESETS["medsam"])
    assert content_key(img, "MR", None, PRESETS["sam"]) != content_key(img, "CT", None, PRESETS["sam"])


def test_session_keeps_box_clicks_and_logits(tool, case):
    s = tool.session(case)
    p1 = s.set_box([30, 20, 70, 60])
    p2 = s.add_point((50, 40), positive=True)
    p3 = s.add_point((60, 55), positive=False)
    assert s.points == [(50.0, 40.0), (60.0, 55.0)] and s.labels == [1, 0]
    # the session sends box + all clicks + previous logits
    direct = tool.predict(case, boxes=[30, 20, 70, 60], points=[[50, 40], [60, 55]], point_labels=[1, 0], mask_logits=p2.logits)
    np.testing.assert_allclose(p3.logits, direct.logits, atol=1e-5)
    # a second box replaces the first; clicks stay
    p4 = s.set_box([80, 45, 110, 75])
    np.testing.assert_array_equal(s.box, [80, 45, 110, 75])
    assert len(s.points) == 2
    # another tool's mask becomes the next mask input
    other = _disk(case.shape, 60, 95, 10)
    s.set_mask(other)
    np.testing.assert_array_equal(s.mask, other)
    assert s.logits.shape == (1, tool.low_res_size, tool.low_res_size)
    p5 = s.add_point((95, 60), positive=True)
    direct = tool.predict(case, boxes=[80, 45, 110, 75], points=[[50, 40], [60, 55], [95, 60]], point_labels=[1, 0, 1],
                          mask_logits=tool.mask_to_logits(other))
    np.testing.assert_allclose(p5.logits, direct.logits, atol=1e-5)
    # undo steps back through click, mask, box
    assert s.undo() is not None and len(s.points) == 2
    assert s.undo() is p4
    assert s.undo() is p3
    # a bad prompt leaves the session unchanged
    with pytest.raises(ToolError):
        s.add_point((500, 5))
    assert len(s.points) == 2 and s.prediction is p3
    del p1


def test_session_without_previous_logits(tool, case):
    s = tool.session(case, use_previous_logits=False)
    s.set_box([30, 20, 70, 60])
    p = s.add_point((50, 40), positive=False)
    direct = tool.predict(case, boxes=[30, 20, 70, 60], points=[[50, 40]], point_labels=[0])
    np.testing.assert_allclose(p.logits, direct.logits, atol=1e-5)
    other = _disk(case.shape, 60, 95, 10)
    s.set_mask(other)  # an explicit mask is still used, once
    p2 = s.add_point((60, 30), positive=True)
    direct = tool.predict(case, boxes=[30, 20, 70, 60], points=[[50, 40], [60, 30]], point_labels=[0, 1],
                          mask_logits=tool.mask_to_logits(other))
    np.testing.assert_allclose(p2.logits, direct.logits, atol=1e-5)
    p3 = s.add_point((40, 30), positive=True)
    direct = tool.predict(case, boxes=[30, 20, 70, 60], points=[[50, 40], [60, 30], [40, 30]], point_labels=[0, 1, 1])
    np.testing.assert_allclose(p3.logits, direct.logits, atol=1e-5)


@pytest.mark.parametrize("preset", ["sam", "medsam", "tiny"])
def test_geometry_round_trip(preset):
    """A mask pushed into the low-res frame and back lands where it was (aspect kept or not)."""
    pre = PRESETS[preset]
    shape = (60, 100)
    mask = np.zeros(shape, np.uint8)
    mask[10:40, 55:90] = 1
    L = 64 if preset == "tiny" else 256
    logits = mask_to_low_res_logits(mask, pre, L)
    back = logits_to_image(torch.from_numpy(logits)[None], shape, pre)[0, 0].numpy() > 0
    inter = np.logical_and(back, mask).sum()
    assert inter / np.logical_or(back, mask).sum() > 0.85
    # box corners map with the same geometry as the image
    from medagent.tools.sam.preprocess import boxes_to_input
    bx = boxes_to_input(np.array([[55, 10, 89, 39]]), shape, pre)[0]
    rh, rw = pre.input_size(*shape)
    assert bx[0] == pytest.approx(55 * rw / 100) and bx[3] == pytest.approx(39 * rh / 60)


def test_box_mask_prior(tool, case):
    """Tiny preprocessing renders a lone box into the mask input; explicit logits take precedence."""
    from medagent.tools.sam.preprocess import box_edges_to_input, box_prior_logits

    assert tool.preprocessing.box_mask_prior and not PRESETS["sam"].box_mask_prior
    box = np.array([30, 20, 70, 60])
    edges = box_edges_to_input(box[None], case.shape, tool.preprocessing)
    prior = box_prior_logits(torch.from_numpy(edges), 256, tool.low_res_size).numpy()
    inside = prior[0, 0] > 0
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    scale = 256 / 120 / 4  # original px -> low-res cells (aspect kept: W = 120 is the long side)
    assert abs(cols[0] - 30 * scale) <= 1 and abs(cols[-1] - 71 * scale) <= 1 and abs(rows[-1] - 61 * scale) <= 1
    a = tool.predict(case, boxes=box)
    b = tool.predict(case, boxes=box, mask_logits=prior[0])
    np.testing.assert_allclose(a.logits, b.logits, atol=1e-5)
    plain = SamTool(tool.model, dataclasses.replace(tool.preprocessing, box_mask_prior=False), TINY_ARCH)
    assert not np.allclose(plain.predict(case, boxes=box).logits, a.logits)


def test_preprocessing_presets_values():
    rgb = np.random.default_rng(0).random((3, 30, 60)).astype(np.float32) * 0.5 + 0.25
    sam = prepare_input(rgb, PRESETS["sam"])
    assert sam.shape == (1, 3, 1024, 1024)
    assert torch.all(sam[..., 512:, :] == 0)  # padding below the resized 512 rows
    mean_r = float(sam[0, 0, :512].mean()) * 58.395 + 123.675
    assert mean_r == pytest.approx(0.5 * 255, rel=0.02)
    med = prepare_input(rgb, PRESETS["medsam"])
    assert med.shape == (1, 3, 1024, 1024)
    assert float(med.min()) == pytest.approx(0.0, abs=1e-6) and float(med.max()) == pytest.approx(1.0, abs=1e-6)
    assert PRESETS["medsam"].input_size(30, 60) == (1024, 1024)
    assert PRESETS["tiny"].input_size(30, 60) == (128, 256)


def test_ct_case_goes_through_intensity_window(tool):
    hu = np.full((1, 40, 40), -1000.0, np.float32)
    hu[0, 10:30, 10:30] = 40.0
    pred = tool.predict(Case(image=hu, modality="CT"), boxes=[10, 10, 29, 29])
    assert pred.mask.shape == (40, 40)


def test_bad_inputs(tool, case):
    with pytest.raises(ToolError, match="zero area"):
        tool.predict(case, boxes=[30, 20, 29, 60])  # x1 < x0: covers no pixel
    with pytest.raises(ToolError, match="zero area"):
        tool.predict(case, boxes=[[30, 20, 60, 60], [10, 50, 40, 49]])  # one bad box in a batch
    assert tool.predict(case, boxes=[30, 20, 30, 60]).mask.shape == case.shape  # a 1-px-wide column is fine
    with pytest.raises(ToolError, match="zero area"):
        tool.predict(case, boxes=[500, 500, 600, 600])  # entirely outside the image
    with pytest.warns(UserWarning, match="clipped"):
        pred = tool.predict(case, boxes=[-10, -5, 70, 200])
    np.testing.assert_array_equal(pred.extras["boxes"][0], [0, 0, 70, case.shape[0] - 1])
    with pytest.raises(ToolError, match="outside"):
        tool.predict(case, points=[[130, 10]])
    with pytest.raises(ToolError, match="point_labels"):
        tool.predict(case, points=[[10, 10]], point_labels=[1, 0])
    with pytest.raises(ToolError, match="point_labels"):
        tool.predict(case, points=[[10, 10]], point_labels=[2])
    with pytest.raises(ToolError, match="at least one prompt"):
        tool.predict(case)
    with pytest.raises(ToolError, match="mask_logits"):
        tool.predict(case, boxes=[30, 20, 70, 60], mask_logits=np.zeros((1, 32, 32)))
    with pytest.raises(ToolError, match="boxes must be"):
        tool.predict(case, boxes=[1, 2, 3])
    with pytest.raises(ToolError, match="does not accept"):
        tool.predict(case, box=[1, 2, 3, 4])
    volume = Case(image=np.zeros((1, 3, 20, 20), np.float32), spacing=(2.0, 1.0, 1.0))
    with pytest.raises(ToolError):
        tool.predict(volume, boxes=[1, 1, 10, 10])


def test_prompt_simulation():
    gt = np.zeros((50, 60), np.uint8)
    gt[10:30, 20:50] = 1
    np.testing.assert_array_equal(mask_box(gt), [20, 10, 49, 29])
    rng = np.random.default_rng(0)
    for _ in range(50):
        b = jitter_box(mask_box(gt), gt.shape, rng, fraction=0.2)
        assert 0 <= b[0] < b[2] <= 59 and 0 <= b[1] < b[3] <= 49
        assert abs(b[0] - 20) <= 0.2 * 30 + 1e-9
    # false negative region is largest -> positive click at its centre
    pred = np.zeros_like(gt)
    pred[10:30, 20:30] = 1  # misses columns 30..49
    pred[40:42, 0:3] = 1  # a small false positive
    c = corrective_click(pred, gt)
    assert c.positive and c.region_area == 20 * 20 and 10 <= c.y <= 29 and 30 <= c.x <= 49
    assert abs(c.x - 39.5) <= 1 and abs(c.y - 19.5) <= 1
    # only a false positive -> negative click inside it
    c2 = corrective_click(np.maximum(gt, _disk(gt.shape, 40, 10, 5)), gt)
    assert not c2.positive and np.hypot(c2.x - 10, c2.y - 40) <= 1.5
    assert corrective_click(gt, gt) is None
    with pytest.raises(DataError):
        mask_box(np.zeros((4, 4)))


def test_simulate_clicks_runs_iteratively(tool, case):
    gt = case.label == 1
    ep = simulate_clicks(tool.session(case), gt, n_clicks=3, box=mask_box(gt))
    assert 1 <= len(ep.predictions) <= 4 and len(ep.clicks) == len(ep.predictions) - 1
    ep2 = simulate_clicks(tool.session(case), gt, n_clicks=2)  # click-only
    assert ep2.clicks[0].positive and len(ep2.predictions) >= 1


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tiny_save_load_round_trip(tool, case, tmp_path, dtype):
    folder = tool.save_pretrained(tmp_path / "sam", dtype=dtype)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["preprocessing"]["name"] == "tiny" and meta["arch"]["image_size"] == 256
    loaded = build(checkpoint=str(folder))
    a = tool.predict(case, boxes=[30, 20, 70, 60]).logits
    b = loaded.predict(case, boxes=[30, 20, 70, 60]).logits
    np.testing.assert_allclose(a, b, atol=1e-5 if dtype == "float32" else 5e-2 * (np.abs(a).max() + 1))
    assert build(checkpoint=str(folder / "model.safetensors")).preprocessing == tool.preprocessing


def test_bad_checkpoints(tool, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tool.save_pretrained(tmp_path / "sam")
    state = load_file(str(folder / "model.safetensors"))
    state.pop("mask_decoder.iou_token.weight")
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing keys: mask_decoder.iou_token.weight.*unexpected keys: extra.weight"):
        build(checkpoint=str(folder))
    with pytest.raises(CheckpointError, match="does not exist"):
        build(checkpoint=str(tmp_path / "nope.pth"))
    # an official-style .pth that is not SAM
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "sam_vit_b.pth")
    with pytest.raises(CheckpointError, match="patch_embed"):
        build(checkpoint=str(tmp_path / "sam_vit_b.pth"))
    # a .pth needing arbitrary unpickling is refused
    torch.save({"x": object()}, tmp_path / "pickle.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        build(checkpoint=str(tmp_path / "pickle.pth"))
    # a vit_b-shaped patch embedding with vit_l's depth: wrong architecture for the named type
    torch.save({"image_encoder.patch_embed.proj.weight": torch.zeros(1024, 3, 16, 16)}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="missing keys"):
        build(checkpoint=str(tmp_path / "x.pth"), model_type="vit_l")


@pytest.mark.slow
def test_official_vit_b_checkpoint_round_trip(tmp_path):
    """Random vit_b saved as .pth (also under a MedSAM name) loads through the tool and matches
    segment_anything's own SamPredictor on the same weights."""
    import os

    from segment_anything import SamPredictor, sam_model_registry

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    ref_model = sam_model_registry["vit_b"]()
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(ref_model.state_dict(), path)
    os.link(path, tmp_path / "medsam_vit_b.pth")

    tool = build(checkpoint=str(path))
    assert tool.model_type == "vit_b" and tool.preprocessing.name == "sam"
    medsam = build(checkpoint=str(tmp_path / "medsam_vit_b.pth"))
    assert medsam.preprocessing.name == "medsam"
    forced = build(checkpoint=str(path), checkpoint_type="medsam")
    assert forced.preprocessing.name == "medsam"
    for k, v in ref_model.state_dict().items():
        assert torch.equal(medsam.model.state_dict()[k], v), k
    del medsam, forced

    # a 768 x 1024 image: no resize (longest side 1024), but padding. One encoder pass only (vit_b is
    # slow on a CPU): the input tensor is compared with segment_anything's own transform + preprocess,
    # and the decoder output with SamPredictor fed the embedding the tool cached.
    rng = np.random.default_rng(0)
    img = np.kron(rng.random((1, 96, 128)).astype(np.float32), np.ones((1, 8, 8), np.float32))
    case = Case(image=img, modality="photo")
    from medagent.tools.sam.preprocess import image_to_rgb01, prepare_input

    rgb01 = image_to_rgb01(case.image, case.modality)
    rgb = (rgb01 * 255).round().astype(np.uint8).transpose(1, 2, 0)
    ref = SamPredictor(ref_model)
    ref_in = ref_model.preprocess(torch.as_tensor(ref.transform.apply_image(rgb)).permute(2, 0, 1)[None].float())
    ours_in = prepare_input(rgb01, tool.preprocessing)
    assert ours_in.shape == ref_in.shape == (1, 3, 1024, 1024)
    assert float((ours_in - ref_in).abs().max()) < 0.02  # uint8 rounding only

    box = np.array([300, 200, 700, 500])
    ours = tool.predict(case, boxes=box)
    emb, hit = tool.predictor.embed(case.image, case.modality)
    assert hit
    ref.features, ref.original_size, ref.input_size, ref.is_image_set = emb.features, (768, 1024), (768, 1024), True
    _, scores, low = ref.predict(box=box, multimask_output=False)
    np.testing.assert_allclose(ours.logits, low, atol=1e-3, rtol=1e-3)
    assert ours.score == pytest.approx(float(scores[0]), abs=1e-4)
    assert tool.predict(case, points=[[400, 300]]).extras["cache_hit"] is True


def test_shipped_tiny_weights_match_manifest_and_segment():
    """The shipped tiny SAM: hashes and size caps from manifest.json, loads through the registry, and
    segments a bright disk from its box (a random model does not)."""
    import hashlib

    from medagent.tools import load_tool
    from medagent.tools.sam.tool import SHIPPED_WEIGHTS

    if not (SHIPPED_WEIGHTS / "model.safetensors").is_file():
        pytest.skip("no shipped sam-tiny weights in this checkout")
    entry = json.loads((SHIPPED_WEIGHTS.parent / "manifest.json").read_text())["sam-tiny"]
    assert "model.safetensors" in entry["files"] and "config.json" in entry["files"]
    for fname, sha in entry["files"].items():
        data = (SHIPPED_WEIGHTS / fname).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, fname
        assert len(data) <= 8 * 2**20, fname
    tool = load_tool("sam")
    assert tool.preprocessing.name == "tiny"
    gt = _disk((80, 80), 40, 36, 14).astype(bool)
    rng = np.random.default_rng(3)
    image = (0.2 + 0.6 * gt + 0.05 * rng.standard_normal(gt.shape)).astype(np.float32)[None]
    pred = tool.predict(Case(image=image, modality="microscopy"), boxes=mask_box(gt)).mask > 0
    assert 2 * np.logical_and(pred, gt).sum() / (pred.sum() + gt.sum()) > 0.8
