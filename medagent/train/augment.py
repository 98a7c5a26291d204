"""Training batches of the segmenter trainer: random crops and the augmentation policies.

`make_batch(pairs, config, rng, rescale)` is the one entry point `train_tool` calls per step. Per sample,
in this order (every random draw from the one `rng`, so a seeded run and its resume repeat exactly):
    1. pick a training image;
    2. "robust" policy (`ToolTrainerConfig.aug_policy`, the default): `robust_intensity_augment` on the whole
       scaled image (`AugmentConfig`: bias field, blur, low resolution, noise, contrast/brightness, gamma,
       stripes; the first five and gamma are torchio transforms), then re-scaled as inference scales (`rescaler`);
    3. `_crop`: a square crop, optionally centred on a (class-balanced) labelled pixel;
    4. "basic" policy (the version-1 recipe): `_intensity_augment` on the crop (torchio's gamma, bias field, noise);
then for the whole batch `_geometric_augment` (flips and small rotations, labels by nearest neighbour).
The evaluation's domain shifts (`medagent.data.shifts`) are never used here.
"""

from __future__ import annotations

import math
from typing import Any

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
    field (torchio's, order 2) and noise (torchio's) on a [0, 1] crop (C, S, S); result clipped to [0, 1]."""
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField
    from torchio.transforms.augmentation.intensity.random_gamma import Gamma
    from torchio.transforms.augmentation.intensity.random_noise import Noise

    x = x.astype(np.float32, copy=True)
    if rng.random() < 0.8:
        x = _torchio(Gamma(gamma=math.exp(rng.uniform(-0.5, 0.5)), copy=False), np.clip(x, 0, 1))
    if rng.random() < 0.8:
        x = x * rng.uniform(0.7, 1.3) + rng.uniform(-0.15, 0.15)
    if rng.random() < 0.5:
        coefficients = rng.normal(0, 0.25, size=10)  # torchio's count for order 2 in 3D; no constant term
        coefficients[0] = 0.0
        x = _torchio(BiasField(coefficients=coefficients.tolist(), order=2, copy=False), x)
    if rng.random() < 0.5:
        x = _torchio(Noise(mean=0.0, std=float(rng.uniform(0.0, 0.08)), seed=int(rng.integers(2**31)), copy=False), x)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def _torchio(transform: Any, x: np.ndarray) -> np.ndarray:
    """One deterministic torchio transform on a (C, H, W) image with 1 mm pixels (torchio's 2D: (C, H, W, 1)).

    The transforms are built with `copy=False` (torchio deep-copies its input otherwise, 10-30x the cost of
    the transform here); the image may be changed in place, so callers pass arrays they own."""
    import torchio as tio

    image = tio.ScalarImage(tensor=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[..., None], affine=np.eye(4))
    return transform(image).data.numpy()[..., 0].astype(np.float32)


def _bias_field(x: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """torchio's `BiasField` of order 3 (exp of a polynomial in y, x on [-1, 1]) with normal coefficients of std
    `std`; the constant term is 0, so the field changes contrast, not overall brightness."""
    from torchio.transforms.augmentation.intensity.random_bias_field import BiasField

    coefficients = rng.normal(0.0, std, size=20)  # torchio's count for order 3 in 3D; the z terms are 0 in 2D
    coefficients[0] = 0.0
    return _torchio(BiasField(coefficients=coefficients.tolist(), order=3, copy=False), x)


def _low_resolution(x: np.ndarray, factors: tuple[float, float]) -> np.ndarray:
    """Simulated low resolution with torchio's `Blur` and `Resample`: anti-aliased linear resampling to (fy, fx) times the
    pixel size (partial-volume averaging, as a coarser acquisition gives), then linear resampling back to (H, W).

    Not `RandomAnisotropy`'s nearest-neighbour down-sampling: that drops whole rows, and thin structures
    (ct-phantom's vessels) vanish from the image while their labels stay; val Dice of the ct-phantom recipe
    fell from 0.873 to 0.812 with it (`bench/bench_augment.py`, first run). The image is edge-padded by
    ceil(factor) pixels first and cropped after: resampling back extrapolates with zeros past the last
    low-resolution pixel centre, which would darken the image's border rows."""
    import torchio as tio
    from torchio.transforms.augmentation.intensity.random_blur import Blur

    py, px = (int(math.ceil(f)) for f in factors)
    padded = np.pad(x, ((0, 0), (py, py), (px, px)), mode="edge")
    h, w = padded.shape[-2:]
    # Resample's own antialias runs ITK's recursive Gaussian, which refuses a 1-voxel third axis: blur first with
    # scikit-image's anti-aliasing sigma, (factor - 1) / 2 pixels per axis
    smooth = Blur(std=(max(0.0, (factors[0] - 1) / 2), max(0.0, (factors[1] - 1) / 2), 0.0), copy=False)
    down = tio.Resample(target=(float(factors[0]), float(factors[1]), 1.0), image_interpolation="linear", copy=False)
    up = tio.Resample(target=((h, w, 1), np.eye(4)), image_interpolation="linear", copy=False)
    out = _torchio(lambda image: up(down(smooth(image))), padded)  # not tio.Compose: it copies the image once more
    return out[:, py:py + x.shape[1], px:px + x.shape[2]]


def robust_intensity_augment(x: np.ndarray, rng: np.random.Generator, aug: AugmentConfig,
                             rescale=None) -> np.ndarray:
    """The "robust" policy on a scaled (C, H, W) image in [0, 1] (see `AugmentConfig` for the order).

    Bias field, blur, low resolution, noise and gamma are torchio's deterministic transforms (`BiasField`,
    `Blur`, `Resample` as `RandomAnisotropy` uses it, `Noise`, `Gamma`) with parameters drawn from `rng`, so a
    seeded run and its resume repeat exactly; contrast/brightness and stripes have no torchio counterpart.

    Args:
        x: image scaled by `model_input`, float32 (C, H, W).
        rng: source of every random draw.
        aug: probabilities and ranges.
        rescale: maps the augmented image back to the model's input range as inference would
            (`normalize(.., modality, ..)`); None clips to [0, 1] (CT: fixed window).
    Returns:
        float32 (C, H, W) in [0, 1].
    """
    from torchio.transforms.augmentation.intensity.random_blur import Blur
    from torchio.transforms.augmentation.intensity.random_gamma import Gamma
    from torchio.transforms.augmentation.intensity.random_noise import Noise

    x = x.astype(np.float32, copy=True)
    c, h, w = x.shape
    if rng.random() < aug.bias_prob:
        x = _bias_field(x, rng, aug.bias_std)
    if rng.random() < aug.blur_prob:
        sy = rng.uniform(*aug.blur_sigma)
        sx = rng.uniform(*aug.blur_sigma) if rng.random() < aug.blur_anisotropic_prob else sy
        if rng.random() < aug.blur_anisotropic_prob * 0.5:  # blur along one axis only
            sy, sx = (sy, 0.0) if rng.random() < 0.5 else (0.0, sx)
        x = _torchio(Blur(std=(float(sy), float(sx), 0.0), copy=False), x)
    if rng.random() < aug.lowres_prob:
        f = rng.uniform(*aug.lowres_factor)
        if rng.random() < aug.lowres_one_axis_prob:
            factors = (f, 1.0) if rng.random() < 0.5 else (1.0, f)
        else:
            factors = (f, f)
        x = _low_resolution(x, factors)
    if rng.random() < aug.noise_prob:
        x = _torchio(Noise(mean=0.0, std=float(rng.uniform(0.0, aug.noise_std)), seed=int(rng.integers(2**31)), copy=False), x)
    if rng.random() < aug.contrast_prob:
        mean = x.mean(axis=(1, 2), keepdims=True)
        x = (x - mean) * rng.uniform(*aug.contrast_range) + mean + rng.uniform(-aug.brightness, aug.brightness)
    if rng.random() < aug.gamma_prob:
        g = math.exp(rng.uniform(-aug.gamma_log_range, aug.gamma_log_range))
        if rng.random() < aug.gamma_invert_prob:
            x = 1.0 - _torchio(Gamma(gamma=g, copy=False), np.clip(1.0 - x, 0.0, 1.0))
        else:
            x = _torchio(Gamma(gamma=g, copy=False), np.clip(x, 0.0, 1.0))
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
