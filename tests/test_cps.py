"""Few-shot tools `cps`, `dense-points`, `single-point`: the density choice on a constructed case whose best
density is known, the sparsification operators, matching, bad references, full predictions with an
untrained tiny SAM, reference loading from files, and the registry builders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medagent.data.case import Case
from medagent.errors import ConfigError, ToolError
from medagent.tools.cps import CpsConfig, CpsTool, DensePointsTool, SinglePointTool, build, iou, load_references
from medagent.tools.fewshot.augment import AugmentConfig, augmented_view
from medagent.tools.fewshot.backbones import TransformersBackbone
from medagent.tools.fewshot.prompter import GroupResult
from medagent.tools.fewshot.sparsify import n_kept, sparsify

R = 3  # disk radius: 29 pixels each


def _disks(centres, shape=(64, 64), r=R) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    m = np.zeros(shape, bool)
    for cy, cx in centres:
        m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    return m.astype(np.uint8)


def _case(centres, cid: str) -> Case:
    mask = _disks(centres)
    image = np.where(mask > 0, 0.9, 0.1).astype(np.float32)[None]
    return Case(image=image, label=mask, modality="unknown", id=cid, subject=cid)


class DiskPrompter:
    """A stand-in for SAM with a known answer: each prompt set paints a radius-R disk at every positive point."""

    def __init__(self) -> None:
        self.calls = 0

    def segment_groups(self, case, groups, multimask=False):
        self.calls += 1
        h, w = case.shape
        masks = np.stack([_disks([(p[1], p[0]) for p, l in zip(g.points, g.labels) if l == 1], (h, w)) for g in groups])
        return GroupResult(masks, np.ones(len(groups), np.float32), None)


FOUR = [[(12, 12), (12, 50), (50, 12), (50, 50)], [(10, 20), (16, 46), (46, 14), (52, 44)], [(20, 10), (14, 40), (40, 22), (48, 52)]]
# 116 dense points (4 x 29); m = round(d * 116): 1, 2, 4, 35, 116 -> only d = 0.035 puts one point per disk
DENSITIES = (0.005, 0.02, 0.035, 0.3, 1.0)


def _known_tool(**overrides) -> CpsTool:
    cfg = CpsConfig(backbone="intensity", match_size=64, densities=DENSITIES, sparsify="region", refine=False, **overrides)
    return CpsTool(config=cfg, prompter=DiskPrompter())


def test_density_choice_finds_the_known_best_density_leave_one_out():
    tool = _known_tool()
    refs = [_case(c, f"r{i}") for i, c in enumerate(FOUR)]
    target = _case([(20, 20), (20, 44), (44, 20), (44, 44)], "t")
    pred = tool.predict(target, references=refs)
    scores = pred.extras["density_scores"]
    assert pred.extras["density"] == pytest.approx(0.035)
    assert set(scores) == set(DENSITIES)
    assert scores[0.035] == pytest.approx(1.0) and max(v for d, v in scores.items() if d != 0.035) < 0.8
    assert pred.extras["n_points"] == 4 and pred.extras["points"].shape == (4, 2)
    assert iou(pred.mask, target.label) == pytest.approx(1.0)
    assert pred.extras["n_dense"] == 116


def test_density_choice_one_shot_uses_augmented_views():
    tool = _known_tool(n_augment=2, augment=AugmentConfig(rotate_deg=10, scale=(1.0, 1.0), translate=0.05))
    ref = _case(FOUR[0], "r0")
    views = tool.scoring_views(tool._support(ref, [ref], None))
    assert len(views) == 2 and all(v[0].id.endswith("_aug") for v in views)
    pred = tool.predict(_case(FOUR[1], "t"), references=[ref])
    assert pred.extras["density"] == pytest.approx(0.035)
    assert pred.extras["shots"] == 1


def test_a_fixed_density_skips_the_choice():
    tool = _known_tool(density=1.0)
    pred = tool.predict(_case(FOUR[1], "t"), references=[_case(FOUR[0], "r")])
    assert pred.extras["density_scores"] == {} and pred.extras["n_points"] == 116
    assert iou(pred.mask, _case(FOUR[1], "t").label) < 0.5  # dense points over-segment with this prompter


@pytest.mark.parametrize("method", ["topk", "spacing", "cluster", "region"])
def test_sparsify_keeps_the_right_number_of_distinct_points(method):
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (50, 2))
    scores = rng.uniform(0, 1, 50)
    regions = (pts[:, 0] > 50).astype(int)
    for density in (0.02, 0.1, 0.5, 1.0):
        idx = sparsify(pts, scores, density, method, regions)
        assert len(idx) == n_kept(50, density) == len(set(idx.tolist()))
        assert np.all(np.diff(scores[idx]) <= 0)  # best score first
    assert sparsify(pts, scores, 0.1, "topk").tolist() == np.argsort(-scores)[:5].tolist()
    idx = sparsify(pts, scores, 0.04, "region", regions)  # 2 points, 2 regions: one each
    assert sorted(regions[idx].tolist()) == [0, 1]
    with pytest.raises(ConfigError):
        sparsify(pts, scores, 0.0, method)


def test_spacing_spreads_points():
    pts = np.array([[0, 0], [1, 0], [2, 0], [100, 0], [101, 0]], float)
    idx = sparsify(pts, np.ones(5), 0.4, "spacing")
    assert abs(pts[idx[0], 0] - pts[idx[1], 0]) >= 98


def test_augmented_view_keeps_a_nonempty_mask_and_grid():
    ref = _case(FOUR[0], "r")
    view, mask = augmented_view(ref, ref.label, np.random.default_rng(1))
    assert view.shape == ref.shape and mask.shape == ref.shape and mask.any() and view.label is not None
    assert np.isfinite(view.image).all()


# -- bad references ---------------------------------------------------------------------------------
@pytest.fixture()
def known_tool():
    return _known_tool()


def test_reference_of_another_size_is_a_clear_error(known_tool):
    small = Case(image=np.zeros((1, 32, 32), np.float32), label=np.ones((32, 32), np.uint8), id="small")
    with pytest.raises(ToolError, match=r"reference 0 \('small'\) has spatial size \(32, 32\).*\(64, 64\)"):
        known_tool.predict(_case(FOUR[0], "t"), references=[small])


def test_reference_with_other_channels_is_a_clear_error(known_tool):
    ref = _case(FOUR[0], "rgb")
    ref = ref.replace(image=np.repeat(ref.image, 3, axis=0))
    with pytest.raises(ToolError, match="3 channel"):
        known_tool.predict(_case(FOUR[1], "t"), references=[ref])


def test_empty_reference_mask_is_a_clear_error(known_tool):
    ref = _case(FOUR[0], "r")
    with pytest.raises(ToolError, match="empty mask"):
        known_tool.predict(_case(FOUR[1], "t"), references=[ref.replace(label=np.zeros((64, 64), np.uint8))])
    with pytest.raises(ToolError, match="empty mask"):
        known_tool.predict(_case(FOUR[1], "t"), references=[ref], reference_masks=[np.zeros((64, 64), np.uint8)])


def test_other_bad_references(known_tool):
    t = _case(FOUR[1], "t")
    ref = _case(FOUR[0], "r")
    with pytest.raises(ToolError, match="needs references"):
        known_tool.predict(t, references=[])
    with pytest.raises(ToolError, match="binary"):
        known_tool.predict(t, references=[ref.replace(label=ref.label * 2)])
    with pytest.raises(ToolError, match="no label"):
        known_tool.predict(t, references=[ref.replace(label=None)])
    with pytest.raises(ToolError, match="reference_masks"):
        known_tool.predict(t, references=[ref], reference_masks=[ref.label, ref.label])
    with pytest.raises(ToolError, match="does not accept"):
        known_tool.predict(t, references=[ref], box=[0, 0, 3, 3])


def test_config_rejects_bad_values():
    with pytest.raises(ConfigError):
        CpsConfig(densities=(0.0, 0.5))
    with pytest.raises(ConfigError):
        CpsConfig(sparsify="random")
    with pytest.raises(ConfigError):
        CpsConfig(prompt_mode="all")
    with pytest.raises(ConfigError, match="unknown few-shot option"):
        CpsConfig.from_kwargs(dataset="x", no_such_option=1)
    assert CpsConfig.from_kwargs(dataset="ignored", match_size=32).match_size == 32


# -- with an untrained tiny SAM ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def sam():
    from medagent.tools.sam import PRESETS, TINY_ARCH, SamTool, build_sam

    torch.manual_seed(0)
    return SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH)


def _blob_case(cid: str, centre: tuple[int, int], shape=(48, 56), seed=0) -> Case:
    rng = np.random.default_rng(seed)
    mask = _disks([centre], shape, r=7)
    image = (0.2 + 0.6 * mask + 0.05 * rng.standard_normal(shape)).astype(np.float32)[None]
    return Case(image=image, label=mask, modality="MR", id=cid, subject=cid)


@pytest.mark.parametrize("prompt_mode,use_box,negatives", [("joint", False, 0), ("region", True, 1)])
def test_cps_full_predict_with_untrained_tiny_sam(sam, prompt_mode, use_box, negatives):
    refs = [_blob_case("a", (20, 20), seed=1), _blob_case("b", (30, 36), seed=2)]
    target = _blob_case("t", (24, 30), seed=3)
    tool = build(sam=sam, match_size=24, prompt_mode=prompt_mode, use_box=use_box, negative_points=negatives)
    for shots in (refs[:1], refs):
        pred = tool.predict(target, references=shots)
        assert pred.mask.shape == target.shape and pred.mask.dtype == np.uint8 and set(np.unique(pred.mask)) <= {0, 1}
        ex = pred.extras
        assert ex["density"] in tool.config.densities and set(ex["density_scores"]) == set(tool.config.densities)
        assert all(0.0 <= v <= 1.0 for v in ex["density_scores"].values())
        pts = ex["points"]
        assert pts.ndim == 2 and pts.shape[1] == 2 and ex["n_points"] == len(pts) >= 1
        assert (pts[:, 0] >= 0).all() and (pts[:, 0] <= 55).all() and (pts[:, 1] >= 0).all() and (pts[:, 1] <= 47).all()
        assert ex["similarity"].shape == (21, 24) and ex["backbone"] == "sam" and isinstance(pred.score, float)


def test_baselines_full_predict_with_untrained_tiny_sam(sam):
    refs = [_blob_case("a", (20, 20), seed=1), _blob_case("b", (30, 36), seed=2)]
    target = _blob_case("t", (24, 30), seed=3)
    dense = DensePointsTool(sam, CpsConfig(match_size=24)).predict(target, references=refs)
    assert dense.mask.shape == target.shape and dense.extras["n_points"] == len(dense.extras["points"]) >= 1
    assert dense.extras["n_points"] <= 128 and 0 <= dense.extras["masks_kept"] <= dense.extras["n_points"]
    single = SinglePointTool(sam, CpsConfig(match_size=24)).predict(target, references=refs[:1])
    assert single.mask.shape == target.shape and single.extras["n_points"] == 2
    assert single.extras["point_labels"].tolist() == [1, 0]


def test_registry_builds_the_three_tools(sam):
    from medagent.tools import load_tool

    assert isinstance(load_tool("cps", sam=sam, dataset="nuclei", match_size=16), CpsTool)
    assert isinstance(load_tool("dense-points", sam=sam), DensePointsTool)
    assert isinstance(load_tool("single-point", sam=sam), SinglePointTool)
    with pytest.raises(ConfigError):
        load_tool("cps", sam=sam, densty=0.5)


def test_transformers_backbone_from_a_local_folder(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, patch_size=8, image_size=32)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    bb = TransformersBackbone(tmp_path / "dino", image_size=32)
    fmap = bb.features(_blob_case("x", (20, 20)))
    assert tuple(fmap.features.shape) == (32, 4, 4)
    tool = CpsTool(config=CpsConfig(backbone=f"transformers:{tmp_path / 'dino'}", backbone_image_size=32, match_size=16,
                                    refine=False), prompter=DiskPrompter())
    pred = tool.predict(_blob_case("t", (24, 30)), references=[_blob_case("a", (20, 20))])
    assert pred.extras["backbone"] == "transformers:dino" and pred.mask.shape == (48, 56)


def test_load_references_reads_images_and_any_nonzero_mask(tmp_path):
    from PIL import Image

    img = (np.arange(40 * 30).reshape(40, 30) % 255).astype(np.uint8)
    mask = np.zeros((40, 30), np.uint8)
    mask[10:20, 5:15] = 255
    Image.fromarray(img).save(tmp_path / "ref.png")
    Image.fromarray(mask).save(tmp_path / "ref_mask.png")
    refs = load_references([tmp_path / "ref.png"], [tmp_path / "ref_mask.png"])
    assert len(refs) == 1 and refs[0].shape == (40, 30)
    assert refs[0].label.dtype == np.uint8 and set(np.unique(refs[0].label)) == {0, 1} and refs[0].label.sum() == 100
    with pytest.raises(ToolError, match="one reference mask per reference image"):
        load_references([tmp_path / "ref.png"], [])


def test_cps_at_density_one_in_point_mode_is_the_dense_baseline(sam):
    refs = [_blob_case("a", (20, 20), seed=1), _blob_case("b", (30, 36), seed=2)]
    target = _blob_case("t", (24, 30), seed=3)
    cps = build(sam=sam, match_size=24, density=1.0, refine=False, prompt_mode="point").predict(target, references=refs)
    dense = DensePointsTool(sam, CpsConfig(match_size=24)).predict(target, references=refs)
    assert cps.extras["n_points"] == dense.extras["n_points"]
    assert np.array_equal(cps.mask, dense.mask)
