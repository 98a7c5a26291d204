"""How a segmenter (`unet`, `ifunet`, `allukan`) is trained: `ToolTrainerConfig` and its `AugmentConfig`.

    from medagent.train.segmenter_config import ToolTrainerConfig
    config = ToolTrainerConfig(model="ifunet", dataset="mni-tissue", max_steps=600, seed=0)

Only the configuration lives here (fields, defaults, validation); what uses it is elsewhere:
    medagent.train.augment             crops and the augmentation policies that read `AugmentConfig`
    medagent.train.tool_trainer        `train_tool(config)`: the loop, resume, validation
    medagent.train.shipped_segmenters  the recipes of the shipped checkpoints (`shipped_config(name, ...)`)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medagent.errors import ConfigError
from medagent.tools.segmenters import MODELS


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
        max_steps: optimisation steps (one batch each).
        batch_size: crops per step.
        lr: AdamW learning rate (cosine decay to 5% over `max_steps`, after a 5% linear warm-up).
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
        output_dir: run folder (its layout: `medagent.train.tool_trainer`).
        resume: continue from `output_dir/last` when it exists.
        num_threads: torch CPU threads (None leaves torch's default).
        progress: show a progress bar (tqdm).
        model_config: further `SegmenterConfig` fields, e.g. {"width": 8, "depth": 3, "form": "shared", "lam": 1.2}.
    """

    model: str = "unet"
    dataset: str = "mni-tissue"
    data_dir: str | None = None
    dataset_seed: int = 0
    dataset_seeds: tuple[int, ...] = ()
    max_steps: int = 600
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
    output_dir: str = "medagent-runs/train-tool"
    resume: bool = True
    num_threads: int | None = None
    progress: bool = True
    model_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"ToolTrainerConfig.model must be one of {MODELS}, got {self.model!r}")
        for name in ("max_steps", "batch_size", "crop_size", "val_every"):
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
