"""The segmenter trainer: loss goes down, outputs, resume after an interruption, bad configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import medagent.train.augment as augment
import medagent.train.shipped_segmenters as shipped
import medagent.train.tool_trainer as tt
from medagent.data import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.errors import ConfigError
from medagent.tools import load_tool
from medagent.tools.segmenters import build_segmenter
from medagent.train.augment import make_batch
from medagent.train.segmenter_config import AugmentConfig, ToolTrainerConfig
from medagent.train.tool_trainer import dice_ce_loss, train_tool

CLASSES = {0: "background", 1: "blob"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _case(i: int) -> Case:
    rng = np.random.default_rng(i)
    label = np.zeros((24, 28), np.uint8)
    y, x = rng.integers(2, 12), rng.integers(2, 14)
    label[y : y + 9, x : x + 11] = 1
    image = rng.normal(50, 5, size=(1, 24, 28)).astype(np.float32) + 100 * label[None]
    return Case(image=image, label=label, modality="MR", class_names=CLASSES, id=f"c{i}")


@pytest.fixture(scope="module")
def tiny_dataset() -> Dataset:
    info = DatasetInfo(name="tiny-blobs", description="squares", modality="MR", class_names=CLASSES,
                       label_origin="synthetic", license="CC0", source="test")
    return Dataset(info, {"train": CaseList.from_cases([_case(i) for i in range(6)]),
                          "val": CaseList.from_cases([_case(i) for i in range(6, 8)])})


def _config(tmp_path, **kw) -> ToolTrainerConfig:
    base = dict(model="unet", max_steps=8, batch_size=4, crop_size=16, val_every=4, lr=1e-2, output_dir=str(tmp_path / "run"),
                progress=False, model_config={"width": 2, "depth": 2}, seed=3, num_threads=1)
    base.update(kw)
    return ToolTrainerConfig(**base)


@pytest.mark.parametrize("model", ["unet", "allukan"])
def test_training_lowers_the_loss_and_writes_outputs(tmp_path, tiny_dataset, model):
    config = _config(tmp_path, model=model, max_steps=25, val_every=25, augment=False)
    best = train_tool(config, dataset=tiny_dataset)
    out = tmp_path / "run"
    assert best == out / "best" and (best / "model.safetensors").exists()
    assert {"config.json", "versions.json", "metrics.jsonl", "last"} <= {p.name for p in out.iterdir()}
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 25 and set(record["val"]["dice"]) == {"blob"}
    # loss on one fixed batch: initial weights (same seed as the trainer) vs the trained ones
    torch.manual_seed(config.seed)
    initial = build_segmenter(model, pretrained=False, class_names=CLASSES, num_classes=2, dataset="tiny-blobs", **config.model_config)
    trained = load_tool(model, checkpoint=str(out / "last"))
    pairs = tt._prepare(list(tiny_dataset.cases("train")), trained.config)
    x, y = make_batch(pairs, config, np.random.default_rng(0))
    losses = []
    for tool in (initial, trained):
        tool.net.eval()
        with torch.no_grad():
            losses.append(float(dice_ce_loss(tool.net(x), y)))
    assert losses[1] < 0.8 * losses[0], losses


def test_resume_after_interruption_matches_uninterrupted(tmp_path, tiny_dataset, monkeypatch):
    straight = _config(tmp_path / "a")
    train_tool(straight, dataset=tiny_dataset)

    interrupted = _config(tmp_path / "b")
    calls = {"n": 0}
    real = tt.make_batch

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # after the state saved at step 4
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tt, "make_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        train_tool(interrupted, dataset=tiny_dataset)
    state = json.loads((tmp_path / "b" / "run" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 4
    monkeypatch.setattr(tt, "make_batch", real)
    train_tool(interrupted, dataset=tiny_dataset)

    a = load_tool("unet", checkpoint=str(tmp_path / "a" / "run" / "last"))
    b = load_tool("unet", checkpoint=str(tmp_path / "b" / "run" / "last"))
    for (name, ta), tb in zip(a.net.state_dict().items(), b.net.state_dict().values()):
        torch.testing.assert_close(ta, tb, msg=name)
    lines = (tmp_path / "b" / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [4, 8]


def test_a_run_saved_with_the_old_field_names_loads_and_resumes(tmp_path, tiny_dataset, monkeypatch):
    """Runs written before the rename to TRL's names (`steps`, `out_dir`) still load and resume."""
    from medagent.train.config_io import load_config

    config = _config(tmp_path)
    run = tmp_path / "run"
    real, calls = tt.make_batch, {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # after the state saved at step 4
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tt, "make_batch", counting)
    with pytest.raises(KeyboardInterrupt):
        train_tool(config, dataset=tiny_dataset)
    for path in (run / "config.json", run / "last" / "trainer_state.json"):  # as an older medagent wrote them
        data = json.loads(path.read_text())
        saved = data.get("trainer_config", data)
        saved["steps"], saved["out_dir"] = saved.pop("max_steps"), saved.pop("output_dir")
        path.write_text(json.dumps(data))
    assert load_config(ToolTrainerConfig, run / "config.json") == config
    assert load_config(ToolTrainerConfig, run) == config
    with pytest.raises(ConfigError, match="'max_steps'"):  # an old state still refuses another schedule
        train_tool(_config(tmp_path, max_steps=12), dataset=tiny_dataset)
    calls["n"] = -100
    train_tool(config, dataset=tiny_dataset)
    assert calls["n"] == -100 + 4  # resumed at step 4 of 8, not started again
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [4, 8]


def test_resume_refuses_a_changed_config(tmp_path, tiny_dataset):
    train_tool(_config(tmp_path, max_steps=4), dataset=tiny_dataset)
    with pytest.raises(ConfigError, match="'crop_size'"):
        train_tool(_config(tmp_path, max_steps=4, crop_size=20), dataset=tiny_dataset)


def test_bad_trainer_configs():
    with pytest.raises(ConfigError, match="model"):
        ToolTrainerConfig(model="resnet")
    with pytest.raises(ConfigError, match="max_steps"):
        ToolTrainerConfig(max_steps=0)


def test_dataset_seeds_concatenate_train_splits_and_keep_val_on_dataset_seed(tmp_path, tiny_dataset, monkeypatch):
    from medagent.data import builtin

    def fake_load_builtin(name, seed=0):  # a seeded "builtin": each seed shifts the case ids and images
        cases = [_case(10 * seed + i) for i in range(2)]
        for c in cases:
            c.id = f"s{seed}_{c.id}"
        val = [_case(1000 + seed)]
        val[0].id = f"val_s{seed}"
        return Dataset(tiny_dataset.info, {"train": CaseList.from_cases(cases), "val": CaseList.from_cases(val)})

    monkeypatch.setattr(builtin, "load_builtin", fake_load_builtin)
    config = _config(tmp_path, dataset="fake", dataset_seeds=[2, 0, 5], max_steps=4, val_every=4)
    assert config.dataset_seeds == (2, 0, 5)  # lists (JSON) become tuples
    cases = tt.training_cases(config, fake_load_builtin("fake", seed=config.dataset_seed))
    assert [c.id for c in cases] == ["s2_c20", "s2_c21", "s0_c0", "s0_c1", "s5_c50", "s5_c51"]
    assert [c.id for c in tt.training_cases(_config(tmp_path, dataset="fake"), fake_load_builtin("fake", seed=1))] == ["s1_c10", "s1_c11"]
    seen = []
    real_labelled_2d = tt.labelled_2d
    monkeypatch.setattr(tt, "labelled_2d", lambda cs: seen.append([c.id for c in cs]) or real_labelled_2d(cs))
    train_tool(config)
    assert ["val_s0"] in seen and not any("val_s2" in ids or "val_s5" in ids for ids in seen)  # val: dataset_seed only
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["dataset_seeds"] == [2, 0, 5]
    with pytest.raises(ConfigError, match="'dataset_seeds'"):  # resume refuses other training data
        train_tool(_config(tmp_path, dataset="fake", dataset_seeds=[2, 0], max_steps=4, val_every=4))
    with pytest.raises(ConfigError, match="dataset="):
        train_tool(_config(tmp_path / "x", dataset_seeds=[0, 1]), dataset=tiny_dataset)
    for bad in ([0, 0], [-1], [1.5], 3):
        with pytest.raises(ConfigError, match="dataset_seeds"):
            ToolTrainerConfig(dataset_seeds=bad)
    with pytest.raises(ConfigError, match="dataset_seeds"):
        ToolTrainerConfig(dataset_seeds=(0, 1), data_dir=str(tmp_path))


def test_augmentation_keeps_labels_aligned_and_range():
    rng = np.random.default_rng(0)
    image = np.zeros((1, 16, 16), np.float32)
    image[0, 4:12, 4:12] = 1.0
    label = (image[0] > 0.5).astype(np.int64)
    config = ToolTrainerConfig(batch_size=4, crop_size=16, foreground_crop_prob=0.0, intensity_aug=False)
    x, y = make_batch([(image, label)], config, rng)
    assert x.shape == (4, 1, 16, 16) and y.shape == (4, 16, 16)
    agree = ((x[:, 0] > 0.5).long() == y).float().mean()
    assert agree > 0.95
    aug = augment._intensity_augment(np.random.default_rng(1).random((1, 16, 16)).astype(np.float32), np.random.default_rng(2))  # "basic"
    assert aug.min() >= 0 and aug.max() <= 1


def _blob_image() -> tuple[np.ndarray, np.ndarray]:
    """A (1, 32, 40) scaled image with a bright square and its label."""
    label = np.zeros((32, 40), np.int64)
    label[8:24, 10:30] = 1
    image = (0.2 + 0.6 * label)[None].astype(np.float32)
    return image, label


ALL_OFF = {f"{k}_prob": 0.0 for k in ("bias", "blur", "lowres", "noise", "contrast", "gamma", "stripe")}


@pytest.mark.parametrize("transform", ["bias", "blur", "lowres", "noise", "contrast", "gamma", "stripe"])
def test_each_robust_transform_changes_the_image_and_keeps_the_range(transform):
    image, _ = _blob_image()
    aug = AugmentConfig(**{**ALL_OFF, f"{transform}_prob": 1.0}, renormalize=False)
    outs = [augment.robust_intensity_augment(image, np.random.default_rng(s), aug) for s in range(4)]
    for out in outs:
        assert out.shape == image.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0 and np.isfinite(out).all()
    assert max(float(np.abs(out - image).max()) for out in outs) > 1e-3, transform
    # everything off (and no re-scaling) is the identity
    same = augment.robust_intensity_augment(image, np.random.default_rng(0), AugmentConfig(**ALL_OFF, renormalize=False))
    np.testing.assert_array_equal(same, image)


def test_blur_and_low_resolution_can_act_on_one_axis_only():
    image = np.zeros((1, 32, 32), np.float32)
    image[0, 16:, :] = 1.0  # a horizontal edge: only changes along y (axis 1)
    flat = augment._low_resolution(image, (1.0, 3.0))  # low resolution along x only: the edge stays sharp
    np.testing.assert_allclose(flat, image, atol=1e-6)
    soft = augment._low_resolution(image, (3.0, 1.0))
    assert 0.0 < soft[0, 16, 5] < 1.0 or 0.0 < soft[0, 15, 5] < 1.0


def test_low_resolution_keeps_a_flat_image_flat_up_to_the_border():
    # torchio's resampling back would extrapolate zeros past the last low-resolution pixel; the edge padding
    # keeps the border rows at the image's value
    flat = np.full((1, 30, 31), 0.6, np.float32)
    for factors in ((2.7, 2.7), (1.5, 3.0)):
        np.testing.assert_allclose(augment._low_resolution(flat, factors), flat, atol=1e-5)


def test_robust_augmentation_repeats_exactly_for_one_seed():
    image, _ = _blob_image()
    aug = AugmentConfig(**{k: 1.0 for k in ALL_OFF}, renormalize=False)  # every transform on
    first, again = (augment.robust_intensity_augment(image, np.random.default_rng(7), aug) for _ in range(2))
    np.testing.assert_array_equal(first, again)
    other = augment.robust_intensity_augment(image, np.random.default_rng(8), aug)
    assert np.abs(other - first).max() > 1e-3


def test_robust_rescaling_and_labels_stay_aligned():
    image, label = _blob_image()
    config = ToolTrainerConfig(batch_size=6, crop_size=32, foreground_crop_prob=0.0, geometric_aug=False,
                               aug={**ALL_OFF, "gamma_prob": 1.0, "gamma_log_range": 0.5})
    calls = []

    def rescale(x):
        calls.append(x.shape)
        return np.clip((x - x.min()) / (x.max() - x.min()), 0, 1)

    x, y = make_batch([(image, label)], config, np.random.default_rng(0), rescale)
    assert len(calls) == 6 and calls[0] == image.shape  # re-scaled whole image, before the crop
    assert x.shape == (6, 1, 32, 32) and float(x.min()) >= 0 and float(x.max()) <= 1
    bright = (x[:, 0] > 0.5).long()
    assert (bright == y).float().mean() > 0.99  # gamma keeps the order of intensities


def test_augment_config_from_dict_validates_and_resume_key_is_json_stable():
    config = ToolTrainerConfig(aug={"blur_prob": 0.5, "blur_sigma": [0.5, 1.0]})
    assert isinstance(config.aug, AugmentConfig) and config.aug.blur_sigma == (0.5, 1.0)
    with pytest.raises(ConfigError, match="unknown"):
        ToolTrainerConfig(aug={"sharpen_prob": 0.5})
    with pytest.raises(ConfigError, match="noise_prob"):
        ToolTrainerConfig(aug={"noise_prob": 1.5})
    with pytest.raises(ConfigError, match="aug_policy"):
        ToolTrainerConfig(aug_policy="heavy")


def test_class_balanced_crops_visit_small_classes():
    label = np.zeros((64, 64), np.int64)
    label[:, :48] = 1          # a large class
    label[60:62, 60:62] = 2    # a 4-pixel class
    image = np.zeros((1, 64, 64), np.float32)

    def share(balanced: bool) -> float:
        rng = np.random.default_rng(0)
        return np.mean([(augment._crop(image, label, 16, rng, 1.0, balanced)[1] == 2).any() for _ in range(200)])

    assert share(True) > 0.35 and share(False) < 0.1


def test_shipped_recipes_are_versioned():
    assert shipped.SHIPPED_VERSIONS["unet-nuclei"] == "2" and shipped.shipped_config("unet-nuclei", "x").aug_policy == "basic"
    for name in ("unet-mni-tissue", "ifunet-mni-tissue", "allukan-mni-tissue", "unet-ct-phantom"):
        config = shipped.shipped_config(name, "x")
        assert config.aug_policy == "robust" and config.max_steps >= 800 and shipped.SHIPPED_VERSIONS[name] == "3"
    assert shipped.shipped_config("unet-ct-phantom", "x").class_balanced_crops
    # version 3: lesions drawn afresh with several dataset seeds, no intensity augmentation, float16 file
    lesion = shipped.shipped_config("unet-mni-lesion", "x")
    assert shipped.SHIPPED_VERSIONS["unet-mni-lesion"] == "3" and "unet-mni-lesion" in shipped.SHIPPED_FLOAT16
    assert len(lesion.dataset_seeds) >= 2 and lesion.dataset_seed == 0 and not lesion.intensity_aug and lesion.max_steps >= 3000
    assert shipped.SHIPPED_FLOAT16 == {"unet-mni-lesion"}


def test_shipped_checkpoint_float16_copy(tmp_path):
    torch.manual_seed(0)
    tool = build_segmenter("unet", pretrained=False, class_names=CLASSES, num_classes=2, dataset="tiny-blobs", width=2, depth=2)
    tool.save_pretrained(tmp_path / "best")
    assert shipped.shipped_checkpoint("unet-mni-tissue", tmp_path / "best") == tmp_path / "best"
    half = shipped.shipped_checkpoint("unet-mni-lesion", tmp_path / "best")
    assert half == tmp_path / "best-float16"
    state = tt.load_safetensors(half / "model.safetensors")
    assert {v.dtype for v in state.values() if v.is_floating_point()} == {torch.float16}
    assert any(not v.is_floating_point() for v in state.values())  # batch-norm counters keep their dtype
    loaded = load_tool("unet", checkpoint=str(half))
    for (name, a), b in zip(tool.net.state_dict().items(), loaded.net.state_dict().values()):
        assert b.dtype == a.dtype, name  # loaded back into the float32 network
        torch.testing.assert_close(b.float(), a.float(), atol=2e-3, rtol=2e-3, msg=name)


def test_evaluate_dice_augmented_is_seeded(tiny_dataset):
    torch.manual_seed(0)
    tool = build_segmenter("unet", pretrained=False, class_names=CLASSES, num_classes=2, dataset="tiny-blobs", width=2, depth=2)
    cases = list(tiny_dataset.cases("val"))
    a = tt.evaluate_dice_augmented(tool, cases, copies=2, seed=0)
    b = tt.evaluate_dice_augmented(tool, cases, copies=2, seed=0)
    assert a == b and set(a["dice"]) == {"blob"} and 0.0 <= a["mean_dice"] <= 1.0 and a["copies"] == 2
