"""Train an automatic segmenter (`unet`, `ifunet`, `allukan`) on a builtin dataset or a user folder.

    from medagent.train.segmenter_config import ToolTrainerConfig
    from medagent.train.tool_trainer import train_tool
    best = train_tool(ToolTrainerConfig(model="ifunet", dataset="mni-tissue", max_steps=600, seed=0))
    tool = load_tool("ifunet", checkpoint=str(best))

This module is the loop and what it needs, in the order it runs: `train_tool` (start or resume, then
steps and validations), the training data (`load_training_data`, `training_cases`), the loss
(`dice_ce_loss`) and learning-rate schedule, validation (`evaluate_dice`; `evaluate_dice_augmented` for
robustness checks), and the resume state (`_save_state` / `_load_state`). Elsewhere:
    medagent.train.segmenter_config    `ToolTrainerConfig` and `AugmentConfig` (every field documented)
    medagent.train.augment             `make_batch`: crops, intensity and geometric augmentation
    medagent.train.shipped_segmenters  the shipped checkpoints' recipes, installing them, their model cards

Loss: cross-entropy + soft Dice over the foreground classes. Inputs go through
`medagent.tools.segmenters.model_input` (the same intensity scaling as inference), then the
augmentation of `medagent.train.augment`. Every `val_every` steps the model predicts the whole
validation images and the mean foreground Dice (`medagent.metrics.per_class`) decides the best checkpoint.

Output folder (`output_dir`):
    best/         model.safetensors + config.json of the best validation Dice (what `train_tool` returns)
    last/         the latest state: weights, optimizer, step, RNG, best score (for resume)
    config.json   this trainer config;  versions.json  package versions, git SHA, seed
    metrics.jsonl one line per validation: step, train loss, val Dice per class and mean
An interrupted run continues from `last/` when started again with `resume=True` (the default); with the
same config the resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.case import Case, labelled_2d
from medagent.data.dataset import Dataset
from medagent.errors import ConfigError, DataError
from medagent.tools.segmenters import SegmenterConfig, SegmenterTool, build_segmenter, load_safetensors, model_input
from medagent.train.augment import make_batch, rescaler, robust_intensity_augment
from medagent.train.config_io import upgrade_keys
from medagent.train.segmenter_config import AugmentConfig, ToolTrainerConfig


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train_tool(config: ToolTrainerConfig, dataset: Dataset | None = None) -> Path:
    """Train `config.model`; returns the folder of the best checkpoint (`output_dir/best`).

    Args:
        config: see `ToolTrainerConfig`.
        dataset: use this `Dataset` instead of loading `config.dataset` / `config.data_dir` (not together
            with `config.dataset_seeds`).
    """
    if dataset is not None and config.dataset_seeds:
        raise ConfigError("ToolTrainerConfig.dataset_seeds loads builtin datasets itself; do not pass dataset= too")
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = dataset if dataset is not None else load_training_data(config)
    info = dataset.info
    train_cases = training_cases(config, dataset)
    if not train_cases:
        raise DataError(f"dataset {info.name!r} has no labelled training cases")
    try:
        val_cases = labelled_2d(dataset.cases("val"))
    except DataError:
        val_cases = []
    if not val_cases:  # no validation split: hold out every 5th training case
        val_cases, train_cases = train_cases[::5], [c for i, c in enumerate(train_cases) if i % 5] or train_cases
    if config.max_val_cases:
        val_cases = val_cases[: config.max_val_cases]
    seg_fields = dict(in_channels=train_cases[0].channels, num_classes=len(info.class_names),
                      class_names=dict(info.class_names), modality=info.modality, dataset=info.name)
    seg_fields.update(config.model_config)

    def new_optimizer(tool: SegmenterTool) -> torch.optim.Optimizer:
        return torch.optim.AdamW(tool.net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    last = out / "last"
    if config.resume and (last / "trainer_state.json").exists():
        from medagent.tools.segmenters import TOOL_CLASSES

        tool, optimizer, step, best, rng = _load_state(last, TOOL_CLASSES[config.model], new_optimizer, config)
    else:
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        tool = build_segmenter(config.model, pretrained=False, **seg_fields)
        optimizer = new_optimizer(tool)
        step, best = 0, -1.0
        (out / "metrics.jsonl").write_text("")
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=2, default=str) + "\n")
    _write_versions(out, config.seed)
    pairs = _prepare(train_cases, tool.config)
    rescale = rescaler(tool.config)
    bar = _progress(config.max_steps, step, config.progress, f"train {config.model}")
    started, losses = time.time(), []
    try:
        while step < config.max_steps:
            tool.net.train()
            x, y = make_batch(pairs, config, rng, rescale)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, config.max_steps)
            loss = dice_ce_loss(tool.net(x), y, config.dice_weight, config.ce_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", best=f"{best:.3f}")
            if step % config.val_every == 0 or step == config.max_steps:
                tool.net.eval()
                result = evaluate_dice(tool, val_cases)
                if result["mean_dice"] > best:
                    best = result["mean_dice"]
                    tool.save_pretrained(out / "best")
                record = {"step": step, "train_loss": float(np.mean(losses)), "val": result, "best": best,
                          "seconds": round(time.time() - started, 2)}
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps(record) + "\n")
                losses = []
                _save_state(last, tool, optimizer, step, best, rng, config)
    finally:
        if bar is not None:
            bar.close()
    return out / "best"


def _progress(total: int, done: int, enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, desc=desc, dynamic_ncols=True)


def _write_versions(out: Path, seed: int) -> None:
    from medagent.provenance import collect_versions

    (out / "versions.json").write_text(json.dumps(collect_versions(seed), indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def load_training_data(config: ToolTrainerConfig) -> Dataset:
    """The dataset named by `config` (a user folder when `data_dir` is set, else a builtin one)."""
    if config.data_dir:
        from medagent.data.layouts import (
            load_folder,  # written alongside; imported only when used
        )

        return load_folder(config.data_dir)
    from medagent.data.builtin import load_builtin

    return load_builtin(config.dataset, seed=config.dataset_seed)


def training_cases(config: ToolTrainerConfig, dataset: Dataset) -> list[Case]:
    """The 2D training cases: `dataset`'s train split, or with `config.dataset_seeds` the train splits of
    the builtin `config.dataset` drawn with each of those seeds, concatenated in that order."""
    if not config.dataset_seeds:
        return labelled_2d(dataset.cases("train"))
    from medagent.data.builtin import load_builtin

    cases: list[Case] = []
    for s in config.dataset_seeds:
        cases.extend(labelled_2d(load_builtin(config.dataset, seed=s).cases("train")))
    return cases


def _prepare(cases: list[Case], seg: SegmenterConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scaled image (C, H, W) float32, label (H, W) int64) pairs; labels beyond the classes are an error."""
    pairs = []
    for case in cases:
        if case.label.max(initial=0) >= seg.num_classes:
            raise DataError(f"case {case.id!r}: label value {int(case.label.max())} outside the {seg.num_classes} classes {seg.class_names}")
        pairs.append((model_input(case.image, case.modality, seg, case.id), case.label.astype(np.int64)))
    return pairs


# ----------------------------------------------------------------------------------------------
# loss and learning rate
# ----------------------------------------------------------------------------------------------
def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0) -> torch.Tensor:
    """Cross-entropy + (1 - soft Dice) averaged over foreground classes; logits (N, K, H, W), target (N, H, W)."""
    ce = F.cross_entropy(logits, target)
    probs = logits.softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(probs.dtype)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    soft_dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce_weight * ce + dice_weight * (1.0 - soft_dice[1:].mean())


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------
def evaluate_dice(tool: SegmenterTool, cases: list[Case]) -> dict[str, Any]:
    """Mean Dice per foreground class (by name) and overall on whole images; `medagent.metrics.per_class`."""
    from medagent.metrics import per_class

    classes = list(range(1, tool.config.num_classes))
    scores = np.zeros((len(cases), len(classes)))
    for i, case in enumerate(cases):
        pred = tool.predict(case).mask
        result = per_class(pred, case.label, classes=classes, metrics=("dice",))
        scores[i] = [result[c]["dice"] for c in classes]
    per = {tool.config.class_names[c]: float(scores[:, j].mean()) for j, c in enumerate(classes)}
    return {"dice": per, "mean_dice": float(scores.mean()) if scores.size else float("nan")}


def evaluate_dice_augmented(tool: SegmenterTool, cases: list[Case], aug: AugmentConfig | None = None, copies: int = 2,
                            seed: int = 0) -> dict[str, Any]:
    """Mean foreground Dice on `copies` seeded robust-policy augmentations of each case (whole images).

    A robustness check that uses only the trainer's own augmentation family (never the evaluation's
    shifts, `medagent.data.shifts`); the draws depend on (seed, case index, copy), so it is repeatable.
    """
    from medagent.metrics import per_class

    aug = aug or AugmentConfig()
    rescale = rescaler(tool.config)
    classes = list(range(1, tool.config.num_classes))
    rows = []
    for i, case in enumerate(cases):
        x = model_input(case.image, case.modality, tool.config, case.id)
        for k in range(copies):
            xa = robust_intensity_augment(x, np.random.default_rng([seed, i, k]), aug, rescale)
            pred = tool.predict_probabilities(xa).argmax(0).astype(np.uint8)
            result = per_class(pred, case.label, classes=classes, metrics=("dice",))
            rows.append([result[c]["dice"] for c in classes])
    scores = np.asarray(rows, float).reshape(-1, len(classes))
    per = {tool.config.class_names[c]: float(scores[:, j].mean()) for j, c in enumerate(classes)}
    return {"dice": per, "mean_dice": float(scores.mean()) if scores.size else float("nan"), "copies": copies, "seed": seed}


# ----------------------------------------------------------------------------------------------
# state for resume (safetensors + JSON: no pickles)
# ----------------------------------------------------------------------------------------------
def _save_state(folder: Path, tool: SegmenterTool, optimizer: torch.optim.Optimizer, step: int, best: float,
                rng: np.random.Generator, trainer_config: ToolTrainerConfig) -> None:
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    tool.save_pretrained(tmp)
    opt = optimizer.state_dict()
    tensors = {}
    for pid, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"{pid}.{key}"] = value.detach().cpu().contiguous() if torch.is_tensor(value) else torch.tensor(value)
    tensors["torch_rng"] = torch.get_rng_state()
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    meta = {"step": step, "best": best, "param_groups": opt["param_groups"], "numpy_rng": rng.bit_generator.state,
            "trainer_config": dataclasses.asdict(trainer_config)}
    (tmp / "trainer_state.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():  # replace atomically enough: an interruption leaves either old or new
        old = folder.with_name(folder.name + ".old")
        folder.rename(old)
        tmp.rename(folder)
        for p in old.iterdir():
            p.unlink()
        old.rmdir()
    else:
        tmp.rename(folder)


_RESUME_MUST_MATCH = ("model", "dataset", "data_dir", "dataset_seed", "dataset_seeds", "batch_size", "crop_size", "seed", "model_config", "max_steps", "lr",
                      "aug_policy", "aug")


def _load_state(folder: Path, tool_cls: type[SegmenterTool], optimizer_factory, config: ToolTrainerConfig):
    meta = json.loads((folder / "trainer_state.json").read_text())
    saved = upgrade_keys(ToolTrainerConfig, meta["trainer_config"])  # runs saved before the rename: steps, out_dir
    now = json.loads(json.dumps(dataclasses.asdict(config)))  # as JSON sees it (tuples become lists)
    for name in _RESUME_MUST_MATCH:
        was = saved.get(name, [] if name == "dataset_seeds" else None)  # states saved before the field existed
        if was != now[name]:
            raise ConfigError(
                f"{folder}: cannot resume: field {name!r} was {was!r}, now {now[name]!r}; "
                "use another output_dir or resume=False"
            )
    tool = tool_cls.from_pretrained(folder)
    optimizer = optimizer_factory(tool)
    tensors = load_safetensors(folder / "optimizer.safetensors")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key == "torch_rng":
            continue
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    torch.set_rng_state(tensors["torch_rng"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy_rng"]
    return tool, optimizer, int(meta["step"]), float(meta["best"]), rng
