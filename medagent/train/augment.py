"""Training batches of the segmenter trainer: random crops and the augmentation policies.

`make_batch(pairs, config, rng, rescale)` is the one entry point `train_tool` calls per step. Per sample,
in this order (every random draw from the one `rng`, so a seeded run and its resume repeat exactly):
    1. pick a training image;
    2. "robust" policy (`ToolTrainerConfig.aug_policy`, the default): `robust_intensity_augment` on the whole
       scaled image (`AugmentConfig`: bias field, blur, low resolution, noise, contrast/brightness, gamma,
       stripes), then re-scaled as inference scales (`rescaler`);
    3. `_crop`: a square crop, optionally centred on a (class-balanced) labelled pixel;
    4. "basic" policy (the version-1 recipe): `_intensity_augment` on the crop;
then for the whole batch `_geometric_augment` (flips and small rotations, labels by nearest neighbour).
The evaluation's domain shifts (`medagent.data.shifts`) are never used here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medagent.tools.segmenters import SegmenterConfig
from medagent.train.segmenter_config import AugmentConfig, ToolTrainerConfig


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

    `rescale` (the robust policy's re-scaling, see `rescaler`) is applied after augmenting the whole image.
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


def rescaler(seg: SegmenterConfig):
    """The inference scaling applied again to an augmented [0, 1] image; None for CT (fixed window: clip)."""
    if seg.modality == "CT":
        return None
    from medagent.data.intensity import normalize

    intensity = seg.intensity()
    return lambda x: normalize(x, seg.modality, intensity)
