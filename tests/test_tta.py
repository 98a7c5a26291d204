"""Continual test-time adaptation tools (medagent.tools.tta): what each method may change, the prompt and
memory-bank building blocks, NaN handling, BN-less sources, state save/resume, streams and folders.

Uses a tiny UNet quick-trained on synthetic discs (session fixture, a few seconds), never the network.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from medagent.data.case import Case
from medagent.errors import ConfigError, ToolError
from medagent.tools.tta import source as tta_source
from medagent.tools.tta.batchnorm import TTABatchNorm
from medagent.tools.tta.fourier import FourierPrompt, low_frequency_amplitude
from medagent.tools.tta.source import SourceModel
from medagent.tools.tta.vptta import MemoryBank
from medagent.tools.tta.cotta import CoTTATool
from medagent.tools.tta.mgipt import MGIPTTool, consistency_dice_loss, global_sides
from medagent.tools.tta.noadapt import NoAdaptTool
from medagent.tools.tta.tent import TentTool
from medagent.tools.tta.vptta import VPTTATool

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _disc_case(rng: np.random.Generator, i: int, gain: float = 1.0, gamma: float = 1.0) -> Case:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    cy, cx, r = rng.uniform(10, 22), rng.uniform(10, 22), rng.uniform(5, 9)
    label = ((yy - cy) ** 2 + (xx - cx) ** 2 < r**2).astype(np.uint8)
    image = 0.25 + 0.5 * label + rng.normal(0, 0.05, label.shape)
    image = np.clip(image, 0, None) ** gamma * gain
    return Case(image=image[None].astype(np.float32), label=label, modality="MR", id=f"disc{i}",
                class_names={0: "background", 1: "disc"})


def _cases(n: int, seed: int, **kw) -> list[Case]:
    rng = np.random.default_rng(seed)
    return [_disc_case(rng, i, **kw) for i in range(n)]


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory):
    """A tiny BN UNet (width 4, depth 2) trained for a few seconds on clean discs, saved as a checkpoint."""
    from medagent.tools.segmenters import SegmenterConfig, UNetTool, model_input
    from medagent.train.tool_trainer import dice_ce_loss

    torch.manual_seed(0)
    cfg = SegmenterConfig(model="unet", num_classes=2, class_names={0: "background", 1: "disc"}, width=4, depth=2, modality="MR")
    tool = UNetTool(cfg)
    cases = _cases(24, seed=1)
    x = torch.from_numpy(np.stack([model_input(c.image, c.modality, cfg) for c in cases]))
    y = torch.from_numpy(np.stack([c.label.astype(np.int64) for c in cases]))
    opt = torch.optim.Adam(tool.net.parameters(), lr=1e-2)
    tool.net.train()
    for step in range(60):
        idx = torch.randint(0, len(cases), (8,))
        loss = dice_ce_loss(tool.net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():  # exact clean statistics in the BN buffers
        for m in tool.net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        tool.net(x)
    tool.net.eval()
    folder = tmp_path_factory.mktemp("tta") / "source"
    tool.save_pretrained(folder)
    return folder


def _source(source_dir) -> SourceModel:
    return tta_source.load_source(checkpoint=source_dir)


FAST = {
    "noadapt": (NoAdaptTool, {}),
    "tent": (TentTool, {}),
    "cotta": (CoTTATool, {"n_augment": 2, "confidence_threshold": 1.01}),
    "vptta": (VPTTATool, {"neighbours": 2, "memory_size": 4}),
    "mgipt": (MGIPTTool, {"instance_steps": 2}),
}


def _tool(name: str, source_dir, **overrides):
    from medagent.tools.registry import load_tool

    cfg = {**FAST[name][1], **overrides}
    return load_tool(name, checkpoint=str(source_dir), config=cfg)


def _shifted(n: int = 4, seed: int = 5) -> list[Case]:
    return _cases(n, seed=seed, gamma=2.0)


# -- building blocks ------------------------------------------------------------------------------------
def test_fourier_prompt_of_ones_is_identity_and_other_values_change_the_image():
    x = torch.rand(2, 3, 37, 50)
    prompt = FourierPrompt(3, 5)
    out, key = prompt(x)
    assert torch.allclose(out, x, atol=1e-5)
    assert key.shape == (2, 3, 5, 5)
    assert torch.allclose(key, low_frequency_amplitude(x, 5))
    prompt.set(torch.full((1, 3, 5, 5), 0.5))
    changed, _ = prompt(x)
    assert not torch.allclose(changed, x, atol=1e-3)
    # scaling only the DC term scales the mean and keeps the image's zero-mean part
    dc = FourierPrompt(3, 1)
    dc.set(torch.full((1, 3, 1, 1), 0.5))
    y, _ = dc(x)
    assert torch.allclose(y.mean((2, 3)), 0.5 * x.mean((2, 3)), atol=1e-5)
    assert torch.allclose(y - y.mean((2, 3), keepdim=True), x - x.mean((2, 3), keepdim=True), atol=1e-5)


def test_grown_prompt_freezes_its_inner_part():
    small = FourierPrompt(1, 1)
    small.set(torch.full((1, 1, 1, 1), 0.7))
    big = small.grown(3)
    assert big.prompt[0, 0, 1, 1].item() == pytest.approx(0.7)
    x = torch.rand(1, 1, 16, 16)
    out, _ = big(x)
    out.square().mean().backward()
    grad = big.prompt.grad[0, 0]
    assert grad[1, 1].item() == 0.0
    assert grad.abs().sum().item() > 0


def test_memory_bank_returns_nearest_keys_fifo_and_softmax_weights():
    bank = MemoryBank(capacity=5, temperature=0.2)
    keys = torch.eye(6)
    for i in range(6):
        bank.push(keys[i], torch.full((1, 1, 2, 2), float(i)))
    assert len(bank) == 5  # key 0 dropped (FIFO)
    query = keys[3] + 0.3 * keys[4]
    value, idx, weights = bank.neighbours(query, k=2)
    stored = torch.stack(bank.keys)
    assert [int(torch.argmax(stored[i])) for i in idx] == [3, 4]
    sims = torch.tensor([1.0, 0.3]) / np.sqrt(1.09)
    expected = torch.softmax(sims / 0.2, 0)
    assert torch.allclose(weights, expected, atol=1e-5)
    assert value.shape == (1, 1, 2, 2)
    assert value.flatten()[0].item() == pytest.approx(float(expected[0] * 3 + expected[1] * 4), abs=1e-5)
    # the oldest key (0) is gone: a query equal to it finds nothing identical
    assert torch.stack(bank.keys)[:, 0].abs().sum() == 0


def test_tta_batchnorm_source_mode_matches_eval_batchnorm():
    bn = torch.nn.BatchNorm2d(3)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.eval()
    x = torch.randn(2, 3, 8, 8)
    t = TTABatchNorm(bn)
    assert torch.allclose(t(x), bn(x), atol=1e-5)
    t.mode = "instance"
    out = t(x)
    assert torch.allclose(((out - t.bias.view(1, 3, 1, 1)) / t.weight.view(1, 3, 1, 1)).mean((2, 3)), torch.zeros(2, 3), atol=1e-5)


def test_global_sides_scale_with_image_and_stay_distinct():
    assert global_sides((0.01, 0.014, 0.006), 512, True) == [5, 7, 3]
    small = global_sides((0.01, 0.014, 0.006), 64, True)
    assert len(set(small)) == 3 and min(small) == 1


def test_consistency_score_is_zero_for_identical_predictions():
    a = torch.randn(1, 3, 8, 8)
    assert consistency_dice_loss(a, a.clone(), "softmax") == pytest.approx(0.0, abs=1e-6)
    assert consistency_dice_loss(a, -a, "softmax") > 0


# -- what each method may change --------------------------------------------------------------------------
def _run(tool, cases):
    return [tool.predict(c) for c in cases]


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_tent_updates_only_bn_affine(source_dir):
    tool = _tool("tent", source_dir)
    src = tool.source_parameters()
    before = {k: v.clone() for k, v in tool.net.state_dict().items()}
    _run(tool, _shifted(3))
    changed = _changed(before, tool.net.state_dict())
    assert changed, "tent changed nothing"
    assert all(k.endswith((".weight", ".bias")) for k in changed)
    bn_names = {f"{n}.{p}" for n, m in tool.net.named_modules() if isinstance(m, TTABatchNorm) for p in ("weight", "bias")}
    assert changed <= bn_names
    assert not _changed(src, tool.source_parameters())


@pytest.mark.parametrize("name", ["vptta", "mgipt"])
def test_prompt_methods_update_only_prompts_and_never_the_source(name, source_dir):
    tool = _tool(name, source_dir)
    src = tool.source_parameters()
    net_before = {k: v.clone() for k, v in tool.net.state_dict().items()}
    _run(tool, _shifted(5))
    assert not _changed(net_before, tool.net.state_dict()), "the adapted copy's weights/statistics changed"
    assert not _changed(src, tool.source_parameters()), "the source model changed"
    assert not any(p.requires_grad for p in tool.net.parameters())
    prompts = tool._state_tensors()
    if name == "vptta":
        assert len(tool.memory) == 4 and not torch.allclose(prompts["prompt"], torch.ones_like(prompts["prompt"]))
    else:
        assert any(not torch.allclose(p, torch.ones_like(p)) for k, p in prompts.items() if k.startswith("global."))
        assert any(not torch.allclose(p, torch.ones_like(p)) for k, p in prompts.items() if k.startswith("teacher."))


def test_cotta_adapts_a_copy_and_keeps_the_source(source_dir):
    tool = _tool("cotta", source_dir)
    src = tool.source_parameters()
    before = {k: v.clone() for k, v in tool.student.state_dict().items()}
    _run(tool, _shifted(2))
    assert _changed(before, tool.student.state_dict())
    assert not _changed(src, tool.source_parameters())


def test_mgipt_stays_close_to_the_source_on_clean_images(source_dir):
    clean = _cases(8, seed=11)
    ref = _run(_tool("noadapt", source_dir), clean)
    ours = _run(_tool("mgipt", source_dir, instance_steps=7), clean)
    agreement = np.mean([np.mean(a.mask == b.mask) for a, b in zip(ref, ours)])
    assert agreement > 0.97
    # and the source itself is sound on clean discs (the check above is not vacuous)
    from medagent.metrics import dice

    assert np.mean([dice(p.mask, c.label) for p, c in zip(ref, clean)]) > 0.8


def test_mgipt_ensemble_weights_are_normalised(source_dir):
    tool = _tool("mgipt", source_dir)
    tool.predict(_shifted(1)[0])
    total = tool.last_weights.sum(0)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-5)
    release = _tool("mgipt", source_dir, normalize_ensemble=False)
    release.predict(_shifted(1)[0])
    assert not torch.allclose(release.last_weights.sum(0), torch.ones_like(total), atol=1e-3)


# -- robustness ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tent", "vptta", "mgipt", "cotta"])
def test_nan_image_is_skipped_with_a_warning_and_does_not_poison_the_state(name, source_dir):
    cases = _shifted(3)
    bad = cases[1].replace(image=np.where(np.arange(SIZE)[None, None, :] == 3, np.nan, cases[1].image).astype(np.float32))
    tool, twin = _tool(name, source_dir), _tool(name, source_dir)
    tool.predict(cases[0])
    twin.predict(cases[0])
    with pytest.warns(RuntimeWarning, match="NaN"):
        pred = tool.predict(bad)
    assert pred.extras["skipped"] and not pred.mask.any() and tool.skipped == 1
    a, b = tool.predict(cases[2]), twin.predict(cases[2])
    assert np.isfinite(a.probabilities).all()
    np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
    for k, v in tool.state_dict()["tensors"].items():
        assert torch.isfinite(v.float()).all(), k


@pytest.mark.parametrize("cls", [TentTool, CoTTATool, VPTTATool, MGIPTTool])
def test_source_without_batchnorm_gives_a_clear_error(cls):
    from medagent.tools.segmenters import SegmenterConfig, UNetTool

    cfg = SegmenterConfig(model="unet", num_classes=2, class_names={0: "background", 1: "fg"}, width=4, depth=1)
    no_bn = UNetTool(cfg, net=torch.nn.Conv2d(1, 2, 3, padding=1))
    with pytest.raises(ToolError, match="no BatchNorm"):
        cls(SourceModel(no_bn), _config_of(cls))
    NoAdaptTool(SourceModel(no_bn), _config_of(NoAdaptTool)).predict(_shifted(1)[0])  # noadapt needs no BN


def _config_of(cls):
    from medagent.tools.tta import cotta, mgipt, noadapt, tent, vptta

    return {"tent": tent.TentConfig, "cotta": cotta.CoTTAConfig, "vptta": vptta.VPTTAConfig, "mgipt": mgipt.MGIPTConfig,
            "noadapt": noadapt.NoAdaptConfig}[cls.name]()


def test_unknown_config_field_is_a_config_error_but_loose_context_is_dropped(source_dir):
    from medagent.tools.registry import load_tool

    with pytest.raises(ConfigError, match="unknown field"):
        _tool("mgipt", source_dir, not_a_field=3)
    tool = load_tool("tent", checkpoint=str(source_dir), lr=0.5, unrelated_context="ignored")
    assert tool.config.lr == 0.5


# -- state ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tent", "cotta", "vptta", "mgipt"])
def test_state_save_and_resume_continues_the_stream_exactly(name, source_dir, tmp_path):
    cases = _shifted(5)
    straight = _tool(name, source_dir)
    expected = [p.probabilities for p in _run(straight, cases)]
    first = _tool(name, source_dir)
    _run(first, cases[:3])
    first.save_state(tmp_path / "state")
    resumed = _tool(name, source_dir)
    resumed.load_state(tmp_path / "state")
    assert resumed.images_seen == 3
    got = [p.probabilities for p in _run(resumed, cases[3:])]
    for e, g in zip(expected[3:], got):
        np.testing.assert_allclose(g, e, atol=1e-5)
    resumed.reset()
    assert resumed.images_seen == 0


def test_registry_lists_the_adaptive_tools():
    from medagent.tools.base import ToolKind
    from medagent.tools.registry import get_spec

    for name in ("noadapt", "tent", "cotta", "vptta", "mgipt"):
        assert get_spec(name).kind is ToolKind.ADAPTIVE


# -- streams and folders --------------------------------------------------------------------------------------
def test_run_stream_episodic_resets_and_scores_after_adapting(source_dir):
    from medagent.data.shifts import StreamItem
    from medagent.eval.ctta import run_stream, summarize_stream

    cases = _shifted(2)
    plan = [(centre, r, i, case) for r in range(2) for centre in "BC" for i, case in enumerate(cases)]
    items = [StreamItem(centre, r, i, k, (lambda case=case: case)) for k, (centre, r, i, case) in enumerate(plan)]
    tool = _tool("vptta", source_dir)
    scores = run_stream(tool, items, [1], {0: "background", 1: "disc"}, episodic=True)
    assert len(scores) == 8 and tool.images_seen == 2  # reset at every centre change
    summary = summarize_stream(scores)
    assert set(summary["per_centre"]) == {"B", "C"} and set(summary["per_round"]) == {"1", "2"}
    assert summary["degradation"] is not None


def test_adapt_folder_writes_masks_in_sorted_order(source_dir, tmp_path):
    from medagent.tools.tta.folder import adapt_folder

    folder = tmp_path / "stream"
    folder.mkdir()
    for i, case in enumerate(_shifted(3)):
        np.save(folder / f"img{2 - i}.npy", case.image[0])
    (folder / "broken.npy").write_bytes(b"not an array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        written = adapt_folder("mgipt-reduced", source_dir, folder, tmp_path / "out", modality="MR", state_dir=tmp_path / "state")
    assert [p.name for p in written] == ["img0.npy", "img1.npy", "img2.npy"]
    assert np.load(written[0]).shape == (SIZE, SIZE)
    meta = json.loads((tmp_path / "state" / "state.json").read_text())
    assert meta["method"] == "mgipt" and meta["images_seen"] == 3


def test_evaluate_ctta_writes_results_with_centres_rounds_and_forgetting(tmp_path):
    from medagent.eval.results import load_results
    from medagent.eval.ctta import evaluate_ctta

    evaluate_ctta("nuclei", methods=["noadapt", "tent"], rounds=2, centres=["B", "D"], max_cases=2,
                           run_root=tmp_path / "runs", json_out=tmp_path / "out.json", progress=False)
    res = load_results(tmp_path / "out.json")
    ctta = res.extra["ctta"]
    assert set(ctta["tent"]["per_centre"]) == {"B", "D"} and set(ctta["tent"]["per_round"]) == {"1", "2"}
    assert ctta["noadapt"]["relative_cost"] == pytest.approx(1.0)
    assert ctta["tent"]["forgetting"] is not None and ctta["_source"]["drop"] is not None
    assert ctta["tent"]["images"] == 8
    assert "nuclei" in res.summary["tent"]
    assert set(res.cases["phase"]) == {"clean_before", "stream", "clean_after"}


def test_ctta_source_training_has_no_intensity_augmentation_and_shipped_sources_have_bn():
    from medagent.tools.tta.source import source_weights_name
    from medagent.train.ctta_source import CTTASourceConfig, trainer_config
    from medagent.weights import read_manifest

    cfg = trainer_config(CTTASourceConfig(dataset="nuclei", max_steps=1, output_dir="unused"))
    assert cfg.model == "unet" and cfg.intensity_aug is False and cfg.crop_size == 64
    for ds in ("mni-tissue", "nuclei"):
        assert source_weights_name(ds) in read_manifest()
        src = tta_source.load_source(ds)
        assert src.config.model == "unet" and src.bn_layers()
