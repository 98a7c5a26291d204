"""Dense patch features for few-shot matching: one small adapter per kind of backbone.

Every backbone turns a 2D `Case` into a `FeatureMap`: a (C, h, w) grid of patch features and the part
of that grid the image covers (SAM pads the resized image into a square frame; a ViT fed a resized
image covers all of it). Matching samples the grid at its own cell centres (`matching.sample_features`),
so backbones with different grids and padding are interchangeable.

- `SamEncoderBackbone`: the `sam` tool's image encoder through its embedding cache (the default: a
  target image encoded for matching is not encoded again when SAM is prompted on it).
- `TransformersBackbone`: any `transformers` vision model a user has weights for (DINOv2, ViT, ...):
  patch tokens of `last_hidden_state` (leading CLS / register tokens dropped) on a square resize.
- `TorchBackbone`: any `torch.nn.Module` mapping (1, 3, S, S) to (1, C, h, w) (e.g. a timm model with
  `forward_features`, wrapped by the user).
- `IntensityBackbone`: per-pixel intensity features (a floor, and a fully known backbone for tests).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.case import Case
from medagent.data.intensity import normalize
from medagent.errors import CheckpointError, ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class FeatureMap:
    """Patch features of one image.

    Attributes:
        features: float32 tensor (C, h, w).
        extent: (fy, fx) fraction of the grid's height / width that the image covers, from the top-left
            (1.0, 1.0) unless the backbone pads).
    """

    features: torch.Tensor
    extent: tuple[float, float] = (1.0, 1.0)


class Backbone(Protocol):
    """Anything with a `name` and `features(case) -> FeatureMap`."""

    name: str

    def features(self, case: Case) -> FeatureMap: ...


def rgb01(case: Case) -> np.ndarray:
    """(3, H, W) float32 in [0, 1] of a 2D case via medagent's intensity module (grey repeated)."""
    x = normalize(case.image, case.modality)
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] == 2:
        x = np.concatenate([x, x.mean(axis=0, keepdims=True)], axis=0)
    return np.ascontiguousarray(x[:3], dtype=np.float32)


class SamEncoderBackbone:
    """The image encoder of a `SamTool` (shares its embedding cache and preprocessing)."""

    name = "sam"

    def __init__(self, sam: Any) -> None:
        self.sam = sam

    def features(self, case: Case) -> FeatureMap:
        emb, _ = self.sam.predictor.embed(case.image, case.modality)
        pre = self.sam.preprocessing
        rh, rw = pre.input_size(*case.shape)
        s = float(pre.image_size)
        return FeatureMap(emb.features[0].float(), (rh / s, rw / s))


class TransformersBackbone:
    """A `transformers` vision model loaded from a local folder (no download).

    Args:
        path: folder with config.json + weights (`AutoModel.from_pretrained(path)`), or a built model.
        image_size: square input side in pixels (a multiple of the model's patch size).
        mean / std: input normalisation (ImageNet by default, as DINOv2 and ViT use).
        device: torch device.
    """

    def __init__(self, path: str | Path | torch.nn.Module, image_size: int = 224,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD, device: str = "cpu") -> None:
        if isinstance(path, torch.nn.Module):
            self.model = path
            self.name = f"transformers:{type(path).__name__}"
        else:
            from transformers import AutoModel

            p = Path(path)
            if not (p / "config.json").is_file():
                raise CheckpointError(f"backbone folder {p} has no config.json (need a transformers model saved with save_pretrained)")
            try:
                self.model = AutoModel.from_pretrained(str(p), local_files_only=True)
            except Exception as exc:  # wrong keys, unknown architecture, corrupt weights
                raise CheckpointError(f"cannot load a transformers backbone from {p}: {exc}") from exc
            self.name = f"transformers:{p.name}"
        self.model = self.model.to(device).eval()
        self.device = device
        self.image_size = int(image_size)
        cfg = getattr(self.model, "config", None)
        self.patch = int(getattr(cfg, "patch_size", 16)) if cfg is not None else 16
        if self.image_size % self.patch:
            raise ConfigError(f"backbone image_size {self.image_size} is not a multiple of the patch size {self.patch}")
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def features(self, case: Case) -> FeatureMap:
        x = torch.from_numpy(rgb01(case))[None]
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        x = ((x - self.mean) / self.std).to(self.device)
        out = self.model(pixel_values=x)
        tokens = out.last_hidden_state[0]  # (T, C)
        g = self.image_size // self.patch
        if tokens.shape[0] < g * g:
            raise ConfigError(f"{self.name}: {tokens.shape[0]} tokens for a {g}x{g} patch grid")
        patches = tokens[tokens.shape[0] - g * g:]  # leading CLS / register tokens dropped
        return FeatureMap(patches.T.reshape(-1, g, g).float().cpu())


class TorchBackbone:
    """Any module mapping a normalised (1, 3, S, S) image to a (1, C, h, w) feature map."""

    def __init__(self, module: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor], image_size: int = 224,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD, name: str = "torch") -> None:
        self.module = module
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.name = name

    @torch.no_grad()
    def features(self, case: Case) -> FeatureMap:
        x = torch.from_numpy(rgb01(case))[None]
        x = F.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False, antialias=True)
        out = self.module((x - self.mean) / self.std)
        if out.ndim != 4 or out.shape[0] != 1:
            raise ConfigError(f"backbone {self.name!r} must return (1, C, h, w) features, got {tuple(out.shape)}")
        return FeatureMap(out[0].float().cpu())


class IntensityBackbone:
    """Per-pixel features [v, 1 - v] of the [0, 1]-scaled grey image, on the image's own grid.

    Cosine similarity is 1 between equal intensities at the ends of the range and 0 between black and
    white: a floor for learned backbones and a backbone with known matches for tests.
    """

    name = "intensity"

    def features(self, case: Case) -> FeatureMap:
        v = torch.from_numpy(rgb01(case)).mean(dim=0)
        return FeatureMap(torch.stack([v, 1.0 - v]))


def make_backbone(spec: str | Backbone, sam: Any | None = None, image_size: int = 224, device: str = "cpu") -> Backbone:
    """A backbone from a config value.

    Args:
        spec: "sam" (the SAM tool's encoder), "intensity", "transformers:PATH" (a local folder), or an
            object with `features(case)` (returned as is).
        sam: the `SamTool`, needed for "sam".
        image_size: input side for transformers backbones.
    """
    if not isinstance(spec, str):
        if not hasattr(spec, "features"):
            raise ConfigError(f"backbone {spec!r} has no features(case) method")
        return spec
    if spec == "sam":
        if sam is None:
            raise ConfigError("backbone 'sam' needs the SAM tool")
        return SamEncoderBackbone(sam)
    if spec == "intensity":
        return IntensityBackbone()
    if spec.startswith("transformers:"):
        return TransformersBackbone(spec.split(":", 1)[1], image_size=image_size, device=device)
    raise ConfigError(f"unknown backbone {spec!r}; use 'sam', 'intensity' or 'transformers:PATH'")
