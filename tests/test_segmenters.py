"""The unet / ifunet / allukan tools: shapes, checkpoints round trips, bad inputs, shipped weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medagent.data import Case
from medagent.errors import CheckpointError, DataError, ToolError
from medagent.tools import list_tools, load_tool
from medagent.tools.nets.unet import UNet
from medagent.tools.segmenters import MODELS, SegmenterConfig, build_segmenter

TINY = dict(width=2, depth=2, num_classes=3, class_names={0: "background", 1: "a", 2: "b"})


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(model: str, **extra):
    torch.manual_seed(0)
    return build_segmenter(model, pretrained=False, **{**TINY, **extra})


@pytest.fixture
def case3():
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(1, 21, 27)).astype(np.float32)
    label = np.zeros((21, 27), np.uint8)
    label[3:10, 4:12] = 1
    label[12:18, 15:25] = 2
    image[0][label == 1] += 200
    image[0][label == 2] += 80
    return Case(image=image, label=label, modality="MR", class_names={0: "background", 1: "a", 2: "b"}, id="c3")


def test_unet_pads_and_crops_any_size():
    net = UNet(2, 5, width=2, depth=3)
    assert net(torch.rand(1, 2, 17, 30)).shape == (1, 5, 17, 30)


@pytest.mark.parametrize("model", MODELS)
def test_predict_shapes_and_probabilities(model, case3):
    pred = tiny(model).predict(case3)
    assert pred.mask.shape == (21, 27) and pred.mask.dtype == np.uint8
    assert pred.probabilities.shape == (3, 21, 27) and pred.probabilities.dtype == np.float32
    np.testing.assert_allclose(pred.probabilities.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(pred.mask, pred.probabilities.argmax(0))


@pytest.mark.parametrize("model", MODELS)
def test_save_load_round_trip(model, case3, tmp_path):
    tool = tiny(model, **({"learnable_lambda": True} if model == "ifunet" else {}))
    with torch.no_grad():  # make batch-norm statistics non-trivial so that buffers must round-trip too
        for module in tool.net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    tool.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    again = load_tool(model, checkpoint=str(tmp_path / "ckpt"))
    assert type(again) is type(tool) and again.config == tool.config
    np.testing.assert_array_equal(again.predict(case3).probabilities, tool.predict(case3).probabilities)


def test_3d_case_runs_slicewise(case3):
    vol = Case(image=np.stack([case3.image] * 3, axis=1), spacing=(3.0, 1.0, 1.0), modality="MR")
    pred = tiny("unet").predict(vol)
    assert pred.mask.shape == (3, 21, 27) and pred.probabilities.shape == (3, 3, 21, 27)


def test_target_by_index_and_name(case3):
    tool = tiny("unet")
    full = tool.predict(case3)
    by_name = tool.predict(case3, target="B")
    np.testing.assert_array_equal(by_name.mask, (full.mask == 2).astype(np.uint8))
    assert by_name.probabilities.shape == (2, 21, 27) and by_name.extras["target"] == 2
    with pytest.raises(ToolError, match="out of range 0..2"):
        tool.predict(case3, target=3)
    with pytest.raises(ToolError, match="unknown class name"):
        tool.predict(case3, target="liver")


def test_bad_images(case3):
    tool = tiny("ifunet")
    nan = case3.image.copy()
    nan[0, 2, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        tool.predict(case3.replace(image=nan))
    with pytest.raises(DataError, match="in_channels"):
        tool.predict(case3.replace(image=np.concatenate([case3.image] * 2)))


def _saved(tmp_path, model="allukan"):
    path = tmp_path / model
    tiny(model).save_pretrained(path)
    return path


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(changes)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("field,value", [("width", 4), ("depth", 3), ("num_classes", 4), ("form", "per_output"), ("grid_size", 7)])
def test_config_mismatch_names_the_field(tmp_path, field, value):
    path = _saved(tmp_path)
    changes = {field: value}
    if field == "num_classes":
        changes["class_names"] = {str(i): str(i) for i in range(value)}
    _edit_config(path, **changes)
    with pytest.raises(CheckpointError, match=f"'{field}'"):
        load_tool("allukan", checkpoint=str(path))


def test_checkpoint_for_another_model_or_unknown_field(tmp_path):
    path = _saved(tmp_path, "unet")
    with pytest.raises(CheckpointError, match="'model' is 'unet'"):
        load_tool("ifunet", checkpoint=str(path))
    _edit_config(path, colour="blue")
    with pytest.raises(CheckpointError, match="colour"):
        load_tool("unet", checkpoint=str(path))


def test_corrupt_or_pickled_weights(tmp_path):
    path = _saved(tmp_path, "unet")
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_tool("unet", checkpoint=str(path))
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_tool("unet", checkpoint=str(path))
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        load_tool("unet", checkpoint=str(tmp_path / "model.pt"))
    with pytest.raises(CheckpointError, match="missing"):
        load_tool("unet", checkpoint=str(tmp_path))


def test_config_class_names_must_match_num_classes():
    with pytest.raises(Exception, match="class_names"):
        SegmenterConfig(num_classes=3, class_names={0: "bg", 1: "a"})


def test_registered():
    names = {spec.name for spec in list_tools()}
    assert {"unet", "ifunet", "allukan"} <= names


SHIPPED = ["unet-mni-tissue", "ifunet-mni-tissue", "allukan-mni-tissue", "unet-mni-lesion", "unet-nuclei", "unet-ct-phantom"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoint_reproduces_recorded_dice(name):
    from medagent.data.builtin import load_builtin
    from medagent.data.case import labelled_2d
    from medagent.train.tool_trainer import evaluate_dice
    from medagent.weights import WEIGHTS_DIR, verify_weights

    folder = WEIGHTS_DIR / name
    if not (folder / "metrics.json").exists():
        pytest.fail(f"shipped checkpoint {name} is missing")
    problems = [p for p in verify_weights() if p.startswith(name)]
    assert not problems, problems
    from medagent.train.shipped_segmenters import SHIPPED_VERSIONS
    from medagent.weights import read_manifest

    assert read_manifest()[name]["version"] == SHIPPED_VERSIONS[name]  # a re-trained recipe bumps the version
    assert (folder / "model.safetensors").stat().st_size < 1024 * 1024
    model, dataset = name.split("-", 1)
    tool = load_tool(model, dataset=dataset)
    metrics = json.loads((folder / "metrics.json").read_text())
    recorded = metrics["check"]
    cases = labelled_2d(load_builtin(dataset).cases("test"))
    cases = [c for c in cases if c.id in recorded["cases"]]
    assert [c.id for c in cases] == recorded["cases"]
    result = evaluate_dice(tool, cases)
    assert abs(result["mean_dice"] - recorded["mean_dice"]) <= 0.01
    assert metrics["test"]["mean_dice"] > 0.2  # it learned something (lesions are small: see its model card)
    if name == "unet-mni-lesion":  # version 3: 40 dataset seeds, width 16, stored as float16
        assert metrics["test"]["mean_dice"] >= 0.6 and tool.config.width == 16
        from medagent.tools.segmenters import load_safetensors

        stored = load_safetensors(folder / "model.safetensors")
        assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}


def test_default_builder_loads_mni_tissue_weights():
    tool = load_tool("ifunet")
    assert tool.config.dataset == "mni-tissue" and tool.class_names[2] == "grey matter"
    with pytest.raises(Exception, match="no shipped"):
        load_tool("allukan", dataset="nuclei")
