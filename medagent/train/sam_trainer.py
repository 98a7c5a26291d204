"""Fine-tune SAM (or train the tiny SAM from scratch) with simulated prompts, MedSAM / interactive style.

    from medagent.train.sam_trainer import SamTrainerConfig, train_sam
    model_dir = train_sam(SamTrainerConfig(datasets=["mni-lesion", "nuclei"], max_steps=500, seed=0))
    sam = load_tool("sam", checkpoint=str(model_dir))

What one step does:
1. Sample `batch_images` training images (datasets in turn, then uniformly) and up to
   `objects_per_image` objects in each. An object is an instance (datasets with instance maps) or an
   8-connected component of one foreground class with at least `min_object_area` pixels.
2. Images go through the checkpoint's own preprocessing (`medagent.tools.sam.preprocess`, after the
   intensity module), so training sees exactly what inference sees. Augmentation: with `shift_copies` > 0
   each image also exists as seeded domain-shifted copies (`medagent.data.shifts.apply_shift`, random
   centre B-E, severity 1-4); every step adds a random flip and cheap intensity jitter (gamma, contrast,
   noise).
3. The first prompt is a GT box jittered by up to `box_jitter` of its size (probability `box_prob`;
   with `box_mask_prior` the box is also rendered into the mask input of that first pass) or
   a positive click at the object's interior-most pixel. Then `r` ~ U{0..click_iterations} rounds of
   interactive simulation without gradient: predict, click at the distance-transform maximum of the
   largest error region (positive in a false negative, negative in a false positive), feed the previous
   low-res logits as the mask input. The last prediction gets the loss: Dice + BCE (or Dice + focal)
   on the logits upsampled to the input frame, plus MSE of the predicted IoU. A lone click uses the
   three multimask outputs and the loss of the best one (SAM's ambiguity handling).

Parts to train: `train_encoder`, `train_prompt_encoder`, `train_decoder`; frozen parts get no gradient
(and a frozen encoder runs under no_grad). From scratch for the tiny config (`checkpoint=None`), from an
official `.pth` or a saved folder otherwise.

Output folder (`output_dir`):
    model/        model.safetensors + config.json of the final weights (what `train_sam` returns)
    last/state.pt model, optimizer, step and RNG states for resume (read with weights_only=True)
    config.json   this config;  versions.json  package versions, git SHA, seed
    metrics.jsonl one line per `log_every` steps (loss, lr, seconds) and a final validation line
An interrupted run continues from `last/` when started again with `resume=True` (the default).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.case import Case
from medagent.data.dataset import Dataset
from medagent.errors import ConfigError, DataError
from medagent.metrics import dice
from medagent.tools.sam.model import TINY_ARCH, build_sam, decode_per_prompt
from medagent.tools.sam.preprocess import PRESETS, box_prior_logits, image_to_rgb01
from medagent.tools.sam.prompts import corrective_click, iter_objects, jitter_box, mask_box
from medagent.tools.sam.tool import SamConfig, SamTool, build


@dataclass
class SamTrainerConfig:
    """Configuration of `train_sam` (CPU-sized defaults).

    Attributes:
        datasets: builtin dataset names or dataset folders (`medagent.data.sources.open_dataset`).
        split: split the training images come from; "val" of the same datasets is used to report Dice.
        checkpoint: None trains the tiny SAM from scratch; otherwise an official SAM / MedSAM `.pth` or a
            folder saved by `SamTool.save_pretrained` to fine-tune.
        checkpoint_type: "auto", "sam" or "medsam" for `.pth` files (see `SamConfig`).
        train_encoder / train_prompt_encoder / train_decoder: which parts get gradients.
        max_steps: optimiser steps.
        batch_images: images per step.
        objects_per_image: prompts (objects) per image per step; the decoder runs once per image.
        lr: peak learning rate (AdamW); None -> 1e-3 from scratch, 1e-5 when fine-tuning.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up, then cosine decay to 5% of `lr`.
        loss: "dice+bce" or "dice+focal".
        iou_loss_weight: weight of the MSE between predicted and actual IoU.
        click_iterations: most corrective-click rounds simulated before the loss pass.
        box_prob: probability that an image's prompts start from a jittered GT box (else a click).
        box_jitter: each box side moves by up to this fraction of the box size (at most 20 px).
        box_mask_prior: render the (jittered) box into the mask input of a box's first pass (see
            `Preprocessing.box_mask_prior`); None keeps the checkpoint's setting (on for the tiny SAM).
            Saved with the model's preprocessing.
        min_object_area: smallest connected component (pixels) used as an object.
        shift_copies: domain-shifted copies per training image (`medagent.data.shifts`); 0 disables.
        augment: random flips and intensity jitter per step.
        seed: seeds sampling, prompts, augmentation and initialisation.
        resume: continue from `output_dir/last/state.pt` when it exists.
        output_dir: run folder (its layout: see the module docstring).
        save_every: steps between resume states.
        log_every: steps between metrics.jsonl lines.
        max_minutes: stop early (and save) after this much wall time; None = no limit. Depends on the
            machine's speed: shipped recipes use `stop_step` instead.
        stop_step: stop (and save) after this step while the learning-rate schedule still spans `max_steps`
            (a step-exact early stop, e.g. to keep an intermediate state); None = run to `max_steps`.
        val_objects: objects scored on the val split at the end (box prompt Dice); 0 skips.
        save_dtype: "float32" or "float16" for the saved model weights.
        num_threads: torch CPU threads; None leaves torch's default.
        device: torch device.
        progress: show a progress bar.
    """

    datasets: list[str] = field(default_factory=lambda: ["mni-lesion", "nuclei", "mni-tissue", "ct-phantom", "phantom"])
    split: str = "train"
    checkpoint: str | None = None
    checkpoint_type: str = "auto"
    train_encoder: bool = True
    train_prompt_encoder: bool = True
    train_decoder: bool = True
    max_steps: int = 1000
    batch_images: int = 8
    objects_per_image: int = 4
    lr: float | None = None
    weight_decay: float = 0.01
    warmup_steps: int = 50
    loss: str = "dice+bce"
    iou_loss_weight: float = 1.0
    click_iterations: int = 3
    box_prob: float = 0.75
    box_jitter: float = 0.1
    box_mask_prior: bool | None = None
    min_object_area: int = 16
    shift_copies: int = 1
    augment: bool = True
    seed: int = 0
    resume: bool = True
    output_dir: str = "medagent-runs/train-sam"
    save_every: int = 100
    log_every: int = 20
    max_minutes: float | None = None
    stop_step: int | None = None
    val_objects: int = 200
    save_dtype: str = "float32"
    num_threads: int | None = None
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.loss not in ("dice+bce", "dice+focal"):
            raise ConfigError(f"loss must be 'dice+bce' or 'dice+focal', got {self.loss!r}")
        if not (self.train_encoder or self.train_prompt_encoder or self.train_decoder):
            raise ConfigError("nothing to train: set at least one of train_encoder / train_prompt_encoder / train_decoder")
        for name in ("max_steps", "batch_images", "objects_per_image"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.datasets:
            raise ConfigError("datasets is empty")
        if self.save_dtype not in ("float32", "float16"):
            raise ConfigError(f"save_dtype must be 'float32' or 'float16', got {self.save_dtype!r}")


# -- data ------------------------------------------------------------------------------------------

@dataclass
class _Item:
    """One training image in the model's input frame: (3, S, S) in [0, 1] (zero padded) + object map."""

    x01: torch.Tensor  # (3, S, S) float32, [0, 1], padding 0
    objects: torch.Tensor  # (S, S) int32, 0 = none, k = object k
    n_objects: int
    valid: tuple[int, int]  # (rh, rw)
    source: str


def _to_frame(case: Case, pre, min_area: int) -> _Item | None:
    """A 2D case -> `_Item` in the preprocessing's input frame, or None when it has no object."""
    objs = list(iter_objects(case, min_area))
    if not objs:
        return None
    h, w = case.shape
    rh, rw = pre.input_size(h, w)
    s = pre.image_size
    rgb = torch.from_numpy(image_to_rgb01(case.image, case.modality))[None]
    rgb = F.interpolate(rgb, size=(rh, rw), mode="bilinear", align_corners=False, antialias=(rh < h or rw < w))
    x01 = F.pad(rgb.clamp(0, 1), (0, s - rw, 0, s - rh))[0]
    omap = np.zeros((h, w), np.int32)
    for k, m in enumerate(objs, start=1):
        omap[m] = k
    o = torch.from_numpy(omap)[None, None].float()
    o = F.interpolate(o, size=(rh, rw), mode="nearest")
    o = F.pad(o, (0, s - rw, 0, s - rh))[0, 0].to(torch.int32)
    present = [int(v) for v in torch.unique(o) if v > 0]
    if not present:
        return None
    return _Item(x01=x01, objects=o, n_objects=len(objs), valid=(rh, rw), source=case.id)


def _open(name: str, seed: int) -> Dataset:
    from medagent.data.sources import open_dataset

    return open_dataset(name, seed=seed)


def _cases_2d(ds: Dataset, split: str) -> list[Case]:
    out: list[Case] = []
    for case in ds.cases(split):
        if case.label is None:
            continue
        if case.ndim == 3:
            out.extend(case.iter_slices(only_with_target=True))
        else:
            out.append(case)
    return out


def _shifted(case: Case, rng: np.random.Generator, seed: int) -> Case | None:
    try:
        from medagent.data.shifts import apply_shift, centres_for
    except ImportError:  # shifts module absent: intensity jitter only
        return None
    centres = [c for c in centres_for(case.modality) if c != "A"]
    if not centres:
        return None
    centre = str(rng.choice(centres))
    return apply_shift(case, centre, severity=float(rng.uniform(1, 4)), seed=seed)


def build_training_items(
    datasets: Sequence[Dataset], split: str, pre, min_area: int, shift_copies: int, seed: int, progress: bool = False
) -> list[list[_Item]]:
    """Per dataset, the training images (and shifted copies) in the model's input frame."""
    rng = np.random.default_rng(seed)
    groups: list[list[_Item]] = []
    for ds in datasets:
        cases = _cases_2d(ds, split)
        items: list[_Item] = []
        for case in cases:
            variants = [case]
            for j in range(shift_copies):
                s = _shifted(case, rng, seed * 1000 + j)
                if s is not None:
                    variants.append(s)
            for v in variants:
                it = _to_frame(v, pre, min_area)
                if it is not None:
                    items.append(it)
        if not items:
            raise DataError(f"dataset {ds.info.name!r} has no {split!r} image with an object of >= {min_area} px")
        groups.append(items)
    return groups


# -- prompts in the input frame ---------------------------------------------------------------------

def _sample_batch(groups: list[list[_Item]], cfg: SamTrainerConfig, rng: np.random.Generator, step: int):
    """Images (B, 3, S, S) in [0, 1] and object masks (B, K, S, S) bool (objects drawn with replacement
    only when an image has fewer than K)."""
    imgs, gts = [], []
    k_obj = cfg.objects_per_image
    for b in range(cfg.batch_images):
        g = groups[(step * cfg.batch_images + b) % len(groups)]
        item = g[int(rng.integers(len(g)))]
        ids = [int(v) for v in torch.unique(item.objects) if v > 0]
        pick = rng.choice(ids, size=k_obj, replace=len(ids) < k_obj)
        masks = torch.stack([item.objects == int(k) for k in pick])
        x = item.x01
        if cfg.augment:
            if rng.random() < 0.5:
                x, masks = x.flip(-1), masks.flip(-1)
            if rng.random() < 0.5:
                x, masks = x.flip(-2), masks.flip(-2)
        imgs.append(x)
        gts.append(masks)
    x = torch.stack(imgs)
    if cfg.augment:
        n = len(imgs)
        gamma = torch.exp(torch.from_numpy(rng.normal(0, 0.25, (n, 1, 1, 1))).float())
        contrast = torch.from_numpy(rng.uniform(0.8, 1.2, (n, 1, 1, 1))).float()
        noise = torch.from_numpy(rng.uniform(0, 0.04, (n, 1, 1, 1))).float()
        gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
        x = (x.clamp_min(0) ** gamma * contrast + noise * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    return x, torch.stack(gts)


def _normalise(x01: torch.Tensor, pre) -> torch.Tensor:
    mean = torch.tensor(pre.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.pixel_std).view(1, 3, 1, 1)
    return (x01 * pre.value_scale - mean) / std


def _initial_prompts(gt: torch.Tensor, use_box: bool, cfg: SamTrainerConfig, rng: np.random.Generator):
    """First prompt of N objects (N, S, S): boxes (N, 4), or one positive click each (N, 1, 2) + labels (N, 1)."""
    s = gt.shape[-1]
    masks = gt.numpy()
    if use_box:
        boxes = [jitter_box(mask_box(m), (s, s), rng, fraction=cfg.box_jitter) for m in masks]
        return torch.tensor(np.stack(boxes), dtype=torch.float32), None, None
    pts = []
    for m in masks:
        c = corrective_click(np.zeros(m.shape, bool), m)
        pts.append([c.x, c.y])
    return None, torch.tensor(pts, dtype=torch.float32)[:, None], torch.ones(len(pts), 1, dtype=torch.int64)


def _decode(model, feats, boxes, points, labels, mask_in, multimask: bool):
    """All prompt sets in one decoder call; feats (N, C, G, G) holds each prompt set's image embedding."""
    sparse, dense = model.prompt_encoder(points=None if points is None else (points, labels), boxes=boxes, masks=mask_in)
    return decode_per_prompt(model.mask_decoder, feats, model.prompt_encoder.get_dense_pe(), sparse, dense, multimask)


def _seg_loss(logits: torch.Tensor, gt: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-mask Dice + BCE/focal. logits/gt (N, M, S, S) -> (N, M)."""
    p = torch.sigmoid(logits)
    inter = (p * gt).sum((-1, -2))
    dice = 1 - (2 * inter + 1) / (p.sum((-1, -2)) + gt.sum((-1, -2)) + 1)
    bce = F.binary_cross_entropy_with_logits(logits, gt, reduction="none")
    if kind == "dice+focal":
        pt = torch.where(gt > 0.5, p, 1 - p)
        alpha = torch.where(gt > 0.5, 0.25, 0.75)
        bce = alpha * (1 - pt) ** 2 * bce * 20.0  # x20 puts focal on BCE's scale (SAM weights focal:dice 20:1)
    return dice + bce.mean((-1, -2))


def _train_step(model, x01, gts, cfg: SamTrainerConfig, pre, rng: np.random.Generator, train_encoder: bool):
    """Loss of one step. x01 (B, 3, S, S), gts (B, K, S, S) bool. Returns (loss, click rounds)."""
    s = pre.image_size
    b, k = gts.shape[:2]
    x = _normalise(x01, pre)
    if train_encoder:
        feats = model.image_encoder(x)
    else:
        with torch.no_grad():
            feats = model.image_encoder(x)
    feats = feats.repeat_interleave(k, dim=0)  # (B*K, C, G, G): one embedding per prompt set
    gt = gts.reshape(b * k, s, s)
    gt_np = gt.numpy()
    rounds = int(rng.integers(0, cfg.click_iterations + 1))
    boxes, points, labels = _initial_prompts(gt, rng.random() < cfg.box_prob, cfg, rng)
    mask_in = None
    if boxes is not None and pre.box_mask_prior:
        edges = boxes.clone()
        edges[:, 2:] += 1.0  # inclusive pixel box -> exclusive right/bottom edges
        mask_in = box_prior_logits(edges, s, model.prompt_encoder.mask_input_size[0])
    for _ in range(rounds):
        with torch.no_grad():
            low, _ = _decode(model, feats.detach(), boxes, points, labels, mask_in, False)
            pred = (F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)[:, 0] > 0).numpy()
        new_pts, new_lbl = [], []
        for i in range(b * k):
            c = corrective_click(pred[i], gt_np[i])
            if c is None:
                new_pts.append([0.0, 0.0]); new_lbl.append(-1)  # SAM's "not a point" padding
            else:
                new_pts.append([c.x, c.y]); new_lbl.append(int(c.positive))
        p = torch.tensor(new_pts, dtype=torch.float32)[:, None]
        lb = torch.tensor(new_lbl, dtype=torch.int64)[:, None]
        points = p if points is None else torch.cat([points, p], 1)
        labels = lb if labels is None else torch.cat([labels, lb], 1)
        mask_in = low
    multimask = boxes is None and points is not None and points.shape[1] == 1
    low, iou_pred = _decode(model, feats, boxes, points, labels, mask_in, multimask)
    up = F.interpolate(low, size=(s, s), mode="bilinear", align_corners=False)
    target = gt.float()[:, None].expand_as(up)
    seg = _seg_loss(up, target, cfg.loss)  # (N, M)
    with torch.no_grad():
        hard = (up > 0).float()
        iou = (hard * target).sum((-1, -2)) / ((hard + target) > 0).float().sum((-1, -2)).clamp_min(1)
    best = seg.argmin(dim=1)
    idx = torch.arange(b * k)
    loss = seg[idx, best].mean() + cfg.iou_loss_weight * F.mse_loss(iou_pred, iou)
    return loss, rounds


# -- the trainer -------------------------------------------------------------------------------------

def _set_trainable(model: torch.nn.Module, cfg: SamTrainerConfig) -> list[torch.nn.Parameter]:
    parts = {"image_encoder": cfg.train_encoder, "prompt_encoder": cfg.train_prompt_encoder, "mask_decoder": cfg.train_decoder}
    params = []
    for name, on in parts.items():
        for p in getattr(model, name).parameters():
            p.requires_grad_(on)
            if on:
                params.append(p)
    return params


def _lr_at(step: int, cfg: SamTrainerConfig, peak: float) -> float:
    if step < cfg.warmup_steps:
        return peak * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _initial_tool(cfg: SamTrainerConfig) -> SamTool:
    if cfg.checkpoint is None:
        torch.manual_seed(cfg.seed)
        return SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH, SamConfig(device=cfg.device), source="scratch", model_type="tiny")
    return build(cfg.checkpoint, checkpoint_type=cfg.checkpoint_type, device=cfg.device)


def _versions(seed: int) -> dict:
    """Package versions, git SHA and seed for versions.json (`medagent.provenance`)."""
    from medagent.provenance import collect_versions

    return collect_versions(seed)


def box_dice_on(tool: SamTool, cases: Sequence[Case], max_objects: int, min_area: int) -> float:
    """Mean Dice of `tool` prompted with each object's tight GT box (first `max_objects` objects)."""
    scores = []
    for case in cases:
        for m in iter_objects(case, min_area):
            scores.append(dice(tool.predict(case, boxes=mask_box(m)).mask, m))
            if len(scores) >= max_objects:
                return float(np.mean(scores))
    return float(np.mean(scores)) if scores else float("nan")


def train_sam(config: SamTrainerConfig, datasets: Sequence[Dataset] | None = None) -> Path:
    """Train per `config`; returns the folder of the final model (load it with `load_tool("sam", checkpoint=...)`).

    `datasets` overrides `config.datasets` with `Dataset` objects (tests, notebooks).
    """
    cfg = config
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    (out / "versions.json").write_text(json.dumps(_versions(cfg.seed), indent=2, default=str) + "\n")

    tool = _initial_tool(cfg)
    if cfg.box_mask_prior is not None:
        tool.predictor.preprocessing = dataclasses.replace(tool.preprocessing, box_mask_prior=cfg.box_mask_prior)
    model, pre = tool.model, tool.preprocessing
    peak = cfg.lr if cfg.lr is not None else (1e-3 if cfg.checkpoint is None else 1e-5)
    params = _set_trainable(model, cfg)
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=cfg.weight_decay)

    dsets = list(datasets) if datasets is not None else [_open(n, cfg.seed) for n in cfg.datasets]
    t_data = time.time()
    groups = build_training_items(dsets, cfg.split, pre, cfg.min_object_area, cfg.shift_copies, cfg.seed)
    t_data = time.time() - t_data

    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start = 0
    state_path = out / "last" / "state.pt"
    if cfg.resume and state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])

    def save_state(step: int) -> None:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state()}, tmp)
        tmp.replace(state_path)

    from tqdm.auto import tqdm

    metrics = (out / "metrics.jsonl").open("a")
    bar = tqdm(total=cfg.max_steps, initial=start, disable=not cfg.progress, desc="train sam", unit="step")
    t0 = time.time()
    running = []
    step = start
    model.train()
    while step < cfg.max_steps:
        lr = _lr_at(step, cfg, peak)
        for gparam in opt.param_groups:
            gparam["lr"] = lr
        x01, gts = _sample_batch(groups, cfg, rng, step)
        loss, rounds = _train_step(model, x01.to(cfg.device), gts, cfg, pre, rng, cfg.train_encoder)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        running.append(float(loss.detach()))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(running[-20:]):.3f}")
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            metrics.write(json.dumps({"step": step, "loss": float(np.mean(running[-cfg.log_every:])), "lr": lr,
                                      "seconds": round(time.time() - t0, 1)}) + "\n")
            metrics.flush()
        if step % cfg.save_every == 0:
            save_state(step)
        if cfg.max_minutes is not None and time.time() - t0 > 60 * cfg.max_minutes:
            break
        if cfg.stop_step is not None and step >= cfg.stop_step:
            break
    bar.close()
    save_state(step)
    model.eval()
    tool.clear_cache()
    model_dir = tool.save_pretrained(out / "model", dtype=cfg.save_dtype)
    final: dict[str, Any] = {"final": True, "steps": step, "train_seconds": round(time.time() - t0, 1),
                             "data_seconds": round(t_data, 1), "images": sum(len(g) for g in groups)}
    if cfg.val_objects > 0:
        final["val_box_dice"] = {}
        for ds in dsets:
            if "val" in ds.splits:
                final["val_box_dice"][ds.info.name] = box_dice_on(tool, _cases_2d(ds, "val"), cfg.val_objects, cfg.min_object_area)
    metrics.write(json.dumps(final) + "\n")
    metrics.close()
    return model_dir
