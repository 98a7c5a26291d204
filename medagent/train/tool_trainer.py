"""Train an automatic segmenter (`unet`, `ifunet`, `allukan`) on a builtin dataset or a user folder.

    from medagent.train.tool_trainer import ToolTrainerConfig, train_tool
    best = train_tool(ToolTrainerConfig(model="ifunet", dataset="mni-tissue", steps=600, seed=0))
    tool = load_tool("ifunet", checkpoint=str(best))

Loss: cross-entropy + soft Dice over the foreground classes. Inputs go through
`medagent.tools.segmenters.model_input` (the same intensity scaling as inference), then optional
intensity augmentation (`aug_policy="robust"`, `AugmentConfig`: bias field, Gaussian blur, simulated low
resolution, noise, contrast/brightness, gamma both ways, stripe artefacts, each with a probability, on the
whole image, then re-scaled as inference would), random crops (optionally class-balanced) and geometric
augmentation (flips and small rotations). The evaluation's shifts (`medagent.data.shifts`) are never used. Every `val_every` steps the model predicts the whole
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
class AugmentConfig:
    """The intensity augmentation of the "robust" policy (nnU-Net-style); every transform has a probability.

    Applied per training sample to the whole scaled image (values in [0, 1] after `model_input`), in this
    order: multiplicative bias field, Gaussian blur, simulated low resolution, Gaussian noise,
    contrast/brightness, gamma, stripe artefacts. Afterwards the image is scaled again the way inference
    scales it (`medagent.data.intensity.normalize`: robust percentiles for MR and other modalities; CT,
    whose window is fixed, is only clipped to [0, 1]), then cropped. So the network sees what it would see
    if the acquisition itself had changed. Geometric augmentation (flips, rotations) comes after the crop.

    Attributes (defaults in brackets):
        bias_prob [0.4]: probability of a smooth multiplicative bias field exp(P(y, x)), P a random
            polynomial of degree <= 3 with normal coefficients of std `bias_std` [0.3].
        blur_prob [0.25]: probability of a Gaussian blur with sigma ~ U(`blur_sigma`) [(0.4, 1.6)] pixels;
            with probability `blur_anisotropic_prob` [0.3] each axis draws its own sigma (one may stay sharp).
        lowres_prob [0.25]: probability of simulated low resolution: area down-sampling by a factor
            ~ U(`lowres_factor`) [(1.5, 3.0)] and linear up-sampling back; with probability
            `lowres_one_axis_prob` [0.5] along one random axis only (thick slices / anisotropy).
        noise_prob [0.4]: probability of additive Gaussian noise with std ~ U(0, `noise_std`) [0.12].
        contrast_prob [0.6]: probability of x -> (x - mean) c + mean + b with c ~ U(`contrast_range`)
            [(0.6, 1.5)], b ~ U(-`brightness`, `brightness`) [0.15].
        gamma_prob [0.6]: probability of x -> x ** g with log g ~ U(-`gamma_log_range`, `gamma_log_range`)
            [0.8] (both brighter and darker); with probability `gamma_invert_prob` [0.15] applied to 1 - x.
        stripe_prob [0.1]: probability of a line/stripe artefact: a sinusoid of random orientation,
            period 2..16 pixels and amplitude ~ U(0, `stripe_amplitude`) [0.1] added to the image.
        renormalize [True]: re-scale after augmenting as inference would (see above).
    """

    bias_prob: float = 0.4
    bias_std: float = 0.3
    blur_prob: float = 0.25
    blur_sigma: tuple[float, float] = (0.4, 1.6)
    blur_anisotropic_prob: float = 0.3
    lowres_prob: float = 0.25
    lowres_factor: tuple[float, float] = (1.5, 3.0)
    lowres_one_axis_prob: float = 0.5
    noise_prob: float = 0.4
    noise_std: float = 0.12
    contrast_prob: float = 0.6
    contrast_range: tuple[float, float] = (0.6, 1.5)
    brightness: float = 0.15
    gamma_prob: float = 0.6
    gamma_log_range: float = 0.8
    gamma_invert_prob: float = 0.15
    stripe_prob: float = 0.1
    stripe_amplitude: float = 0.1
    renormalize: bool = True

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from JSON
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            if f.name.endswith("_prob") and not 0.0 <= float(value) <= 1.0:
                raise ConfigError(f"AugmentConfig.{f.name} must be a probability in [0, 1], got {value}")
            if isinstance(value, tuple) and (len(value) != 2 or value[0] > value[1]):
                raise ConfigError(f"AugmentConfig.{f.name} must be a (low, high) pair, got {value}")


AUG_POLICIES = ("robust", "basic")


@dataclass
class ToolTrainerConfig:
    """How to train one segmenter. Defaults run on a CPU in minutes.

    Attributes:
        model: "unet", "ifunet" or "allukan".
        dataset: builtin dataset name (`medagent.data.builtin.load_builtin`); ignored when `data_dir` is set.
        data_dir: a user folder in a known layout (`medagent.data.layouts.load_folder`), or None.
        dataset_seed: seed of procedural builtin datasets (`load_builtin(name, seed=...)`); the validation
            split (and `score_checkpoint`'s val/test splits) always come from this seed.
        dataset_seeds: train on the concatenated train splits of `load_builtin(dataset, seed=s)` for every s
            here (a seeded builtin dataset draws new synthetic content per seed on the same slices and
            splits, e.g. new lesions for mni-lesion); empty (default) = the train split of `dataset_seed`.
            Builtin datasets only (not with `data_dir` or an explicit `dataset=`).
        steps: optimisation steps (one batch each).
        batch_size: crops per step.
        lr: AdamW learning rate (cosine decay to 5% over `steps`, after a 5% linear warm-up).
        weight_decay: AdamW weight decay.
        crop_size: side of the square training crops in pixels (images smaller than that are padded).
        foreground_crop_prob: probability that a crop is centred on a random labelled (non-zero) pixel.
        class_balanced_crops: foreground crops first draw a class uniformly among the foreground classes
            present in the image, then a pixel of it (small classes get seen as often as large ones).
        augment: master switch of augmentation.
        intensity_aug: intensity augmentation on the scaled image (see `aug_policy`).
        aug_policy: "robust" (default): the transforms and probabilities of `aug` (`AugmentConfig`: bias
            field, blur, low resolution, noise, contrast, gamma both ways, stripes, then re-scaling);
            "basic": the version-1 recipe (gamma, contrast/brightness, bias field, noise on the crop),
            kept so that the v1 shipped checkpoints' recipes stay exact.
        aug: `AugmentConfig` (or a dict of its fields) of the "robust" policy.
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
    dataset_seeds: tuple[int, ...] = ()
    steps: int = 600
    batch_size: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    crop_size: int = 96
    foreground_crop_prob: float = 0.7
    class_balanced_crops: bool = False
    augment: bool = True
    intensity_aug: bool = True
    aug_policy: str = "robust"
    aug: AugmentConfig = field(default_factory=AugmentConfig)
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
        if self.aug_policy not in AUG_POLICIES:
            raise ConfigError(f"ToolTrainerConfig.aug_policy must be one of {AUG_POLICIES}, got {self.aug_policy!r}")
        if isinstance(self.dataset_seeds, (list, tuple)):  # lists from JSON
            self.dataset_seeds = tuple(self.dataset_seeds)
        else:
            raise ConfigError(f"ToolTrainerConfig.dataset_seeds must be a tuple of ints, got {self.dataset_seeds!r}")
        if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0 for s in self.dataset_seeds):
            raise ConfigError(f"ToolTrainerConfig.dataset_seeds must be non-negative ints, got {self.dataset_seeds!r}")
        self.dataset_seeds = tuple(int(s) for s in self.dataset_seeds)
        if len(set(self.dataset_seeds)) != len(self.dataset_seeds):
            raise ConfigError(f"ToolTrainerConfig.dataset_seeds has duplicates: {self.dataset_seeds!r}")
        if self.dataset_seeds and self.data_dir:
            raise ConfigError("ToolTrainerConfig.dataset_seeds applies to builtin datasets only, not to data_dir")
        if isinstance(self.aug, dict):  # from JSON / the CLI
            known = {f.name for f in dataclasses.fields(AugmentConfig)}
            unknown = sorted(set(self.aug) - known)
            if unknown:
                raise ConfigError(f"ToolTrainerConfig.aug: unknown field(s) {unknown}; known: {sorted(known)}")
            self.aug = AugmentConfig(**self.aug)
        elif not isinstance(self.aug, AugmentConfig):
            raise ConfigError(f"ToolTrainerConfig.aug must be an AugmentConfig or a dict, got {type(self.aug).__name__}")


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


def training_cases(config: ToolTrainerConfig, dataset: Dataset) -> list[Case]:
    """The 2D training cases: `dataset`'s train split, or with `config.dataset_seeds` the train splits of
    the builtin `config.dataset` drawn with each of those seeds, concatenated in that order."""
    if not config.dataset_seeds:
        return _as_2d(dataset.cases("train"))
    from medagent.data.builtin import load_builtin

    cases: list[Case] = []
    for s in config.dataset_seeds:
        cases.extend(_as_2d(load_builtin(config.dataset, seed=s).cases("train")))
    return cases


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


def _crop(image: np.ndarray, label: np.ndarray, size: int, rng: np.random.Generator, fg_prob: float,
          class_balanced: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A (C, size, size) crop and its (size, size) label; pads small images with zeros / background.

    With probability `fg_prob` the crop is centred on a labelled pixel: any non-zero pixel, or with
    `class_balanced` a pixel of a class drawn uniformly among the foreground classes present.
    """
    c, h, w = image.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        image = np.pad(image, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        label = np.pad(label, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))
        h, w = label.shape
    if rng.random() < fg_prob and label.any():
        if class_balanced:
            present = np.unique(label)
            present = present[present > 0]
            ys, xs = np.nonzero(label == present[int(rng.integers(len(present)))])
        else:
            ys, xs = np.nonzero(label)
        k = rng.integers(len(ys))
        y0 = int(np.clip(ys[k] - size // 2, 0, h - size))
        x0 = int(np.clip(xs[k] - size // 2, 0, w - size))
    else:
        y0, x0 = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return image[:, y0 : y0 + size, x0 : x0 + size], label[y0 : y0 + size, x0 : x0 + size]


def _intensity_augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The "basic" (version 1) policy: random gamma, contrast/brightness, a smooth multiplicative bias
    field and noise on a [0, 1] crop (C, S, S); result clipped to [0, 1]."""
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


def _bias_field(shape: tuple[int, int], rng: np.random.Generator, std: float) -> np.ndarray:
    """exp of a random polynomial of degree <= 3 in (y, x) on [-1, 1]^2: a smooth positive (H, W) field."""
    yy, xx = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    terms = [yy, xx, yy * xx, yy**2, xx**2, yy**2 * xx, yy * xx**2, yy**3, xx**3]
    coef = rng.normal(0, std, size=len(terms))
    return np.exp(sum(c * t for c, t in zip(coef, terms)))


def _low_resolution(x: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Area down-sampling of (C, H, W) by (fy, fx) and bilinear up-sampling back to (H, W)."""
    c, h, w = x.shape
    small = (max(2, int(round(h / factors[0]))), max(2, int(round(w / factors[1]))))
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
    t = F.interpolate(F.interpolate(t, size=small, mode="area"), size=(h, w), mode="bilinear", align_corners=False)
    return t[0].numpy()


def robust_intensity_augment(x: np.ndarray, rng: np.random.Generator, aug: AugmentConfig,
                             rescale=None) -> np.ndarray:
    """The "robust" policy on a scaled (C, H, W) image in [0, 1] (see `AugmentConfig` for the order).

    Args:
        x: image scaled by `model_input`, float32 (C, H, W).
        rng: source of every random draw.
        aug: probabilities and ranges.
        rescale: maps the augmented image back to the model's input range as inference would
            (`normalize(.., modality, ..)`); None clips to [0, 1] (CT: fixed window).
    Returns:
        float32 (C, H, W) in [0, 1].
    """
    from scipy import ndimage as ndi

    x = x.astype(np.float32, copy=True)
    c, h, w = x.shape
    if rng.random() < aug.bias_prob:
        x = x * _bias_field((h, w), rng, aug.bias_std)[None].astype(np.float32)
    if rng.random() < aug.blur_prob:
        sy = rng.uniform(*aug.blur_sigma)
        sx = rng.uniform(*aug.blur_sigma) if rng.random() < aug.blur_anisotropic_prob else sy
        if rng.random() < aug.blur_anisotropic_prob * 0.5:  # blur along one axis only
            sy, sx = (sy, 0.0) if rng.random() < 0.5 else (0.0, sx)
        x = ndi.gaussian_filter(x, (0.0, sy, sx))
    if rng.random() < aug.lowres_prob:
        f = rng.uniform(*aug.lowres_factor)
        if rng.random() < aug.lowres_one_axis_prob:
            factors = (f, 1.0) if rng.random() < 0.5 else (1.0, f)
        else:
            factors = (f, f)
        x = _low_resolution(x, factors)
    if rng.random() < aug.noise_prob:
        x = x + rng.normal(0.0, rng.uniform(0.0, aug.noise_std), size=x.shape).astype(np.float32)
    if rng.random() < aug.contrast_prob:
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = (x - mean) * rng.uniform(*aug.contrast_range) + mean + rng.uniform(-aug.brightness, aug.brightness)
    if rng.random() < aug.gamma_prob:
        g = math.exp(rng.uniform(-aug.gamma_log_range, aug.gamma_log_range))
        if rng.random() < aug.gamma_invert_prob:
            x = 1.0 - np.power(np.clip(1.0 - x, 0.0, 1.0), g)
        else:
            x = np.power(np.clip(x, 0.0, 1.0), g)
    if rng.random() < aug.stripe_prob:
        angle = rng.uniform(0, math.pi)
        period = rng.uniform(2.0, 16.0)
        yy, xx = np.mgrid[0:h, 0:w]
        wave = np.sin(2 * math.pi * (yy * math.sin(angle) + xx * math.cos(angle)) / period + rng.uniform(0, 2 * math.pi))
        x = x + (rng.uniform(0.0, aug.stripe_amplitude) * wave)[None].astype(np.float32)
    x = np.nan_to_num(np.clip(x, -0.5, 2.0))
    if aug.renormalize and rescale is not None:
        x = rescale(x)
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


def make_batch(pairs: list[tuple[np.ndarray, np.ndarray]], config: ToolTrainerConfig, rng: np.random.Generator,
               rescale=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: x (B, C, S, S) float32, y (B, S, S) int64, all randomness from `rng`.

    `rescale` (the robust policy's re-scaling, see `_rescaler`) is applied after augmenting the whole image.
    """
    xs, ys = [], []
    robust = config.augment and config.intensity_aug and config.aug_policy == "robust"
    for _ in range(config.batch_size):
        image, label = pairs[int(rng.integers(len(pairs)))]
        if robust:  # on the whole image, so that re-scaling sees what inference sees
            image = robust_intensity_augment(image, rng, config.aug, rescale)
        xi, yi = _crop(image, label, config.crop_size, rng, config.foreground_crop_prob, config.class_balanced_crops)
        if config.augment and config.intensity_aug and config.aug_policy == "basic":
            xi = _intensity_augment(xi, rng)
        xs.append(np.ascontiguousarray(xi))
        ys.append(np.ascontiguousarray(yi))
    x, y = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
    if config.augment and config.geometric_aug:
        x, y = _geometric_augment(x, y, rng, config.max_rotation_deg)
    return x, y


def _rescaler(seg: SegmenterConfig):
    """The inference scaling applied again to an augmented [0, 1] image; None for CT (fixed window: clip)."""
    if seg.modality == "CT":
        return None
    from medagent.data.intensity import normalize

    intensity = seg.intensity()
    return lambda x: normalize(x, seg.modality, intensity)


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


def evaluate_dice_augmented(tool: SegmenterTool, cases: list[Case], aug: AugmentConfig | None = None, copies: int = 2,
                            seed: int = 0) -> dict[str, Any]:
    """Mean foreground Dice on `copies` seeded robust-policy augmentations of each case (whole images).

    A robustness check that uses only the trainer's own augmentation family (never the evaluation's
    shifts, `medagent.data.shifts`); the draws depend on (seed, case index, copy), so it is repeatable.
    """
    from medagent.metrics import per_class

    aug = aug or AugmentConfig()
    rescale = _rescaler(tool.config)
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


_RESUME_MUST_MATCH = ("model", "dataset", "data_dir", "dataset_seed", "dataset_seeds", "batch_size", "crop_size", "seed", "model_config", "steps", "lr",
                      "aug_policy", "aug")


def _load_state(folder: Path, tool_cls: type[SegmenterTool], optimizer_factory, config: ToolTrainerConfig):
    meta = json.loads((folder / "trainer_state.json").read_text())
    saved = meta["trainer_config"]
    now = json.loads(json.dumps(dataclasses.asdict(config)))  # as JSON sees it (tuples become lists)
    for name in _RESUME_MUST_MATCH:
        was = saved.get(name, [] if name == "dataset_seeds" else None)  # states saved before the field existed
        if was != now[name]:
            raise ConfigError(
                f"{folder}: cannot resume: field {name!r} was {was!r}, now {now[name]!r}; "
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
        dataset: use this `Dataset` instead of loading `config.dataset` / `config.data_dir` (not together
            with `config.dataset_seeds`).
    """
    if dataset is not None and config.dataset_seeds:
        raise ConfigError("ToolTrainerConfig.dataset_seeds loads builtin datasets itself; do not pass dataset= too")
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = dataset if dataset is not None else load_training_data(config)
    info = dataset.info
    train_cases = training_cases(config, dataset)
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
    rescale = _rescaler(tool.config)
    bar = _progress(config.steps, step, config.progress, f"train {config.model}")
    started, losses = time.time(), []
    try:
        while step < config.steps:
            tool.net.train()
            x, y = make_batch(pairs, config, rng, rescale)
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
    from medagent.provenance import collect_versions

    (out / "versions.json").write_text(json.dumps(collect_versions(seed), indent=2, default=str) + "\n")


# ----------------------------------------------------------------------------------------------
# the recipes of the shipped checkpoints (medagent/weights/<model>-<dataset>/)
# ----------------------------------------------------------------------------------------------
#: version 2 (robust intensity augmentation, 1000 steps); `unet-nuclei` keeps its version-1 recipe
_SHIPPED_COMMON = dict(steps=1000, batch_size=8, crop_size=80, lr=3e-3, val_every=100, seed=0, num_threads=1,
                       aug_policy="robust", model_config={"width": 8, "depth": 3})
_V1 = dict(steps=400, val_every=50, aug_policy="basic")
SHIPPED_RECIPES: dict[str, dict[str, Any]] = {
    # mni-tissue: 1500 steps beat 1000 (800 for allukan) on val, clean and augmented (docs/segmenters.md)
    "unet-mni-tissue": dict(model="unet", dataset="mni-tissue", steps=1500),
    "ifunet-mni-tissue": dict(model="ifunet", dataset="mni-tissue", steps=1500),
    "allukan-mni-tissue": dict(model="allukan", dataset="mni-tissue", steps=1500),
    # version 3, synthetic lesions: train on the train splits of 40 dataset seeds (new lesions on the same
    # slices; val and test stay on seed 0), no intensity augmentation (the robust policy's blur, gamma and
    # noise cost 0.2 clean val Dice: they wash out the lesions' texture), 60% lesion-centred crops (0.9 gave
    # more false positives), width 16 and 4000 steps; the measurements are in docs/segmenters.md
    "unet-mni-lesion": dict(model="unet", dataset="mni-lesion", dataset_seeds=tuple(range(40)), intensity_aug=False,
                            foreground_crop_prob=0.6, dice_weight=2.0, steps=4000, model_config={"width": 16, "depth": 3}),
    "unet-nuclei": dict(model="unet", dataset="nuclei", crop_size=64, **_V1),
    # seven classes of very different sizes: class-balanced crops so that bone and vessel are seen
    "unet-ct-phantom": dict(model="unet", dataset="ct-phantom", crop_size=96, foreground_crop_prob=0.9, class_balanced_crops=True,
                            model_config={"width": 8, "depth": 3, "ct_window": "wide"}),
}
#: recipes re-made after version 2 (docs/segmenters.md says what changed)
_LATER_VERSIONS = {"unet-mni-lesion": "3"}
#: the manifest version of each shipped checkpoint's current recipe
SHIPPED_VERSIONS: dict[str, str] = {
    name: _LATER_VERSIONS.get(name, "1" if SHIPPED_RECIPES[name].get("aug_policy") == "basic" else "2") for name in SHIPPED_RECIPES
}
#: checkpoints shipped with their floating-point tensors stored as float16 (half the file; the tool loads
#: them into its float32 network); their recorded metrics are those of the float16 file
SHIPPED_FLOAT16: frozenset[str] = frozenset({"unet-mni-lesion"})
#: test cases whose Dice the shipped-weights test recomputes (first N of the test split)
CHECK_CASES = 4


def shipped_config(name: str, out_dir: str | Path) -> ToolTrainerConfig:
    """The exact `ToolTrainerConfig` of shipped checkpoint `name` (see `SHIPPED_RECIPES`)."""
    if name not in SHIPPED_RECIPES:
        raise ConfigError(f"no recipe for shipped checkpoint {name!r}; known: {sorted(SHIPPED_RECIPES)}")
    fields = {**_SHIPPED_COMMON, **SHIPPED_RECIPES[name]}
    return ToolTrainerConfig(**fields, out_dir=str(out_dir), progress=False)


def train_shipped(name: str, work_dir: str | Path = "medagent-runs/shipped", install: bool = True,
                  resume: bool = False) -> dict[str, Any]:
    """Train shipped checkpoint `name` from its recipe, evaluate it on the val and test splits and (with
    `install`) copy it into medagent/weights/<name>/ (`install_shipped`).

    The trained run stays in `work_dir/<name>/` (its `best/`, for `SHIPPED_FLOAT16` models also the
    float16 copy `best-float16/` that is scored and installed, and a `shipped_metrics.json`), so one can
    compare it with the shipped checkpoint on the val split first and install it later.
    `resume=True` continues an interrupted run in `work_dir/<name>/` (same weights as an uninterrupted
    one; `train_seconds` then counts only this call). Returns the metrics written to metrics.json.
    """
    from medagent.tools.segmenters import TOOL_CLASSES

    config = shipped_config(name, Path(work_dir) / name)
    started = time.time()
    best = train_tool(dataclasses.replace(config, resume=resume))
    seconds = time.time() - started
    best = shipped_checkpoint(name, best)
    tool = TOOL_CLASSES[config.model].from_pretrained(best)
    metrics = {**score_checkpoint(tool, config), "train_seconds": round(seconds, 1), "parameters": tool.num_parameters(),
               "threads": config.num_threads}
    (Path(config.out_dir) / "shipped_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if install:
        install_shipped(name, best, metrics)
    return metrics


def shipped_checkpoint(name: str, best: str | Path) -> Path:
    """The folder to score and install for shipped checkpoint `name` trained into `best`: `best` itself, or
    for `SHIPPED_FLOAT16` models a copy `<best>-float16/` whose floating-point tensors are float16."""
    best = Path(best)
    if name not in SHIPPED_FLOAT16:
        return best
    import shutil

    from safetensors.torch import save_file

    half = best.with_name(best.name + "-float16")
    half.mkdir(parents=True, exist_ok=True)
    state = load_safetensors(best / "model.safetensors")
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(half / "model.safetensors"))
    shutil.copy(best / "config.json", half / "config.json")
    return half


def score_checkpoint(tool: SegmenterTool, config: ToolTrainerConfig) -> dict[str, Any]:
    """Mean foreground Dice of `tool` on the val split (clean and `evaluate_dice_augmented`) and test split
    of `config.dataset`, and on the first `CHECK_CASES` test cases (what tests/test_segmenters.py recomputes)."""
    from medagent.data.builtin import load_builtin

    ds = load_builtin(config.dataset, seed=config.dataset_seed)
    test = _as_2d(ds.cases("test"))
    val = _as_2d(ds.cases("val"))
    check = evaluate_dice(tool, test[:CHECK_CASES])
    return {"val": evaluate_dice(tool, val), "val_augmented": evaluate_dice_augmented(tool, val), "test": evaluate_dice(tool, test),
            "check": {"cases": [c.id for c in test[:CHECK_CASES]], **check}}


def install_shipped(name: str, best: str | Path, metrics: dict[str, Any]) -> dict:
    """Copy checkpoint folder `best` into medagent/weights/<name>/ with metrics.json, a model card and its
    manifest entry (version `SHIPPED_VERSIONS[name]`). Returns the manifest entry."""
    import shutil

    from medagent.data.builtin import BUILTIN_DATASETS
    from medagent.weights import WEIGHTS_DIR, record_weights

    config = shipped_config(name, Path(best).parent)
    folder = WEIGHTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname in ("model.safetensors", "config.json"):
        shutil.copy(Path(best) / fname, folder / fname)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "README.md").write_text(_model_card(name, config, metrics))
    version = BUILTIN_DATASETS[config.dataset].version
    return record_weights(name, f"{config.dataset}-v{version}", version=SHIPPED_VERSIONS[name])


def _model_card(name: str, config: ToolTrainerConfig, metrics: dict[str, Any]) -> str:
    test = metrics["test"]
    per = "\n".join(f"| {k} | {v:.4f} |" for k, v in test["dice"].items())
    recipe = ", ".join(f"{k}={v!r}" for k, v in SHIPPED_RECIPES[name].items())
    val = metrics.get("val", {}).get("mean_dice")
    val_aug = metrics.get("val_augmented", {}).get("mean_dice")
    val_line = (f"- Val split: mean foreground Dice {val:.4f} clean, {val_aug:.4f} on 2 seeded robust-policy augmentations per\n"
                "  case (`evaluate_dice_augmented`; the trainer's own augmentation, not the evaluation shifts).\n") if val is not None and val_aug is not None else ""
    aug_changed = {f.name: getattr(config.aug, f.name) for f in dataclasses.fields(AugmentConfig)
                   if getattr(config.aug, f.name) != getattr(AugmentConfig(), f.name)}
    if not (config.augment and config.intensity_aug):
        policy = "no intensity augmentation (`intensity_aug=False`)"
    elif config.aug_policy == "basic":
        policy = "the version-1 basic intensity augmentation (gamma, contrast/brightness, bias field, noise)"
    else:
        changed = f" but {aug_changed}" if aug_changed else ""
        policy = (f"robust intensity augmentation (`AugmentConfig` defaults{changed}: bias field, blur, low resolution, noise,\n"
                  "  contrast, gamma both ways, stripes, then re-scaling as at inference)")
    if config.dataset_seeds:
        data = (f"train splits of `load_builtin(\"{config.dataset}\", seed=s)` for the {len(config.dataset_seeds)} seeds s in\n"
                f"  `dataset_seeds` (new synthetic content per seed on the same slices), concatenated; best checkpoint by\n"
                f"  mean foreground Dice on the val split of seed {config.dataset_seed}, test split of seed {config.dataset_seed}")
    else:
        data = "train split; best checkpoint by mean foreground Dice on the\n  val split"
    storage = ("float16 (loaded into the float32 network; all metrics here are those of this\n  float16 file)"
               if name in SHIPPED_FLOAT16 else "float32")
    return f"""# {name}

Tiny `{config.model}` segmenter shipped with medagent (embedded default; offline, CPU). Manifest version
{SHIPPED_VERSIONS[name]}.

- Data: builtin dataset `{config.dataset}` ({data}), derived from files installed packages ship (see
  `medagent data list`).
- Recipe (seeded, exact):
  `medagent.train.tool_trainer.train_shipped("{name}")`, i.e.
  `train_tool(shipped_config("{name}", out_dir))` with the common settings
  `{json.dumps(_SHIPPED_COMMON)}` overridden by `{recipe}`; {policy}; geometric augmentation (flips,
  rotations up to {config.max_rotation_deg:g} degrees).
- Seed: {config.seed}. Threads: {config.num_threads}. Training time: {metrics['train_seconds']} s on a shared
  2-core CPU. Parameters: {metrics['parameters']}, stored as {storage}.
{val_line}- Test split ({config.dataset}, whole images): mean foreground Dice **{test['mean_dice']:.4f}**

| class | Dice |
| --- | --- |
{per}

`metrics.json` also records the Dice on the first {CHECK_CASES} test cases, which
tests/test_segmenters.py recomputes (tolerance 0.01). Robustness to the shifted centres of
`medagent.data.shifts`: see docs/segmenters.md (`python bench/bench_segmenters.py --shipped`). Limits: tiny
width ({config.model_config.get("width", 8)}), {config.steps} CPU steps, template-derived or synthetic labels: a demonstration model, not a
clinical one.
"""
