"""The one checkpoint mechanism (medagent.tools.checkpoint): references, Hub ids (no network), errors, round trips."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from medagent.data import Case
from medagent.errors import CheckpointError
from medagent.tools import load_tool
from medagent.tools.checkpoint import (
    PICKLE_SUFFIXES,
    load_state_strict,
    parse_hub_id,
    read_config,
    read_weights,
    resolve_checkpoint,
    write_checkpoint,
)
from medagent.tools.refiner.network import RefinerNet, RefinerNetConfig
from medagent.tools.refiner.tool import RefineTool
from medagent.tools.segmenters import UNetTool, build_segmenter

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = dict(width=2, depth=2, num_classes=3, class_names={0: "background", 1: "a", 2: "b"})


def _unet(seed: int = 0):
    torch.manual_seed(seed)
    return build_segmenter("unet", pretrained=False, **TINY)


def _case() -> Case:
    rng = np.random.default_rng(0)
    image = rng.normal(100, 10, size=(1, 24, 24)).astype(np.float32)
    image[0, 6:16, 5:18] += 150
    return Case(image=image, modality="MR", id="c")


@pytest.fixture
def hub(monkeypatch):
    """A fake `huggingface_hub.snapshot_download`: repos are local folders; every call is recorded."""
    import huggingface_hub

    repos: dict[str, object] = {}
    calls: list[dict] = []

    def snapshot_download(repo_id, revision=None, **kwargs):
        calls.append({"repo_id": repo_id, "revision": revision, **kwargs})
        found = repos.get(repo_id)
        if isinstance(found, Exception):
            raise found
        if found is None:
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"no cached snapshot of {repo_id} (offline)")
        return str(found)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return repos, calls


# -- references ---------------------------------------------------------------------------------------------
def test_hub_ids_parse_and_reject_malformed():
    assert parse_hub_id("hf://owner/name") == ("owner/name", None)
    assert parse_hub_id("hf://owner/name@v1.0") == ("owner/name", "v1.0")
    for bad in ("hf://owner", "hf://owner/name/extra", "hf:///name", "hf://owner/name@"):
        with pytest.raises(CheckpointError, match="hf://owner/name"):
            parse_hub_id(bad)


def test_hub_id_resolves_through_snapshot_download(tmp_path, hub):
    repos, calls = hub
    folder = _unet().save_pretrained(tmp_path / "repo")
    repos["owner/unet-tiny"] = folder
    got = resolve_checkpoint("hf://owner/unet-tiny@abc123", needs=("config.json", "model.safetensors"), kind="unet")
    assert got == folder
    assert calls[-1]["repo_id"] == "owner/unet-tiny" and calls[-1]["revision"] == "abc123"
    patterns = calls[-1]["allow_patterns"]  # safetensors, JSON and model cards; never a pickle
    assert "*.safetensors" in patterns and not any(p.endswith(PICKLE_SUFFIXES) for p in patterns)
    # a downloaded repo that lacks a file names the Hub id and the file
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"hf://owner/unet-tiny.*missing model\.safetensors"):
        resolve_checkpoint("hf://owner/unet-tiny", needs=("config.json", "model.safetensors"), kind="unet")


def test_hub_offline_or_missing_repo_is_a_clear_error(hub):
    import huggingface_hub

    repos, _ = hub
    with pytest.raises(CheckpointError, match=r"hf://owner/absent: .*cannot be reached.*hf download owner/absent"):
        resolve_checkpoint("hf://owner/absent")
    missing = huggingface_hub.errors.RepositoryNotFoundError.__new__(huggingface_hub.errors.RepositoryNotFoundError)
    Exception.__init__(missing, "404 Repository Not Found")
    repos["owner/typo"] = missing
    with pytest.raises(CheckpointError, match=r"hf://owner/typo: .*no repository 'owner/typo'.*check the id"):
        resolve_checkpoint("hf://owner/typo")


def test_hub_offline_for_real_without_a_fake(tmp_path, monkeypatch):
    """The real snapshot_download with HF_HUB_OFFLINE (conftest) and an empty cache: no network, a clear error."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(CheckpointError, match=r"hf://medagent-test/none@main: .*HF_HUB_OFFLINE.*local folder"):
        load_tool("unet", checkpoint="hf://medagent-test/none@main")


def test_local_references(tmp_path):
    folder = _unet().save_pretrained(tmp_path / "ck")
    assert resolve_checkpoint(folder) == folder
    assert resolve_checkpoint(str(folder / "model.safetensors")) == folder
    assert resolve_checkpoint(folder / "config.json") == folder
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        resolve_checkpoint(tmp_path / "notes.txt")
    with pytest.raises(CheckpointError, match=r"not an otsu checkpoint folder: missing config\.json"):
        resolve_checkpoint(tmp_path, needs=("config.json",), kind="otsu")


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_pickles_are_refused(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="only .safetensors"):
        resolve_checkpoint(path)
    for tool in ("unet", "refine", "otsu"):
        with pytest.raises(CheckpointError, match="only .safetensors"):
            load_tool(tool, checkpoint=str(path))


# -- reading ------------------------------------------------------------------------------------------------
def test_bad_json_names_the_file(tmp_path):
    path = tmp_path / "config.json"
    with pytest.raises(CheckpointError, match=r"config\.json: missing"):
        read_config(path)
    path.write_text("{\"tool\": ")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        read_config(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(path)
    path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object, got list"):
        read_config(path)
    path.write_text(json.dumps({"tool": "unet"}))
    with pytest.raises(CheckpointError, match=r"config\.json: not a refine config: field 'tool' is 'unet', expected 'refine'"):
        read_config(path, kind="refine", expect={"tool": "refine"})
    assert read_config(path, expect={"tool": "unet"}) == {"tool": "unet"}
    # through the tools: invalid JSON in a checkpoint folder
    folder = _unet().save_pretrained(tmp_path / "ck")
    (folder / "config.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"ck/config\.json: not valid JSON"):
        load_tool("unet", checkpoint=str(folder))


def test_corrupt_weights_name_the_file(tmp_path):
    path = tmp_path / "model.safetensors"
    with pytest.raises(CheckpointError, match="missing"):
        read_weights(path)
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: corrupt or not a safetensors file"):
        read_weights(path)


def test_strict_load_names_the_mismatched_key_and_file(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state["1.weight"] = torch.zeros(5, 4)
    with pytest.raises(CheckpointError, match=r"w\.safetensors does not fit the net; shape mismatches: 1\.weight: file \(5, 4\) vs model \(2, 4\)"):
        load_state_strict(net, state, tmp_path / "w.safetensors", what="the net")
    del state["1.weight"]
    state["extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys: 1\.weight; unexpected keys: extra"):
        load_state_strict(net, state, "w.safetensors")
    # a shape mismatch no single config field explains is named by key through the segmenter too
    folder = _unet().save_pretrained(tmp_path / "ck")
    weights = read_weights(folder / "model.safetensors")
    key = sorted(weights)[0]
    weights[key] = torch.zeros(7, *weights[key].shape[1:])
    write_checkpoint(folder, json.loads((folder / "config.json").read_text()), weights)
    with pytest.raises(CheckpointError, match=rf"model\.safetensors does not fit .*shape mismatches: {key}: file \(7"):
        load_tool("unet", checkpoint=str(folder))


# -- writing ------------------------------------------------------------------------------------------------
def test_write_checkpoint_casts_keeps_metadata_and_formats_json(tmp_path):
    folder = write_checkpoint(tmp_path / "out", {"format": "x", "n": [1, 2]}, {"w": torch.ones(2, 3)},
                              dtype=torch.float16, metadata={"format": "x"})
    text = (folder / "config.json").read_text()
    assert text == json.dumps({"format": "x", "n": [1, 2]}, indent=2) + "\n"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "x"} and f.get_tensor("w").dtype == torch.float16
    write_checkpoint(tmp_path / "state", {"a": 1}, {"t": torch.zeros(1)}, config_name="state.json",
                     weights_name="state.safetensors", indent=1)
    assert (tmp_path / "state" / "state.json").read_text() == '{\n "a": 1\n}\n'
    with safe_open(str(tmp_path / "state" / "state.safetensors"), "pt") as f:
        assert f.metadata() is None


# -- round trips through the tools ---------------------------------------------------------------------------
def test_segmenter_round_trip_local_and_hub(tmp_path, hub):
    repos, calls = hub
    tool = _unet()
    folder = tool.save_pretrained(tmp_path / "unet")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"model": "unet", "format": "medagent-segmenter"}
    assert json.loads((folder / "config.json").read_text()) == tool.config.to_dict()
    case = _case()
    expected = tool.predict(case).probabilities
    local = UNetTool.from_pretrained(folder)
    np.testing.assert_array_equal(local.predict(case).probabilities, expected)
    repos["owner/unet-tiny"] = folder
    loaded = load_tool("unet", checkpoint="hf://owner/unet-tiny")
    assert calls and calls[-1]["repo_id"] == "owner/unet-tiny"
    assert isinstance(loaded, UNetTool) and loaded.config == tool.config
    np.testing.assert_array_equal(loaded.predict(case).probabilities, expected)
    with pytest.raises(CheckpointError, match="'model' is 'unet', expected 'ifunet'"):
        load_tool("ifunet", checkpoint="hf://owner/unet-tiny")


def test_refiner_round_trip_local_and_hub(tmp_path, hub):
    repos, _ = hub
    torch.manual_seed(0)
    tool = RefineTool(RefinerNet(RefinerNetConfig(widths=(4, 8, 8, 8), attention_blocks=1, heads=2)))
    tool.save_pretrained(tmp_path / "ref", extra={"training": {"steps_trained": 3}})
    tool.save_pretrained(tmp_path / "ref", model_name="oneshot")
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["config.json", "model.safetensors", "oneshot.json", "oneshot.safetensors"]
    with safe_open(str(tmp_path / "ref" / "model.safetensors"), "pt") as f:
        assert f.metadata() is None  # the shipped refine-tiny format: no safetensors metadata
    case = _case()
    coarse = np.zeros(case.shape, np.uint8)
    coarse[7:15, 6:17] = 1
    expected = tool.predict(case, mask=coarse).mask
    repos["owner/refine-tiny"] = tmp_path / "ref"
    for reference in (str(tmp_path / "ref"), "hf://owner/refine-tiny"):
        loaded = load_tool("refine", checkpoint=reference)
        assert loaded.provenance["training"]["steps_trained"] == 3
        np.testing.assert_array_equal(loaded.predict(case, mask=coarse).mask, expected)
    assert load_tool("refine", checkpoint="hf://owner/refine-tiny", model_name="oneshot").provenance == {"tool": "refine"}
    assert RefineTool.from_pretrained(tmp_path / "ref" / "oneshot.safetensors").provenance == {"tool": "refine"}
    bad = tmp_path / "ref" / "model.safetensors"
    state = read_weights(bad)
    state.pop(sorted(state)[-1])
    write_checkpoint(tmp_path / "ref", json.loads((tmp_path / "ref" / "config.json").read_text()), state)
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not fit the network in config\.json; missing keys"):
        load_tool("refine", checkpoint=str(tmp_path / "ref"))


@pytest.mark.parametrize("name", ["otsu", "sam"])
def test_every_tool_takes_a_hub_id_like_a_folder(tmp_path, hub, name):
    repos, calls = hub
    tool = load_tool(name, dataset="mni-tissue")
    folder = tool.save_pretrained(tmp_path / name)
    repos[f"owner/{name}"] = folder
    local, remote = load_tool(name, checkpoint=str(folder)), load_tool(name, checkpoint=f"hf://owner/{name}")
    assert calls[-1]["repo_id"] == f"owner/{name}"
    assert type(local) is type(remote) and local.config == remote.config
    if name == "sam":
        assert remote.source == f"hf://owner/{name}" and remote.preprocessing == tool.preprocessing


def test_ctta_source_and_stream_state_take_the_same_references(tmp_path, hub):
    repos, _ = hub
    source = load_tool("unet", dataset="mni-tissue")
    repos["owner/src"] = source.save_pretrained(tmp_path / "src")
    tent = load_tool("tent", checkpoint="hf://owner/src")
    tent.predict(_case())
    tent.save_state(tmp_path / "state")
    assert json.loads((tmp_path / "state" / "state.json").read_text())["method"] == "tent"
    again = load_tool("tent", checkpoint=str(tmp_path / "src"))
    again.load_state(tmp_path / "state" / "state.safetensors")
    assert again.images_seen == 1
    (tmp_path / "state" / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"state\.json: not valid JSON"):
        again.load_state(tmp_path / "state")
