"""Train an automatic segmenter (`unet`, `ifunet`, `allukan`) on a builtin dataset or a user folder.

    from medagent.train.tool_trainer import ToolTrainerConfig, train_tool
    best = train_tool(ToolTrainerConfig(model="ifunet", dataset="mni-tissue", steps=600, seed=0))
    tool = load_tool("ifunet", checkpoint=str(best))

Loss: cross-entropy + soft Dice over the foreground classes. Inputs go through
`medagent.tools.segmenters.model_input` (the same intensity scaling as inference), then random crops and
optional augmentation (intensity: gamma, contrast/brightness, Gaussian noise, a smooth multiplicative
bias field; geometric: flips and small rotations). Every `val_every` steps the model predicts the whole
validation images and the mean foreground Dice (`medagent.metrics.per_class`) decides the best checkpoint.

Output folder (`out_dir`):
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.case import Case
from medagent.data.dataset import Dataset
from medagent.errors import ConfigError, DataError
from medagent.tools.segmenters import MODELS, SegmenterConfig, SegmenterTool, build_segmenter, load_safetensors, model_input


@dataclass
class ToolTrainerConfig:
    """How to train one segmenter. Defaults run on a CPU in minutes.

    Attributes:
        model: "unet", "ifunet" or "allukan".
        dataset: builtin dataset name (`medagent.data.builtin.load_builtin`); ignored when `data_dir` is set.
        data_dir: a user folder in a known layout (`medagent.data.layouts.load_folder`), or None.
        dataset_seed: seed of procedural builtin datasets (`load_builtin(name, seed=...)`).
        steps: optimisation steps (one batch each).
        batch_size: crops per step.
        lr: AdamW learning rate (cosine decay to 5% over `steps`, after a 5% linear warm-up).
        weight_decay: AdamW weight decay.
        crop_size: side of the square training crops in pixels (images smaller than that are padded).
        foreground_crop_prob: probability that a crop is centred on a random labelled (non-zero) pixel.
        augment: master switch of augmentation.
        intensity_aug: gamma, contrast/brightness, Gaussian noise and bias field on the scaled image.
        geometric_aug: random flips and rotations of up to `max_rotation_deg` degrees.
        max_rotation_deg: largest rotation angle in degrees.
        dice_weight / ce_weight: weights of the soft Dice and cross-entropy terms.
        val_every: validate (and save `last/`) every this many steps; the end of training always validates.
        max_val_cases: validate on at most this many validation cases (None = all).
        seed: seeds weights, crops and augmentation.
        out_dir: output folder (see module docstring).
        resume: continue from `out_dir/last` when it exists.
        num_threads: torch CPU threads (None leaves torch's default).
        progress: show a progress bar (tqdm).
        model_config: further `SegmenterConfig` fields, e.g. {"width": 8, "depth": 3, "form": "shared", "lam": 1.2}.
    """

    model: str = "unet"
    dataset: str = "mni-tissue"
    data_dir: str | None = None
    dataset_seed: int = 0
    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop_size: int = 96
    foreground_crop_prob: float = 0.7
    augment: bool = True
    intensity_aug: bool = True
    geometric_aug: bool = True
    max_rotation_deg: float = 15.0
    dice_weight: float = 1.0
    ce_weight: float = 1.0
    val_every: int = 100
    max_val_cases: int | None = None
    seed: int = 0
    out_dir: str = "medagent-runs/train-tool"
    resume: bool = True
    num_threads: int | None = None
    progress: bool = True
    model_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"ToolTrainerConfig.model must be one of {MODELS}, got {self.model!r}")
        for name in ("steps", "batch_size", "crop_size", "val_every"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ToolTrainerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"ToolTrainerConfig.lr must be > 0, got {self.lr}")


# ----------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------
def load_training_data(config: ToolTrainerConfig) -> Dataset:
    """The dataset named by `config` (a user folder when `data_dir` is set, else a builtin one)."""
    if config.data_dir:
        from medagent.data.layouts import load_folder  # written alongside; imported only when used

        return load_folder(config.data_dir)
    from medagent.data.builtin import load_builtin

    return load_builtin(config.dataset, seed=config.dataset_seed)


def _as_2d(cases: Any) -> list[Case]:
    """2D cases; a volume contributes its slices that contain labels."""
    out: list[Case] = []
    for case in cases:
        if case.label is None:
            continue
        if case.ndim == 2:
            out.append(case)
        else:
            out.extend(case.iter_slices(only_with_target=True))
    return out


def _prepare(cases: list[Case], seg: SegmenterConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """(scaled image (C, H, W) float32, label (H, W) int64) pairs; labels beyond the classes are an error."""
    pairs = []
    for case in cases:
        if case.label.max(initial=0) >= seg.num_classes:
            raise DataError(f"case {case.id!r}: label value {int(case.label.max())} outside the {seg.num_classes} classes {seg.class_names}")
        pairs.append((model_input(case.image, case.modality, seg, case.id), case.label.astype(np.int64)))
    return pairs


def _crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator, fg_prob: float) -> tuple[np.ndarray, np.ndarray]:
    """A (C, size, size) crop and its (size, size) label; pads small images with zeros / background."""
    c, h, w = image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        label = np.pad(label, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        h, w = label.shape
    if rng.random() < fg_prob and label.any():
        ys, xs = np.nonzero(label)
        k = rng.integers(len(ys))
        y0 = int(np.clip(ys[k] - size // 2, 0, h - size))
        x0 = int(np.clip(xs[k] - size // 2, 0, w - size))
    else:
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return image[:, y0 : y0 + size, x0 : x0 + size], label[y0 : y0 + size, x0 : x0 + size]


def _intensity_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gamma, contrast/brightness, a smooth multiplicative bias field and noise on a [0, 1] image."""
    c, h, w = x.shape
    if rng.random() < 0.8:
        x = np.power(np.clip(x, 0, 1), math.exp(rng.uniform(-0.5, 0.5)))
    if rng.random() < 0.8:
        x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.5:  # bias field: exp of a random low-order polynomial in y, x
        yy, xx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
        coef = rng.normal(0, 0.25, size=6)
        log_field = coef[0] * yy + coef[1] * xx + coef[2] * yy * xx + coef[3] * yy**2 + coef[4] * xx**2 + coef[5] * yy * xx**2
        x = x * np.exp(log_field)[None]
    if rng.random() < 0.5:
        x = x + rng.normal(0, rng.uniform(0.0, 0.08), size=x.shape)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _geometric_augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, max_deg: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Flips and a small rotation per sample: x (N, C, S, S) bilinear, y (N, S, S) nearest."""
    n = x.shape[0]
    angles = np.deg2rad(rng.uniform(-max_deg, max_deg, size=n))
    flips = rng.random((n, 2)) < 0.5
    theta = torch.zeros(n, 2, 3)
    for i in range(n):
        ca, sa = math.cos(angles[i]), math.sin(angles[i])
        fx = -1.0 if flips[i, 0] else 1.0
        fy = -1.0 if flips[i, 1] else 1.0
        theta[i, 0, 0], theta[i, 0, 1] = ca * fx, -sa * fy
        theta[i, 1, 0], theta[i, 1, 1] = sa * fx, ca * fy
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].long()
    return x, y


def make_batch(pairs: list[tuple[np.ndarray, np.ndarray]], config: ToolTrainerConfig, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: x (B, C, S, S) float32, y (B, S, S) int64, all randomness from `rng`."""
    xs, ys = [], []
    for _ in range(config.batch_size):
        image, label = pairs[int(rng.integers(len(pairs)))]
        xi, yi = _crop(image, label, config.crop_size, rng, config.foreground_crop_prob)
        if config.augment and config.intensity_aug:
            xi = _intensity_augment(xi, rng)
        xs.append(np.ascontiguousarray(xi))
        ys.append(np.ascontiguousarray(yi))
    x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    if config.augment and config.geometric_aug:
        x, y = _geometric_augment(x, y, rng, config.max_rotation_deg)
    return x, y


# ----------------------------------------------------------------------------------------------
# loss and validation
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


_RESUME_MUST_MATCH = ("model", "dataset", "data_dir", "dataset_seed", "batch_size", "crop_size", "seed", "model_config", "steps", "lr")


def _load_state(folder: Path, tool_cls: type[SegmenterTool], optimizer_factory, config: ToolTrainerConfig):
    meta = json.loads((folder / "trainer_state.json").read_text())
    saved = meta["trainer_config"]
    for name in _RESUME_MUST_MATCH:
        if saved.get(name) != dataclasses.asdict(config)[name]:
            raise ConfigError(
                f"{folder}: cannot resume: field {name!r} was {saved.get(name)!r}, now {dataclasses.asdict(config)[name]!r}; "
                "use another out_dir or resume=False"
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


def _lr_factor(step: int, total: int) -> float:
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# the loop
# ----------------------------------------------------------------------------------------------
def train_tool(config: ToolTrainerConfig, dataset: Dataset | None = None) -> Path:
    """Train `config.model`; returns the folder of the best checkpoint (`out_dir/best`).

    Args:
        config: see `ToolTrainerConfig`.
        dataset: use this `Dataset` instead of loading `config.dataset` / `config.data_dir`.
    """
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = dataset if dataset is not None else load_training_data(config)
    info = dataset.info
    train_cases = _as_2d(dataset.cases("train"))
    if not train_cases:
        raise DataError(f"dataset {info.name!r} has no labelled training cases")
    try:
        val_cases = _as_2d(dataset.cases("val"))
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
    bar = _progress(config.steps, step, config.progress, f"train {config.model}")
    started, losses = time.time(), []
    try:
        while step < config.steps:
            tool.net.train()
            x, y = make_batch(pairs, config, rng)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * _lr_factor(step, config.steps)
            loss = dice_ce_loss(tool.net(x), y, config.dice_weight, config.ce_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", best=f"{best:.3f}")
            if step % config.val_every == 0 or step == config.steps:
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
    try:
        from medagent.eval.runs import collect_versions

        versions = collect_versions(seed)
    except Exception:  # noqa: BLE001 - the run helper is optional here
        versions = {"torch": torch.__version__, "numpy": np.__version__, "seed": seed}
    (out / "versions.json").write_text(json.dumps(versions, indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# the recipes of the shipped checkpoints (medagent/weights/<model>-<dataset>/)
# ----------------------------------------------------------------------------------------------
_SHIPPED_COMMON = dict(steps=400, batch_size=8, crop_size=80, lr=3e-3, val_every=50, seed=0, num_threads=1,
                       model_config={"width": 8, "depth": 3})
SHIPPED_RECIPES: dict[str, dict[str, Any]] = {
    "unet-mni-tissue": dict(model="unet", dataset="mni-tissue"),
    "ifunet-mni-tissue": dict(model="ifunet", dataset="mni-tissue"),
    "allukan-mni-tissue": dict(model="allukan", dataset="mni-tissue"),
    "unet-mni-lesion": dict(model="unet", dataset="mni-lesion"),
    "unet-nuclei": dict(model="unet", dataset="nuclei", crop_size=64),
    "unet-ct-phantom": dict(model="unet", dataset="ct-phantom", crop_size=96,
                            model_config={"width": 8, "depth": 3, "ct_window": "wide"}),
}
#: test cases whose Dice the shipped-weights test recomputes (first N of the test split)
CHECK_CASES = 4


def shipped_config(name: str, out_dir: str | Path) -> ToolTrainerConfig:
    """The exact `ToolTrainerConfig` of shipped checkpoint `name` (see `SHIPPED_RECIPES`)."""
    if name not in SHIPPED_RECIPES:
        raise ConfigError(f"no recipe for shipped checkpoint {name!r}; known: {sorted(SHIPPED_RECIPES)}")
    fields = {**_SHIPPED_COMMON, **SHIPPED_RECIPES[name]}
    return ToolTrainerConfig(**fields, out_dir=str(out_dir), progress=False)


def train_shipped(name: str, work_dir: str | Path = "medagent-runs/shipped", install: bool = True) -> dict[str, Any]:
    """Train shipped checkpoint `name` from its recipe, evaluate it on the test split and (with
    `install`) copy it into medagent/weights/<name>/ with metrics.json, a model card and its manifest entry.

    Returns the metrics written to metrics.json.
    """
    import shutil

    from medagent.data.builtin import load_builtin
    from medagent.tools.segmenters import TOOL_CLASSES

    config = shipped_config(name, Path(work_dir) / name)
    started = time.time()
    best = train_tool(dataclasses.replace(config, resume=False))
    seconds = time.time() - started
    tool = TOOL_CLASSES[config.model].from_pretrained(best)
    test = _as_2d(load_builtin(config.dataset, seed=config.dataset_seed).cases("test"))
    full = evaluate_dice(tool, test)
    check = evaluate_dice(tool, test[:CHECK_CASES])
    metrics = {"test": full, "check": {"cases": [c.id for c in test[:CHECK_CASES]], **check},
               "train_seconds": round(seconds, 1), "parameters": tool.num_parameters(), "threads": config.num_threads}
    if install:
        from medagent.weights import WEIGHTS_DIR, record_weights

        folder = WEIGHTS_DIR / name
        folder.mkdir(parents=True, exist_ok=True)
        for fname in ("model.safetensors", "config.json"):
            shutil.copy(best / fname, folder / fname)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (folder / "README.md").write_text(_model_card(name, config, metrics))
        version = getattr(__import__("medagent.data.builtin", fromlist=["BUILTIN_DATASETS"]), "BUILTIN_DATASETS")[config.dataset].version
        record_weights(name, f"{config.dataset}-v{version}")
    return metrics


def _model_card(name: str, config: ToolTrainerConfig, metrics: dict[str, Any]) -> str:
    test = metrics["test"]
    per = "\n".join(f"| {k} | {v:.4f} |" for k, v in test["dice"].items())
    recipe = ", ".join(f"{k}={v!r}" for k, v in SHIPPED_RECIPES[name].items())
    return f"""# {name}

Tiny `{config.model}` segmenter shipped with medagent (embedded default; offline, CPU).

- Data: builtin dataset `{config.dataset}` (train split; best checkpoint by mean foreground Dice on the
  val split), derived from files installed packages ship (see `medagent data list`).
- Recipe (seeded, exact):
  `medagent.train.tool_trainer.train_shipped("{name}")`, i.e.
  `train_tool(shipped_config("{name}", out_dir))` with the common settings
  `{json.dumps(_SHIPPED_COMMON)}` overridden by `{recipe}`.
- Seed: {config.seed}. Threads: {config.num_threads}. Training time: {metrics['train_seconds']} s on a shared
  2-core CPU. Parameters: {metrics['parameters']}.
- Test split ({config.dataset}, whole images): mean foreground Dice **{test['mean_dice']:.4f}**

| class | Dice |
| --- | --- |
{per}

`metrics.json` also records the Dice on the first {CHECK_CASES} test cases, which
tests/test_segmenters.py recomputes (tolerance 0.01). Limits: tiny width, a few hundred CPU steps,
template-derived or synthetic labels: a demonstration model, not a clinical one.
"""
