"""Case, intensity, Tool protocol, registry, the otsu baseline and the weights manifest."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medagent.data import Case
from medagent.data.case import default_affine, slice_affine
from medagent.data.intensity import (CT_WINDOWS, canonical_modality, guess_modality, normalize, percentile_scale,
                                     resolve_modality, to_display_rgb, window_ct)
from medagent.errors import CheckpointError, ConfigError, DataError, ToolError
from medagent.tools import Prediction, Tool, ToolKind, list_tools, load_tool
from medagent.tools.intensity_baseline import OtsuTool


def test_case_validates_shapes_and_spacing():
    with pytest.raises(DataError, match="spacing"):
        Case(image=np.zeros((1, 4, 4)), spacing=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match="label shape"):
        Case(image=np.zeros((1, 4, 4)), label=np.zeros((4, 5)))
    with pytest.raises(DataError, match="modality"):
        Case(image=np.zeros((1, 4, 4)), modality="PET-ish")
    case = Case(image=np.zeros((1, 4, 4), np.float64), label=np.ones((4, 4), np.int64))
    assert case.image.dtype == np.float32 and case.label.dtype == np.uint8 and case.subject == case.id


def test_slicing_keeps_world_position():
    image = np.zeros((1, 5, 6, 7), np.float32)
    image[0, 3, 2, 1] = 1
    affine = default_affine((2.0, 1.0, 0.5))
    affine[:3, 3] = [10, 20, 30]
    vol = Case(image=image, label=(image[0] > 0).astype(np.uint8), spacing=(2.0, 1.0, 0.5), affine=affine, id="v")
    assert vol.default_slice_axis() == 0
    for axis, index in ((0, 3), (1, 2), (2, 1)):
        sl = vol.slice(index, axis)
        assert sl.ndim == 2 and sl.label.sum() == 1
        yx = np.argwhere(sl.label)[0]
        world_2d = sl.affine @ np.array([0, *yx, 1])
        world_3d = affine @ np.array([3, 2, 1, 1])
        np.testing.assert_allclose(world_2d, world_3d)
    assert [s.provenance["slice_index"] for s in vol.iter_slices(only_with_target=True)] == [3]
    np.testing.assert_allclose(slice_affine(affine, 0, 0)[:3, 3], affine[:3, 3])


def test_intensity_ct_window_and_percentiles():
    hu = np.array([[-1000.0, -160.0, 40.0, 240.0, 2000.0]])
    np.testing.assert_allclose(window_ct(hu, "soft_tissue"), [[0, 0, 0.5, 1, 1]])
    assert set(CT_WINDOWS) >= {"lung", "bone", "soft_tissue"}
    with pytest.raises(ConfigError):
        window_ct(hu, "nope")
    img = np.arange(1000, dtype=np.float32).reshape(1, 10, 100)
    scaled = percentile_scale(img, 1, 99)
    assert scaled.min() == 0 and scaled.max() == 1 and scaled.dtype == np.float32
    with pytest.raises(DataError, match="NaN"):
        normalize(np.full((1, 2, 2), np.nan), "MR")
    rgb = to_display_rgb(img, "MR")
    assert rgb.shape == (10, 100, 3) and rgb.dtype == np.uint8


def test_modality_resolution_order():
    ct_like = np.array([[[-1000.0, 400.0]]])
    assert resolve_modality("MRI", "CT", ct_like) == "MR"        # metadata wins
    assert resolve_modality(None, "ct", np.zeros((1, 2, 2))) == "CT"  # then the user
    assert resolve_modality(None, None, ct_like) == "CT"         # then the heuristic
    assert guess_modality(np.zeros((3, 4, 4)), is_rgb=True) == "photo"
    assert canonical_modality("T2") == "MR"
    with pytest.raises(ConfigError):
        canonical_modality("spectroscopy")


class _Centre(Tool):
    """Marks the centre pixel; counts calls (to test slice-wise 3D)."""

    name = "centre"
    inputs = frozenset({"radius"})

    def __init__(self):
        self.calls = 0

    def predict_2d(self, case, radius=0):
        self.calls += 1
        mask = np.zeros(case.shape, np.uint8)
        h, w = case.shape
        mask[h // 2 - radius:h // 2 + radius + 1, w // 2 - radius:w // 2 + radius + 1] = 1
        return Prediction(mask=mask, probabilities=np.stack([1.0 - mask, mask]).astype(np.float32))


def test_tool_runs_3d_slicewise_on_the_coarsest_axis():
    tool = _Centre()
    vol = Case(image=np.zeros((1, 6, 8, 10)), spacing=(1.0, 3.0, 1.0))
    pred = tool.predict(vol)
    assert tool.calls == 8 and pred.mask.shape == (6, 8, 10) and pred.probabilities.shape == (2, 6, 8, 10)
    assert pred.extras["slice_axis"] == 1
    with pytest.raises(ToolError, match="does not accept"):
        tool.predict(vol, boxes=[1, 2, 3, 4])
    with pytest.raises(ToolError, match="ambiguous"):
        tool.predict(vol, radius=1)


def test_prediction_checks_shapes():
    with pytest.raises(ToolError):
        Prediction(mask=np.zeros((4, 4)), probabilities=np.zeros((2, 4, 5)))


def test_registry_lists_and_builds_otsu():
    names = [spec.name for spec in list_tools()]
    assert "otsu" in names
    tool = load_tool("otsu", dataset="mni-tissue", unrelated_context="ignored")
    assert isinstance(tool, OtsuTool) and tool.config.n_classes == 4
    with pytest.raises(ToolError, match="unknown tool"):
        load_tool("no-such-tool")


def test_otsu_segments_a_bright_square(square_case):
    pred = load_tool("otsu").predict(square_case)
    assert (pred.mask == square_case.label).mean() > 0.99


def test_otsu_multiclass_orders_bands_by_intensity():
    image = np.zeros((1, 30, 30), np.float32)
    image[0, :, 10:20] = 1.0
    image[0, :, 20:] = 2.0
    pred = load_tool("otsu", n_classes=3).predict(Case(image=image))
    assert list(np.unique(pred.mask[:, 0])) == [0] and pred.mask[0, 15] == 1 and pred.mask[0, 25] == 2


def test_otsu_save_load_round_trip(tmp_path):
    tool = load_tool("otsu", dataset="mni-tissue")
    tool.save_pretrained(tmp_path / "otsu")
    again = load_tool("otsu", checkpoint=str(tmp_path / "otsu"))
    assert again.config == tool.config
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"tool": "unet"}))
    with pytest.raises(CheckpointError, match="not an otsu config"):
        load_tool("otsu", checkpoint=str(tmp_path / "bad"))


def test_shipped_weights_match_manifest_and_caps():
    from medagent.weights import verify_weights

    assert verify_weights() == []


def test_dataset_context_reaches_only_per_dataset_tools(monkeypatch):
    from medagent.tools import registry

    seen = {}

    def builder(checkpoint=None, **config):
        seen.update(config)
        return _Centre()

    monkeypatch.setitem(registry.TOOL_REGISTRY, "fake-prompt", registry.ToolSpec("fake-prompt", ToolKind.PROMPTABLE, "x", __name__))
    import sys

    monkeypatch.setattr(sys.modules[__name__], "build", builder, raising=False)  # the spec's module is this test file
    load_tool("fake-prompt", dataset="nuclei", steps=3)
    assert seen == {"steps": 3}


def test_otsu_head_background_finds_the_same_foreground_with_or_without_exact_zeros():
    from medagent.tools.intensity_baseline import build, head_mask

    yy, xx = np.mgrid[:64, :64]
    head = (yy - 32) ** 2 + (xx - 32) ** 2 < 24 ** 2
    image = np.where(head, 0.6, 0.0).astype(np.float32)
    image[(yy - 32) ** 2 + (xx - 32) ** 2 < 10 ** 2] = 1.0   # a brighter core: two tissue bands
    noisy = image + np.random.default_rng(0).normal(0, 0.03, image.shape).astype(np.float32)  # no exact zeros left
    for img in (image, noisy):
        assert (head_mask(img) == head).mean() > 0.95   # up to a 1 px ring of smoothing at the edge
    case = Case(image=noisy[None], spacing=(1.0, 1.0))
    mask = build(dataset="mni-tissue", n_classes=3, background="head").predict(case).mask
    assert (mask[~head] == 0).mean() > 0.95 and set(np.unique(mask[head])) <= {0, 1, 2}
    zero = build(dataset="mni-tissue", n_classes=3, background="zero").predict(case).mask
    assert (zero[~head] == 0).mean() < 0.05   # why bench tables do not use "zero": noise leaves no exact zeros
