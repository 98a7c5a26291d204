"""Per-checkpoint preprocessing: how an image becomes SAM's encoder input, and how outputs map back.

Each checkpoint declares one `Preprocessing` and it travels with the checkpoint (config.json of a saved
model; a preset for official files), because SAM, MedSAM and the tiny model were trained on different
inputs:

- ``sam``: longest side resized to 1024 (aspect kept), values 0-255, ImageNet mean/std, zero padding at
  the bottom/right to 1024x1024 (as `segment_anything`'s `ResizeLongestSide` + `Sam.preprocess`).
- ``medsam``: resized to 1024x1024 without keeping the aspect ratio, min-max scaled to [0, 1], no
  mean/std (as MedSAM's inference code).
- ``tiny``: longest side resized to 256 (aspect kept), values in [0, 1], standardised with mean 0.5 and
  std 0.25 per channel, zero padding (after standardisation) to 256x256.

All of them start from `medagent.data.intensity.normalize(image, modality)` (CT windows, MR/microscopy
percentiles), so raw HU or MR intensities never reach a model. Grey images are repeated to 3 channels.

Geometry: the image of size (H, W) is resized to (rh, rw) = `input_size` inside the square S x S input
frame. A point (x, y) in original pixels maps to (x * rw / W, y * rh / H) in the input frame; SAM's prompt
encoder adds the half-pixel shift itself. Low-res logits (L x L, L = 4 x embedding grid) cover the whole
S x S frame; `logits_to_image` upsamples them, crops the (rh, rw) region and resizes to (H, W).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.intensity import IntensityConfig, normalize
from medagent.errors import ConfigError, DataError

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocessing:
    """How a checkpoint expects its input.

    Attributes:
        name: "sam", "medsam", "tiny" or a user's name.
        image_size: side S of the square encoder input, pixels.
        keep_aspect_ratio: True: resize the longest side to S and pad; False: resize to S x S.
        value_scale: multiply the [0, 1] image by this (255 for SAM's 0-255 statistics, 1 otherwise).
        minmax: min-max scale the resized image to [0, 1] before `value_scale` (MedSAM).
        pixel_mean / pixel_std: per-channel statistics, in the units after `value_scale`.
        box_mask_prior: when a box comes without previous logits, render the box into SAM's mask input
            (`box_prior_logits`) so the decoder gets the box densely as well as through its corner
            tokens. Off for the official checkpoints (not trained that way), on for the tiny SAM, whose
            from-scratch decoder localises small boxes poorly from corner tokens alone.
    """

    name: str = "tiny"
    image_size: int = 256
    keep_aspect_ratio: bool = True
    value_scale: float = 1.0
    minmax: bool = False
    pixel_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    pixel_std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    box_mask_prior: bool = False

    def __post_init__(self) -> None:
        if self.image_size <= 0:
            raise ConfigError(f"preprocessing image_size must be > 0, got {self.image_size}")
        if any(s <= 0 for s in self.pixel_std):
            raise ConfigError(f"preprocessing pixel_std must be > 0, got {self.pixel_std}")

    def key(self) -> str:
        """A stable string identifying this preprocessing (part of the embedding-cache key)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["pixel_mean"] = list(self.pixel_mean)
        d["pixel_std"] = list(self.pixel_std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown preprocessing field(s) {sorted(unknown)}")
        data = dict(data)
        for k in ("pixel_mean", "pixel_std"):
            if k in data:
                data[k] = tuple(float(v) for v in data[k])
        return cls(**data)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(rh, rw): the size the image takes inside the S x S input frame."""
        s = self.image_size
        if not self.keep_aspect_ratio:
            return s, s
        scale = s / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)


PRESETS: dict[str, Preprocessing] = {
    "sam": Preprocessing("sam", 1024, True, 255.0, False, IMAGENET_MEAN_255, IMAGENET_STD_255),
    "medsam": Preprocessing("medsam", 1024, False, 1.0, True, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "tiny": Preprocessing("tiny", 256, True, 1.0, False, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), box_mask_prior=True),
}


def image_to_rgb01(image: np.ndarray, modality: str, intensity: IntensityConfig | None = None) -> np.ndarray:
    """A 2D (C, H, W) image -> float32 (3, H, W) in [0, 1] via medagent's intensity module.

    1 channel is repeated; 2 channels get their mean as a third; more than 3 keep the first three.
    """
    if image.ndim != 3:
        raise DataError(f"SAM takes a 2D (C, H, W) image, got shape {image.shape}")
    scaled = normalize(image, modality, intensity)
    c = scaled.shape[0]
    if c == 1:
        rgb = np.repeat(scaled, 3, axis=0)
    elif c == 2:
        rgb = np.concatenate([scaled, scaled.mean(axis=0, keepdims=True)], axis=0)
    else:
        rgb = scaled[:3]
    return np.ascontiguousarray(rgb, dtype=np.float32)


def prepare_input(rgb01: np.ndarray | torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """(3, H, W) or (B, 3, H, W) float in [0, 1] -> (B, 3, S, S) encoder input per `pre`."""
    x = torch.as_tensor(rgb01, dtype=torch.float32)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise DataError(f"prepare_input expects (3, H, W) or (B, 3, H, W), got {tuple(x.shape)}")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    rh, rw = pre.input_size(h, w)
    if (rh, rw) != (h, w):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=(rh < h or rw < w))
    if pre.minmax:
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        x = (x - lo) / (hi - lo).clamp_min(1e-8)
    x = x.clamp(0.0, 1.0) * pre.value_scale
    mean = torch.tensor(pre.pixel_mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.pixel_std, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    s = pre.image_size
    return F.pad(x, (0, s - rw, 0, s - rh))


def coords_to_input(coords: np.ndarray, original_size: tuple[int, int], pre: Preprocessing) -> np.ndarray:
    """(..., 2) [x, y] original pixels -> the same points in the S x S input frame (float32)."""
    h, w = original_size
    rh, rw = pre.input_size(h, w)
    out = np.asarray(coords, dtype=np.float32).copy()
    out[..., 0] *= rw / w
    out[..., 1] *= rh / h
    return out


def boxes_to_input(boxes: np.ndarray, original_size: tuple[int, int], pre: Preprocessing) -> np.ndarray:
    """(N, 4) [x0, y0, x1, y1] original pixels -> input frame (float32)."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 2, 2)
    return coords_to_input(b, original_size, pre).reshape(-1, 4)


def logits_to_image(low_res: torch.Tensor, original_size: tuple[int, int], pre: Preprocessing) -> torch.Tensor:
    """(B, K, L, L) low-res logits -> (B, K, H, W) logits on the original grid."""
    s = pre.image_size
    rh, rw = pre.input_size(*original_size)
    x = F.interpolate(low_res, size=(s, s), mode="bilinear", align_corners=False)
    x = x[..., :rh, :rw]
    return F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)


def mask_to_low_res_logits(mask: np.ndarray, pre: Preprocessing, low_res_size: int, scale: float = 8.0) -> np.ndarray:
    """A binary (H, W) mask -> float32 (1, L, L) logits usable as SAM's mask input.

    The mask follows the image's geometry (resize into the input frame, pad with background) and is
    area-averaged to L x L; a fraction f of foreground becomes the logit `scale * (2 f - 1)`, so full
    foreground/background cells get +/- `scale` (SAM's own logits are typically of magnitude 5-20).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise DataError(f"a mask for SAM's mask input must be 2D (H, W), got shape {m.shape}")
    h, w = m.shape
    t = torch.as_tensor((m > 0).astype(np.float32))[None, None]
    rh, rw = pre.input_size(h, w)
    s = pre.image_size
    t = F.interpolate(t, size=(rh, rw), mode="bilinear", align_corners=False, antialias=(rh < h or rw < w))
    t = F.pad(t, (0, s - rw, 0, s - rh))
    t = F.interpolate(t, size=(low_res_size, low_res_size), mode="area")
    return (scale * (2.0 * t[0] - 1.0)).numpy().astype(np.float32)


def box_prior_logits(edges: torch.Tensor, image_size: int, low_res_size: int, scale: float = 4.0) -> torch.Tensor:
    """Boxes rendered as mask-input logits: (N, 4) [left, top, right, bottom) in input-frame pixels
    (right/bottom exclusive) -> (N, 1, L, L), `scale * (2 f - 1)` with f the box's cover of each cell."""
    cell = image_size / low_res_size
    lo = torch.arange(low_res_size, dtype=torch.float32) * cell
    hi = lo + cell

    def cover(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (N,) edges -> (N, L) fraction
        return ((torch.minimum(b[:, None], hi) - torch.maximum(a[:, None], lo)).clamp(0, cell)) / cell

    e = torch.as_tensor(edges, dtype=torch.float32).reshape(-1, 4)
    f = cover(e[:, 1], e[:, 3])[:, :, None] * cover(e[:, 0], e[:, 2])[:, None, :]
    return (scale * (2.0 * f - 1.0))[:, None]


def box_edges_to_input(boxes: np.ndarray, original_size: tuple[int, int], pre: Preprocessing) -> np.ndarray:
    """Inclusive pixel boxes (N, 4) -> their pixel edges [left, top, right, bottom) in the input frame."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    b[:, 2:] += 1.0
    return boxes_to_input(b, original_size, pre)
