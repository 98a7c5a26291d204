"""Automatic segmenters as tools: `unet`, `ifunet` (intuitionistic fuzzy input) and `allukan` (KA layers only).

All three share one tool class: the case is scaled by `medagent.data.intensity.normalize` (the same call
the trainer makes), padded to a multiple of 2**depth, run through the network, cropped back and turned
into per-class softmax probabilities and an argmax mask.

    from medagent.tools import load_tool
    tool = load_tool("ifunet")                       # shipped weights trained on mni-tissue
    tool = load_tool("unet", dataset="mni-lesion")   # another shipped checkpoint
    pred = tool.predict(case)                        # pred.mask (H, W) uint8, pred.probabilities (K, H, W)
    pred = tool.predict(case, target="grey matter")  # binary mask of one class (by index or name)

Checkpoints are folders with `model.safetensors` + `config.json` (`save_pretrained` / `from_pretrained`,
through `medagent.tools.checkpoint`): a local folder or a Hub id `hf://owner/name[@revision]`; only
safetensors are ever loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from medagent.data.case import Case
from medagent.data.intensity import IntensityConfig, normalize
from medagent.errors import CheckpointError, ConfigError, DataError, ToolError, ToolUnavailable
from medagent.tools.base import Prediction, Tool, ToolKind
from medagent.tools.checkpoint import load_state_strict, read_config, read_weights, resolve_checkpoint, write_checkpoint
from medagent.tools.nets.allukan import ALLUKAN
from medagent.tools.nets.fuzzy import FuzzyInput
from medagent.tools.nets.kan import DEFAULT_FORM
from medagent.tools.nets.unet import UNet

MODELS = ("unet", "ifunet", "allukan")
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
#: The `format` entry of the weights' safetensors metadata.
WEIGHTS_FORMAT = "medagent-segmenter"
DEFAULT_DATASET = "mni-tissue"


@dataclass
class SegmenterConfig:
    """Everything needed to rebuild a segmenter network and feed it (stored as config.json).

    Attributes:
        model: "unet", "ifunet" or "allukan".
        in_channels: image channels (C of the (C, H, W) case image).
        num_classes: output classes, background included.
        class_names: class index -> name from the training data (used to match classes by name).
        width: channels at full resolution (level i has width * 2**i).
        depth: number of 2x down-samplings.
        modality: modality of the training images; used for scaling when a case's modality is "unknown".
        ct_window: CT window (name or [level, width] in HU) used when the modality is CT.
        dataset: name of the training data (informational).
        negation, lam, learnable_lambda, yager_a: IF-UNet fuzzy input (see `FuzzyInput`); ifunet only.
        layer, form, grad_free, grid_size, spline_order: KA layers (see `ALLUKAN`); allukan only.
        format_version: config schema version.
    """

    model: str = "unet"
    in_channels: int = 1
    num_classes: int = 4
    class_names: dict[int, str] = field(default_factory=lambda: {0: "background", 1: "cerebrospinal fluid", 2: "grey matter", 3: "white matter"})
    width: int = 8
    depth: int = 3
    modality: str = "MR"
    ct_window: str | list[float] = "soft_tissue"
    dataset: str = ""
    negation: str = "sugeno"
    lam: float = 1.2
    learnable_lambda: bool = False
    yager_a: float = 0.8
    layer: str = "sakan"
    form: str = DEFAULT_FORM
    grad_free: bool = True
    grid_size: int = 5
    spline_order: int = 3
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ConfigError(f"config field 'model' must be one of {MODELS}, got {self.model!r}")
        self.class_names = {int(k): str(v) for k, v in self.class_names.items()}
        if sorted(self.class_names) != list(range(self.num_classes)):
            raise ConfigError(
                f"config field 'class_names' has indices {sorted(self.class_names)} but 'num_classes' is {self.num_classes}"
            )
        if isinstance(self.ct_window, (list, tuple)):
            self.ct_window = [float(v) for v in self.ct_window]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["class_names"] = {str(k): v for k, v in self.class_names.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SegmenterConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"{source}: unknown config field(s) {unknown}; known fields: {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ConfigError) as exc:
            raise CheckpointError(f"{source}: {exc}") from exc

    def intensity(self) -> IntensityConfig:
        window = tuple(self.ct_window) if isinstance(self.ct_window, list) else self.ct_window
        return IntensityConfig(ct_window=window)  # type: ignore[arg-type]


def build_network(config: SegmenterConfig) -> nn.Module:
    """The torch network of `config`: (N, in_channels, H, W) in [0, 1] -> logits (N, num_classes, H, W)."""
    if config.model == "unet":
        return UNet(config.in_channels, config.num_classes, config.width, config.depth)
    if config.model == "ifunet":
        fuzzy = FuzzyInput(config.negation, config.lam, config.learnable_lambda, config.yager_a)
        return nn.Sequential(fuzzy, UNet(3 * config.in_channels, config.num_classes, config.width, config.depth))
    return ALLUKAN(config.in_channels, config.num_classes, config.width, config.depth, layer=config.layer,
                   form=config.form, grad_free=config.grad_free, grid_size=config.grid_size,
                   spline_order=config.spline_order)


def model_input(image: np.ndarray, modality: str, config: SegmenterConfig, case_id: str = "image") -> np.ndarray:
    """Scale a raw (C, H, W) image the way training and inference both do; checks channels and NaN.

    A case whose modality is "unknown" is scaled as the training data's modality.
    """
    if image.ndim != 3:
        raise DataError(f"{case_id}: a segmenter needs a 2D (C, H, W) image, got shape {image.shape}")
    if image.shape[0] != config.in_channels:
        raise DataError(
            f"{case_id}: image has {image.shape[0]} channel(s) but the {config.model!r} model was trained on "
            f"{config.in_channels} (config field 'in_channels')"
        )
    if not np.isfinite(image).all():
        raise DataError(f"{case_id}: image contains NaN or Inf values; clean or mask them before segmenting")
    if modality == "unknown":
        modality = config.modality
    return normalize(image, modality, config.intensity())


class SegmenterTool(Tool):
    """A trained automatic segmenter (see module docstring). Subclasses only fix `name`."""

    name: ClassVar[str] = "segmenter"
    kind: ClassVar[ToolKind] = ToolKind.AUTOMATIC
    inputs: ClassVar[frozenset[str]] = frozenset({"target"})

    def __init__(self, config: SegmenterConfig, net: nn.Module | None = None, device: str | torch.device = "cpu") -> None:
        if config.model != self.name:
            raise ConfigError(f"config field 'model' is {config.model!r} but this is the {self.name!r} tool")
        self.config = config
        self.device = torch.device(device)
        self.net = (net if net is not None else build_network(config)).to(self.device)
        self.net.eval()

    # -- classes -------------------------------------------------------------------------------
    @property
    def class_names(self) -> dict[int, str]:
        return dict(self.config.class_names)

    def class_index(self, target: int | str) -> int:
        """Class index of `target` (an index or a name, case-insensitive); ToolError when out of range/unknown."""
        if isinstance(target, str) and not target.strip().lstrip("-").isdigit():
            lookup = {v.lower(): k for k, v in self.config.class_names.items()}
            if target.strip().lower() not in lookup:
                raise ToolError(f"tool {self.name!r}: unknown class name {target!r}; classes: {self.config.class_names}")
            return lookup[target.strip().lower()]
        index = int(target)
        if not 0 <= index < self.config.num_classes:
            raise ToolError(
                f"tool {self.name!r}: class index {index} out of range 0..{self.config.num_classes - 1} "
                f"(classes: {self.config.class_names})"
            )
        return index

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    # -- inference -----------------------------------------------------------------------------
    def predict_2d(self, case: Case, target: int | str | None = None) -> Prediction:
        """Segment a 2D case. Returns all classes, or with `target` a 0/1 mask of that class and
        probabilities (2, H, W) = [1 - p, p]."""
        index = None if target is None else self.class_index(target)
        x = model_input(case.image, case.modality, self.config, case.id)
        probs = self.predict_probabilities(x)
        mask = probs.argmax(0).astype(np.uint8)
        extras: dict[str, Any] = {"model": self.name, "class_names": self.class_names, "dataset": self.config.dataset}
        if index is not None:
            p = probs[index]
            extras["target"] = index
            return Prediction(mask=(mask == index).astype(np.uint8), probabilities=np.stack([1.0 - p, p]).astype(np.float32),
                              score=float(p[mask == index].mean()) if (mask == index).any() else 0.0, extras=extras)
        return Prediction(mask=mask, probabilities=probs, score=float(probs.max(0).mean()), extras=extras)

    def predict_probabilities(self, x: np.ndarray) -> np.ndarray:
        """Softmax probabilities (K, H, W) float32 for an already scaled (C, H, W) input."""
        self.net.eval()
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(np.ascontiguousarray(x))[None].to(self.device))
            return torch.softmax(logits.float(), dim=1)[0].cpu().numpy().astype(np.float32)

    # -- checkpoints ---------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write `model.safetensors` + `config.json` into `directory` (created)."""
        return write_checkpoint(directory, self.config.to_dict(), self.net.state_dict(), config_name=CONFIG_FILE,
                                weights_name=WEIGHTS_FILE, metadata={"model": self.name, "format": WEIGHTS_FORMAT})

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu", **overrides: Any) -> "SegmenterTool":
        """Load a checkpoint: a folder, its model.safetensors, or a Hub id `hf://owner/name[@revision]`.

        Only safetensors are loaded. Raises CheckpointError for a missing/corrupt file, a config.json for
        another model, unknown fields, or weights whose shapes do not match the config (naming the field
        when it can tell).
        """
        folder = resolve_checkpoint(directory, needs=(CONFIG_FILE, WEIGHTS_FILE), kind=cls.name)
        cfg_path, weights = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        data = read_config(cfg_path, kind=cls.name, expect={"model": cls.name})
        config = SegmenterConfig.from_dict({**data, **overrides}, source=str(cfg_path))
        state = read_weights(weights)
        net = build_network(config)
        check_state(net, state, config, weights)
        load_state_strict(net, state, weights, what=f"the {config.model!r} network of {CONFIG_FILE}")
        return cls(config, net, device=device)


#: The safetensors reader every trainer and tool shares (kept under its old name).
load_safetensors = read_weights


_DIAGNOSE = {
    "in_channels": [1, 2, 3, 4], "num_classes": list(range(2, 10)), "width": [2, 4, 6, 8, 12, 16, 24, 32, 64],
    "depth": [1, 2, 3, 4, 5], "layer": ["sakan", "stacked"], "form": ["shared", "per_output", "sprecher"],
    "grid_size": list(range(2, 12)), "spline_order": [1, 2, 3, 4], "learnable_lambda": [False, True],
}


def check_state(net: nn.Module, state: dict[str, torch.Tensor], config: SegmenterConfig, source: Path) -> None:
    """Raise CheckpointError naming the config field when `state` fits `net` with one field changed.

    Anything else that does not fit (keys, shapes) is left to `load_state_strict`, which names the keys.
    """
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected == got:
        return
    for name, values in _DIAGNOSE.items():
        current = getattr(config, name)
        for value in values:
            if value == current:
                continue
            trial = dataclasses.replace(config, **{name: value}, class_names={i: str(i) for i in range(value)}) \
                if name == "num_classes" else dataclasses.replace(config, **{name: value})
            try:
                shapes = {k: tuple(v.shape) for k, v in build_network(trial).state_dict().items()}
            except Exception:  # noqa: BLE001 - an impossible trial value
                continue
            if shapes == got:
                raise CheckpointError(
                    f"{source}: weights do not match config.json: config field {name!r} is {current!r} "
                    f"but the weights were saved with {name}={value!r}"
                )


class UNetTool(SegmenterTool):
    """Plain 2D UNet trained with intensity augmentation (the baseline)."""

    name = "unet"


class IFUNetTool(SegmenterTool):
    """UNet fed with the intuitionistic fuzzy maps [mu, nu, pi] (see `medagent.tools.nets.fuzzy`)."""

    name = "ifunet"


class ALLUKANTool(SegmenterTool):
    """U-shaped network of KA layers only (SaKAN + Grad-Free Spline + KAonv; see `medagent.tools.nets.kan`)."""

    name = "allukan"


TOOL_CLASSES: dict[str, type[SegmenterTool]] = {"unet": UNetTool, "ifunet": IFUNetTool, "allukan": ALLUKANTool}


def shipped_weights_name(model: str, dataset: str = DEFAULT_DATASET) -> str:
    """Folder name under medagent/weights/ of the shipped checkpoint of `model` trained on `dataset`."""
    return f"{model}-{dataset}"


def build_segmenter(model: str, checkpoint: str | Path | None = None, dataset: str | None = None,
                    pretrained: bool = True, device: str = "cpu", **config: Any) -> SegmenterTool:
    """Build a segmenter tool.

    Args:
        model: "unet", "ifunet" or "allukan".
        checkpoint: a checkpoint folder (or its model.safetensors) or a Hub id `hf://owner/name[@revision]`;
            overrides `dataset`.
        dataset: which shipped checkpoint to load (default "mni-tissue").
        pretrained: False builds an untrained network from `config` (for training).
        device: torch device.
        **config: `SegmenterConfig` fields (with `pretrained=False`) or overrides of a checkpoint's config.
    """
    if model not in TOOL_CLASSES:
        raise ToolError(f"unknown segmenter {model!r}; choose from {sorted(TOOL_CLASSES)}")
    cls = TOOL_CLASSES[model]
    if checkpoint is not None:
        return cls.from_pretrained(checkpoint, device=device, **config)
    if not pretrained:
        return cls(SegmenterConfig(model=model, dataset=dataset or "", **config), device=device)
    from medagent.weights import WEIGHTS_DIR, read_manifest

    name = shipped_weights_name(model, dataset or DEFAULT_DATASET)
    folder = WEIGHTS_DIR / name
    if name not in read_manifest() or not folder.is_dir():
        shipped = sorted(n for n in read_manifest() if n.startswith(model + "-"))
        raise ToolUnavailable(
            f"no shipped {model!r} weights for dataset {dataset or DEFAULT_DATASET!r} (shipped: {shipped or 'none'}); "
            f"train one with medagent.train.tool_trainer.train_tool and pass checkpoint=DIR"
        )
    return cls.from_pretrained(folder, device=device, **config)


def build_unet(checkpoint: str | None = None, **config: Any) -> SegmenterTool:
    """Registry builder of `unet` (see `build_segmenter`)."""
    return build_segmenter("unet", checkpoint, **config)


def build_ifunet(checkpoint: str | None = None, **config: Any) -> SegmenterTool:
    """Registry builder of `ifunet` (see `build_segmenter`)."""
    return build_segmenter("ifunet", checkpoint, **config)


def build_allukan(checkpoint: str | None = None, **config: Any) -> SegmenterTool:
    """Registry builder of `allukan` (see `build_segmenter`)."""
    return build_segmenter("allukan", checkpoint, **config)
