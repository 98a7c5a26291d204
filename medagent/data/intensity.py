"""Intensity handling shared by tools, trainers and the environment's renderer.

One place decides how raw intensities become model inputs, so a tool trained through the trainer sees
exactly what it sees at inference and what the policy sees rendered:
- CT: a window in Hounsfield units (level, width) mapped to [0, 1], clipped.
- MR, microscopy and everything else: per-image robust percentile scaling (0.5th..99.5th by default,
  computed over non-zero voxels when the image has a zero background such as a skull-stripped brain).

Modality detection order (`resolve_modality`): metadata (DICOM tag, dataset.json channel name), then the
user's `--modality`, then `guess_modality`'s documented heuristic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medagent.errors import ConfigError, DataError

#: CT windows as (level, width) in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (60.0, 400.0),
    "wide": (0.0, 2000.0),
}

_MODALITY_ALIASES = {
    "ct": "CT", "computed tomography": "CT",
    "mr": "MR", "mri": "MR", "t1": "MR", "t2": "MR", "flair": "MR", "t1w": "MR", "t2w": "MR", "adc": "MR", "dwi": "MR",
    "pd": "MR", "t1gd": "MR", "t1ce": "MR",
    "microscopy": "microscopy", "fluorescence": "microscopy", "histology": "microscopy", "he": "microscopy",
    "xray": "xray", "x-ray": "xray", "cr": "xray", "dx": "xray",
    "endoscopy": "endoscopy", "es": "endoscopy",
    "dermoscopy": "dermoscopy", "us": "ultrasound", "ultrasound": "ultrasound",
    "photo": "photo", "rgb": "photo", "xc": "photo",
    "unknown": "unknown",
}


def canonical_modality(name: str) -> str:
    """Map a metadata or user modality string ('MRI', 'T2', 'CT', 'DX', ...) to medagent's vocabulary."""
    key = str(name).strip().lower()
    if key in _MODALITY_ALIASES:
        return _MODALITY_ALIASES[key]
    raise ConfigError(f"unknown modality {name!r}; use one of {sorted(set(_MODALITY_ALIASES.values()))}")


def guess_modality(image: np.ndarray, is_rgb: bool = False) -> str:
    """Documented heuristic, used only when neither metadata nor the user names the modality.

    - RGB images -> "photo" (endoscopy/dermoscopy cannot be told apart from pixels alone);
    - any value < -500 with a maximum above 300 -> "CT" (air in HU);
    - otherwise "MR" for 3D volumes and "unknown" for 2D grey images.
    """
    if is_rgb:
        return "photo"
    finite = image[np.isfinite(image)]
    if finite.size and finite.min() < -500 and finite.max() > 300:
        return "CT"
    return "MR" if image.ndim >= 4 or (image.ndim == 3 and image.shape[0] > 1 and not is_rgb) else "unknown"


def resolve_modality(metadata: str | None, user: str | None, image: np.ndarray, is_rgb: bool = False) -> str:
    """Metadata first, then the user's choice, then `guess_modality`."""
    for source in (metadata, user):
        if source:
            try:
                return canonical_modality(source)
            except ConfigError:
                continue
    return guess_modality(image, is_rgb)


@dataclass(frozen=True)
class IntensityConfig:
    """How raw intensities are scaled to [0, 1].

    Attributes:
        ct_window: name in `CT_WINDOWS` or an explicit (level, width) in HU.
        lower_percentile / upper_percentile: robust range for non-CT images, in percent.
        ignore_zeros: compute percentiles over non-zero voxels when >= 5% of voxels are exactly 0.
    """

    ct_window: str | tuple[float, float] = "soft_tissue"
    lower_percentile: float = 0.5
    upper_percentile: float = 99.5
    ignore_zeros: bool = True


def window_ct(image: np.ndarray, window: str | tuple[float, float] = "soft_tissue") -> np.ndarray:
    """Map HU to [0, 1] with a (level, width) window; float32, same shape."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise ConfigError(f"unknown CT window {window!r}; choose from {sorted(CT_WINDOWS)} or pass (level, width)")
        level, width = CT_WINDOWS[window]
    else:
        level, width = (float(v) for v in window)
    if width <= 0:
        raise ConfigError(f"CT window width must be > 0 HU, got {width}")
    lo = level - width / 2.0
    return np.clip((image.astype(np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


def percentile_scale(image: np.ndarray, lower: float = 0.5, upper: float = 99.5, ignore_zeros: bool = True) -> np.ndarray:
    """Per-image robust min-max: the [lower, upper] percentiles map to [0, 1], clipped. float32."""
    img = image.astype(np.float32)
    values = img[np.isfinite(img)]
    if ignore_zeros and values.size:
        nonzero = values[values != 0]
        if nonzero.size and (values.size - nonzero.size) >= 0.05 * values.size:
            values = nonzero
    if values.size == 0:
        return np.zeros_like(img)
    lo, hi = np.percentile(values, [lower, upper])
    if hi - lo < 1e-8:
        hi = lo + 1.0
    out = np.clip((img - lo) / (hi - lo), 0.0, 1.0)
    return np.nan_to_num(out, nan=0.0).astype(np.float32)


def normalize(image: np.ndarray, modality: str, config: IntensityConfig | None = None) -> np.ndarray:
    """Scale an image of any shape to [0, 1] according to its modality (see module docstring).

    Channels of a multi-channel (C, ...) image are scaled jointly for photos/RGB and separately otherwise.
    """
    config = config or IntensityConfig()
    if not np.isfinite(image).all():
        raise DataError("image contains NaN or Inf values; clean it before normalising")
    if modality == "CT":
        return window_ct(image, config.ct_window)
    if modality in ("photo", "endoscopy", "dermoscopy") or image.shape[0] == 1:
        return percentile_scale(image, config.lower_percentile, config.upper_percentile, config.ignore_zeros)
    return np.stack(
        [percentile_scale(ch, config.lower_percentile, config.upper_percentile, config.ignore_zeros) for ch in image]
    )


def to_display_rgb(image: np.ndarray, modality: str, config: IntensityConfig | None = None) -> np.ndarray:
    """A 2D (C, H, W) image as uint8 (H, W, 3) for overlays and the policy's observation."""
    if image.ndim != 3:
        raise DataError(f"to_display_rgb takes a 2D (C, H, W) image, got shape {image.shape}")
    scaled = normalize(image, modality, config)
    if scaled.shape[0] >= 3:
        rgb = np.moveaxis(scaled[:3], 0, -1)
    else:
        rgb = np.repeat(scaled[0][..., None], 3, axis=-1)
    return (rgb * 255.0 + 0.5).astype(np.uint8)
