"""SAM trainer: runs on synthetic shapes, saves a loadable model, freezes parts, resumes exactly, learns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medagent.data.case import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.errors import ConfigError
from medagent.tools.sam import PRESETS, TINY_ARCH, SamTool, build, build_sam
from medagent.train import sam_trainer as st
from medagent.train.sam_trainer import SamTrainerConfig, train_sam


def _shapes_case(seed: int, with_instances: bool) -> Case:
    rng = np.random.default_rng(seed)
    h, w = 48, 64
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros((h, w), np.uint8)
    inst = np.zeros((h, w), np.uint16)
    for k in range(1, 3):
        cy, cx = rng.integers(10, h - 10), rng.integers(10, w - 10)
        ry, rx = rng.integers(4, 9, size=2)
        disk = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        label[disk] = 1
        inst[disk] = k
    image = (0.2 + 0.6 * label + 0.05 * rng.standard_normal((h, w))).astype(np.float32)[None]
    return Case(image=image, label=label, instances=inst if with_instances else None, modality="microscopy", id=f"s{seed}")


def _dataset(name: str, with_instances: bool) -> Dataset:
    info = DatasetInfo(name=name, description="synthetic ellipses", modality="microscopy",
                       class_names={0: "background", 1: "blob"}, label_origin="synthetic", license="none", source="test")
    return Dataset(info=info, splits={
        "train": CaseList.from_cases([_shapes_case(i, with_instances) for i in range(4)]),
        "val": CaseList.from_cases([_shapes_case(100 + i, with_instances) for i in range(2)]),
    })


@pytest.fixture(scope="module")
def datasets():
    return [_dataset("blobs-inst", True), _dataset("blobs-class", False)]


@pytest.fixture(scope="module")
def start_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    tool = SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH, model_type="tiny")
    return str(tool.save_pretrained(tmp_path_factory.mktemp("start") / "sam"))


def _cfg(tmp_path, **kw) -> SamTrainerConfig:
    base = dict(max_steps=3, batch_images=2, objects_per_image=2, shift_copies=0, output_dir=str(tmp_path / "run"),
                progress=False, val_objects=4, save_every=2, log_every=1, warmup_steps=1, lr=1e-3, num_threads=1)
    base.update(kw)
    return SamTrainerConfig(**base)


def test_train_from_checkpoint_saves_loadable_model(tmp_path, datasets, start_ckpt):
    cfg = _cfg(tmp_path, checkpoint=start_ckpt, click_iterations=2, box_prob=0.5)
    model_dir = train_sam(cfg, datasets=datasets)
    tool = build(checkpoint=str(model_dir))
    assert tool.preprocessing.name == "tiny"
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "step" in x] == [1, 2, 3]
    final = lines[-1]
    assert final["final"] and set(final["val_box_dice"]) == {"blobs-inst", "blobs-class"}
    assert json.loads((tmp_path / "run" / "config.json").read_text())["max_steps"] == 3
    # weights changed from the start checkpoint
    start = build(checkpoint=start_ckpt)
    k = "mask_decoder.iou_token.weight"
    assert not torch.equal(start.model.state_dict()[k], tool.model.state_dict()[k])


def test_frozen_parts_do_not_change(tmp_path, datasets, start_ckpt):
    cfg = _cfg(tmp_path, checkpoint=start_ckpt, max_steps=2, train_encoder=False, train_prompt_encoder=False, val_objects=0,
               box_mask_prior=False)
    tool = build(checkpoint=str(train_sam(cfg, datasets=datasets)))
    assert build(checkpoint=start_ckpt).preprocessing.box_mask_prior and not tool.preprocessing.box_mask_prior
    start = build(checkpoint=start_ckpt)
    for name, v in start.model.state_dict().items():
        same = torch.equal(v, tool.model.state_dict()[name])
        assert same == (not name.startswith("mask_decoder")), name


def test_resume_continues_exactly(tmp_path, datasets, start_ckpt, monkeypatch):
    kw = dict(checkpoint=start_ckpt, max_steps=4, click_iterations=1, val_objects=0)
    full = build(checkpoint=str(train_sam(_cfg(tmp_path / "a", **kw), datasets=datasets)))

    real = st._train_step
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # state was saved after step 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(st, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_sam(_cfg(tmp_path / "b", **kw), datasets=datasets)
    monkeypatch.setattr(st, "_train_step", real)
    resumed = build(checkpoint=str(train_sam(_cfg(tmp_path / "b", **kw), datasets=datasets)))
    for name, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], v, msg=name)


def test_training_step_learns_a_fixed_batch(datasets):
    torch.manual_seed(0)
    tool = SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH)
    cfg = SamTrainerConfig(batch_images=2, objects_per_image=2, click_iterations=0, box_prob=1.0, box_jitter=0.0, augment=False)
    groups = st.build_training_items(datasets, "train", tool.preprocessing, 16, 0, 0)
    rng = np.random.default_rng(0)
    x01, gts = st._sample_batch(groups, cfg, rng, 0)
    model = tool.model.train()
    params = st._set_trainable(model, cfg)
    opt = torch.optim.AdamW(params, lr=2e-3)
    losses = []
    for _ in range(12):
        loss, _ = st._train_step(model, x01, gts, cfg, tool.preprocessing, np.random.default_rng(1), True)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_objects_and_bad_config(datasets):
    from medagent.tools.sam.prompts import iter_objects

    inst_case = datasets[0].cases("train")[0]
    assert len(list(iter_objects(inst_case, 1))) == len(np.unique(inst_case.instances)) - 1
    with pytest.raises(ConfigError):
        SamTrainerConfig(loss="l2")
    with pytest.raises(ConfigError):
        SamTrainerConfig(train_encoder=False, train_prompt_encoder=False, train_decoder=False)
    with pytest.raises(ConfigError):
        SamTrainerConfig(max_steps=0)


def test_stop_step_stops_there_on_the_full_schedule(tmp_path, datasets, start_ckpt):
    cfg = _cfg(tmp_path, checkpoint=start_ckpt, max_steps=6, stop_step=2, val_objects=0)
    train_sam(cfg, datasets=datasets)
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "step" in x] == [1, 2] and lines[-1]["steps"] == 2
    # the learning rate at step 2 is the one of a 6-step schedule, not a 2-step one
    assert lines[1]["lr"] == pytest.approx(st._lr_at(1, cfg, 1e-3))
