"""Shared pieces of the continual test-time adaptation (CTTA) tools.

- `AdaptiveTool`: the `Tool` base of `noadapt`, `tent`, `cotta`, `vptta`, `mgipt`: online, batch 1, no
  labels; `predict(case)` adapts on the image then predicts; NaN images are skipped with a warning; the
  state survives across calls and can be saved (`state_dict` / `save_state`) and resumed.
- Small helpers the methods share: entropy and probabilities of logits, colour jitter, optimizer state as
  tensors, configs from dataclasses or dicts.

The other shared parts have their own modules: `source` (the frozen source model), `batchnorm` (switchable
BN statistics), `fourier` (the low-frequency amplitude prompt); VPTTA's memory bank lives in `vptta`.
Shapes: images enter the networks as float32 (1, C, H, W) in [0, 1] (the segmenter's intensity scaling);
logits are (1, K, H, W).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.case import Case
from medagent.errors import CheckpointError, ConfigError
from medagent.tools.base import Prediction, Tool, ToolKind
from medagent.tools.checkpoint import read_config, read_weights, resolve_checkpoint, write_checkpoint
from medagent.tools.tta.source import SourceModel, load_source

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def entropy(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Mean per-pixel entropy of (N, K, H, W) logits: softmax over K, or binary entropy per channel (sigmoid)."""
    if activation == "softmax":
        logp = F.log_softmax(logits, dim=1)
        return -(logp.exp() * logp).sum(1).mean()
    if activation == "sigmoid":
        p = torch.sigmoid(logits)
        return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
    raise ConfigError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")


def probabilities(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """(N, K, H, W) logits -> class probabilities; a single sigmoid channel becomes [1 - p, p]."""
    if activation == "sigmoid":
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p
    return torch.softmax(logits, dim=1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision-style ColorJitter(brightness, contrast) on a [0, 1] tensor (N, C, H, W), per sample.

    Brightness multiplies by b ~ U(1 - brightness, 1 + brightness); contrast blends with the sample's mean
    grey by c ~ U(1 - contrast, 1 + contrast); clipped to [0, 1]. (Fixed order; torchvision shuffles it.)
    """
    n = x.shape[0]
    b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(x) * brightness
    c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(x) * contrast
    y = (x * b).clamp(0, 1)
    mean = y.mean((1, 2, 3), keepdim=True)
    return (c * y + (1 - c) * mean).clamp(0, 1)


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state into named tensors (for safetensors)."""
    out = {}
    for pid, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{pid}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu().clone()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Inverse of `optimizer_tensors` (hyper-parameters stay those of `optimizer`)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            pid, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(pid), {})[key] = value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def config_from(cls: type, config: Any = None, **overrides: Any) -> Any:
    """A method config dataclass from an instance, a dict, or None, plus keyword overrides.

    Raises ConfigError naming unknown fields.
    """
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, cls):
        data = asdict(config)
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ConfigError(f"config must be a {cls.__name__}, a dict or None, got {type(config).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    for f in fields(cls):  # JSON round trips turn tuples into lists
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    return cls(**data)


# ----------------------------------------------------------------------------------------------
# the adaptive tool base
# ----------------------------------------------------------------------------------------------
class AdaptiveTool(Tool):
    """Base of the CTTA tools: `predict(case)` adapts on the image, then predicts it (online, batch 1).

    Subclasses implement `_setup()` (fresh adapted state from the source), `_adapt_predict(x) -> logits`,
    `_state_tensors()` / `_load_state_tensors(tensors)` and may extend `_state_meta()`.

    Attributes:
        source: the frozen `SourceModel` (never modified).
        config: the method's config dataclass.
        images_seen: images adapted on since the last reset (NaN images excluded).
        skipped: images skipped since the last reset (non-finite values).
    """

    name: ClassVar[str] = "adaptive"
    kind: ClassVar[ToolKind] = ToolKind.ADAPTIVE
    needs_bn: ClassVar[bool] = True
    #: Adapts across calls: the env resets it at every episode and forks restore it (`medagent.envs.episode`).
    stateful: ClassVar[bool] = True

    def __init__(self, source: SourceModel, config: Any) -> None:
        if self.needs_bn:
            source.require_bn(self.name)
        self.source = source
        self.config = config
        self.device = source.device
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything adapted so far: back to the source model's state."""
        self.images_seen = 0
        self.skipped = 0
        self._image_size: int | None = None
        seed = int(getattr(self.config, "seed", 0))
        self.generator = torch.Generator().manual_seed(seed)
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- prediction --------------------------------------------------------------------------
    @property
    def activation(self) -> str:
        return str(getattr(self.config, "activation", "softmax"))

    def predict_2d(self, case: Case, **inputs: Any) -> Prediction:
        """Adapt on `case` (no label used), then segment it. Non-finite images are skipped with a warning."""
        if not np.isfinite(case.image).all():
            bad = int(np.count_nonzero(~np.isfinite(case.image)))
            warnings.warn(f"tool {self.name!r}: case {case.id!r} has {bad} NaN/Inf values; skipped (state unchanged)",
                          RuntimeWarning, stacklevel=2)
            self.skipped += 1
            empty = np.zeros(case.shape, dtype=np.uint8)
            return Prediction(mask=empty, score=None, extras={"skipped": "non-finite image", "method": self.name})
        x = self.source.scale(case)
        self.images_seen += 1
        logits = self._adapt_predict(x).detach()
        probs = probabilities(logits.float(), self.activation)[0].cpu().numpy().astype(np.float32)
        mask = probs.argmax(0).astype(np.uint8)
        return Prediction(mask=mask, probabilities=probs, score=float(probs.max(0).mean()),
                          extras={"method": self.name, "class_names": self.source.class_names,
                                  "images_seen": self.images_seen})

    # -- state --------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def _state_meta(self) -> dict[str, Any]:
        return {}

    def _load_state_meta(self, meta: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """{"tensors": {name: Tensor}, "meta": JSON-able dict}: everything needed to resume the stream."""
        meta = {"method": self.name, "config": asdict(self.config), "images_seen": self.images_seen,
                "skipped": self.skipped, "image_size": self._image_size, "generator": self.generator.get_state().tolist(), **self._state_meta()}
        return {"tensors": {k: v.detach().cpu().clone() for k, v in self._state_tensors().items()}, "meta": meta}  # clone: a snapshot, not a view of live weights

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` output (the config must match this tool's)."""
        meta = state["meta"]
        if meta.get("method") != self.name:
            raise CheckpointError(f"state was saved by tool {meta.get('method')!r}, not {self.name!r}")
        saved = json.loads(json.dumps(meta.get("config", {})))
        mine = json.loads(json.dumps(asdict(self.config)))
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise CheckpointError(f"state of {self.name!r} was saved with another config (fields {diff} differ)")
        self.reset()
        self._image_size = meta.get("image_size")
        self._load_state_meta(meta)
        self._load_state_tensors({k: v.to(self.device) for k, v in state["tensors"].items()})
        self.images_seen = int(meta.get("images_seen", 0))
        self.skipped = int(meta.get("skipped", 0))
        self.generator.set_state(torch.tensor(meta["generator"], dtype=torch.uint8))

    def save_state(self, directory: str | Path) -> Path:
        """Write the stream state to `directory` (state.safetensors + state.json)."""
        state = self.state_dict()
        return write_checkpoint(directory, state["meta"], state["tensors"], config_name=STATE_META,
                                weights_name=STATE_TENSORS, indent=1)

    def load_state(self, directory: str | Path) -> None:
        """Resume from a folder written by `save_state` (or one of its files, or a Hub id `hf://owner/name[@revision]`)."""
        folder = resolve_checkpoint(directory, needs=(STATE_META, STATE_TENSORS), kind=f"{self.name} stream state")
        meta = read_config(folder / STATE_META, kind=f"{self.name} stream state", expect={"method": self.name})
        self.load_state_dict({"tensors": read_weights(folder / STATE_TENSORS), "meta": meta})

    # -- helpers -------------------------------------------------------------------------------
    def image_size(self, x: torch.Tensor) -> int:
        """Reference side of prompt sizes: config.image_size, else min(H, W) of the first image (kept)."""
        if self._image_size is None:
            fixed = getattr(self.config, "image_size", None)
            self._image_size = int(fixed) if fixed else int(min(x.shape[-2:]))
        return self._image_size

    def source_parameters(self) -> dict[str, torch.Tensor]:
        """A copy of the source network's parameters and buffers (tests check they never change)."""
        return {k: v.detach().clone() for k, v in self.source.net.state_dict().items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images_seen={self.images_seen}, config={self.config})"


def build_adaptive(cls: type[AdaptiveTool], config_cls: type, checkpoint: str | None, dataset: str | None,
                   device: str, config: Any, overrides: dict[str, Any]) -> AdaptiveTool:
    """Shared registry builder: source from `checkpoint` or the shipped `ctta-source-<dataset>`.

    `config` (a dataclass or dict) is validated strictly (unknown fields are a ConfigError); loose
    keyword `overrides` that are not config fields are context for other tools and are dropped, as the
    registry does for every tool (`ToolSpec.build`).
    """
    known = {f.name for f in fields(config_cls)}
    cfg = config_from(config_cls, config, **{k: v for k, v in overrides.items() if k in known})
    return cls(load_source(dataset, checkpoint, device=device), cfg)
