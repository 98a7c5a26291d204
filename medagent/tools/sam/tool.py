"""The promptable `sam` tool and the per-episode `SamSession`.

    from medagent.tools import load_tool
    sam = load_tool("sam")                                   # shipped tiny SAM
    sam = load_tool("sam", checkpoint="sam_vit_b_01ec64.pth")  # an official file (type from its shapes)
    sam = load_tool("sam", checkpoint="medsam_vit_b.pth")    # MedSAM: detected from the name
    pred = sam.predict(case, boxes=[x0, y0, x1, y1], points=[[x, y]], point_labels=[1])
    pred2 = sam.predict(case, points=[[x, y]], point_labels=[0], mask_logits=pred.logits)

Coordinates are pixels of the image as the `Case` holds it (x = column, y = row); boxes are inclusive
[x0, y0, x1, y1]. Several boxes run in one decoder call; `Prediction.mask` is their union and
`extras["masks"]` / `extras["scores"]` hold one mask / predicted IoU per box. Points (and a single
previous-logits map) are shared by every box. A box reaching outside the image is clipped with a
warning. Boxes are inclusive, so [x, y, x, y] is a one-pixel box and [x, y0, x, y1] a one-pixel-wide
column (thin objects have such boxes); a box that covers no pixel of the image (x1 < x0, y1 < y0, or
entirely outside) has zero area: `ToolError`, as are points outside the image.

Checkpoints: a folder saved by `save_pretrained` (config.json with architecture + preprocessing, and
model.safetensors; local or a Hub id `hf://owner/name[@revision]`, see `medagent.tools.checkpoint`), or an
official SAM / MedSAM `.pth` read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from medagent.data.case import Case
from medagent.data.intensity import IntensityConfig
from medagent.errors import CheckpointError, ConfigError, ToolError, ToolUnavailable
from medagent.tools.base import Prediction, Tool, ToolKind, require_2d
from medagent.tools.checkpoint import (FOLDER_FILE_SUFFIXES, PICKLE_SUFFIXES, is_hub_id, read_config, read_weights,
                                       resolve_checkpoint, write_checkpoint)
from medagent.tools.sam.model import OFFICIAL_ARCHS, SamArchConfig, build_sam, load_official, load_state_dict_strict
from medagent.tools.sam.predictor import EmbeddingCache, SamPredictorCached
from medagent.tools.sam.preprocess import PRESETS, Preprocessing, mask_to_low_res_logits

#: Folder of the shipped tiny SAM (model.safetensors + config.json + model card).
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "weights" / "sam-tiny"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "medagent-sam"


@dataclass
class PredictorConfig:
    """Runtime options every SAM-family tool has (`SamConfig`, `sam2`'s `Sam2Config`).

    Attributes:
        device: torch device.
        cache_entries: most image embeddings kept in the LRU cache (0 disables it).
        cache_max_mb: most megabytes of embeddings kept.
        mask_threshold: logit threshold for the binary mask.
        ct_window: CT window name or (level, width) in HU for the intensity module.
        mask_logit_scale: magnitude of the logits made from a binary mask by the session's `set_mask`.
    """

    device: str = "cpu"
    cache_entries: int = 32
    cache_max_mb: float = 512.0
    mask_threshold: float = 0.0
    ct_window: str | tuple[float, float] = "soft_tissue"
    mask_logit_scale: float = 8.0

    def embedding_cache(self) -> EmbeddingCache:
        """An empty `EmbeddingCache` of this config's size."""
        return EmbeddingCache(self.cache_entries, int(self.cache_max_mb * 2**20))

    def intensity(self) -> IntensityConfig:
        """The intensity settings the predictor normalises images with."""
        return IntensityConfig(ct_window=self.ct_window)


@dataclass
class SamConfig(PredictorConfig):
    """Runtime options of the `sam` tool (the architecture and preprocessing come with the checkpoint):
    `PredictorConfig`'s, and

    Attributes:
        checkpoint_type: "auto" (folder -> its config; .pth -> MedSAM when the file name contains
            "medsam", SAM otherwise), "sam" or "medsam" (for .pth files).
        model_type: "vit_b" / "vit_l" / "vit_h" for .pth files; None detects it from the weights.
    """

    checkpoint_type: str = "auto"
    model_type: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_type not in ("auto", "sam", "medsam"):
            raise ConfigError(f"checkpoint_type must be 'auto', 'sam' or 'medsam', got {self.checkpoint_type!r}")
        if self.model_type is not None and self.model_type not in OFFICIAL_ARCHS:
            raise ConfigError(f"model_type must be one of {sorted(OFFICIAL_ARCHS)} or None, got {self.model_type!r}")


class PredictorTool(Tool):
    """What the SAM-family tools share: a cached predictor (`self.predictor`: model, preprocessing, embedding
    cache, low-resolution side) and a config with `mask_logit_scale`. `SamTool` and `sam2`'s `Sam2Tool` build
    their own predictor; the accessors below read it."""

    @property
    def model(self) -> torch.nn.Module:
        return self.predictor.model

    @property
    def preprocessing(self) -> Preprocessing:
        return self.predictor.preprocessing

    @property
    def cache(self) -> EmbeddingCache:
        return self.predictor.cache

    @property
    def low_res_size(self) -> int:
        """Side L of `Prediction.logits` maps and of the mask input."""
        return self.predictor.low_res_size

    def clear_cache(self) -> None:
        """Drop every cached embedding (needed after changing the model's weights in place)."""
        self.cache.clear()

    def mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        """A binary (H, W) mask on the case grid -> (1, L, L) logits for `mask_logits`."""
        return mask_to_low_res_logits(mask, self.preprocessing, self.low_res_size, self.config.mask_logit_scale)

    def checkpoint_extras(self) -> dict[str, Any]:
        """What `Prediction.extras` says about the checkpoint (the tool's source and preprocessing)."""
        return {"checkpoint": self.source, "preprocessing": self.preprocessing.name}

    def predict_2d(
        self,
        case: Case,
        boxes: Any = None,
        points: Any = None,
        point_labels: Any = None,
        mask_logits: Any = None,
        multimask: bool = False,
    ) -> Prediction:
        """Segment a 2D case from prompts (see the `sam` module docstring for shapes and coordinates).

        Returns a Prediction with mask (H, W) uint8 (union over boxes), probabilities (2, H, W)
        [background, foreground], logits (N, L, L) float32 low-res logits of the chosen mask per prompt
        set (feed back as `mask_logits`), score = mean predicted IoU, and extras: "masks" (N, H, W),
        "scores" (N,), "boxes" (N, 4) as used after clipping (or None), "cache_hit", "timings_ms",
        `checkpoint_extras()`, and with multimask "multimask_masks" (N, 3, H, W) / "multimask_scores" (N, 3).
        """
        require_2d(case, self.name)
        prompts = validate_prompts(case.shape, boxes, points, point_labels, mask_logits, self.low_res_size)
        t0 = time.perf_counter()
        emb, hit = self.predictor.embed(case.image, case.modality)
        t1 = time.perf_counter()
        full, scores, low = self.predictor.predict(emb, multimask=bool(multimask), **prompts)
        t2 = time.perf_counter()
        best = torch.argmax(scores, dim=1)  # (N,): with one output this is 0
        idx = torch.arange(full.shape[0])
        sel_full, sel_low, sel_scores = full[idx, best], low[idx, best], scores[idx, best]  # (N, H, W), ..., (N,)
        masks = (sel_full > self.config.mask_threshold).numpy().astype(np.uint8)
        prob = torch.sigmoid(sel_full).amax(dim=0).numpy().astype(np.float32)
        extras: dict[str, Any] = {
            "masks": masks,
            "scores": sel_scores.numpy().astype(np.float32),
            "boxes": prompts["boxes"],
            "cache_hit": hit,
            "timings_ms": {"encode": 1e3 * (t1 - t0), "decode": 1e3 * (t2 - t1)},
            **self.checkpoint_extras(),
        }
        if multimask:
            extras["multimask_masks"] = (full > self.config.mask_threshold).numpy().astype(np.uint8)
            extras["multimask_scores"] = scores.numpy().astype(np.float32)
        return Prediction(mask=masks.max(axis=0), probabilities=np.stack([1.0 - prob, prob]),
                          logits=sel_low.numpy().astype(np.float32), score=float(sel_scores.mean()), extras=extras)


class SamTool(PredictorTool):
    """Promptable SAM (any checkpoint) with an embedding cache. See the module docstring."""

    name: ClassVar[str] = "sam"
    kind: ClassVar[ToolKind] = ToolKind.PROMPTABLE
    inputs: ClassVar[frozenset[str]] = frozenset({"boxes", "points", "point_labels", "mask_logits", "multimask"})

    def __init__(
        self,
        model: torch.nn.Module,
        preprocessing: Preprocessing,
        arch: SamArchConfig,
        config: SamConfig | None = None,
        source: str = "",
        model_type: str = "custom",
    ) -> None:
        self.config = config or SamConfig()
        self.arch = arch
        self.source = source
        self.model_type = model_type
        self.predictor = SamPredictorCached(model, preprocessing, self.config.embedding_cache(), self.config.intensity(),
                                            self.config.device)


    def session(self, case: Case, use_previous_logits: bool = True) -> "SamSession":
        return SamSession(self, case, use_previous_logits)

    # -- prediction -----------------------------------------------------------------------------
    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: str = "float32") -> Path:
        """Write config.json (architecture, preprocessing) and model.safetensors (weights in `dtype`)."""
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        meta = {
            "format": FORMAT,
            "version": 1,
            "model_type": self.model_type,
            "arch": self.arch.to_dict(),
            "preprocessing": self.preprocessing.to_dict(),
            "dtype": dtype,
        }
        return write_checkpoint(directory, meta, self.model.state_dict(), config_name=CONFIG_NAME,
                                weights_name=WEIGHTS_NAME, dtype=getattr(torch, dtype), metadata={"format": FORMAT})

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> "SamTool":
        """Load a folder written by `save_pretrained` (or its model.safetensors, or a Hub id
        `hf://owner/name[@revision]`); `overrides` are `SamConfig` fields."""
        folder = resolve_checkpoint(directory, needs=(CONFIG_NAME, WEIGHTS_NAME), kind="medagent SAM")
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        meta = read_config(cfg_path, kind="medagent SAM", expect={"format": FORMAT})
        try:
            arch = SamArchConfig.from_dict(meta["arch"])
            pre = Preprocessing.from_dict(meta["preprocessing"])
        except (KeyError, ConfigError, TypeError) as exc:
            raise CheckpointError(f"{cfg_path}: bad architecture or preprocessing entry: {exc}") from exc
        model = build_sam(arch)
        load_state_dict_strict(model, read_weights(w_path), w_path)
        source = str(directory) if is_hub_id(directory) else str(folder)
        return cls(model, pre, arch, SamConfig(**overrides), source=source, model_type=meta.get("model_type", "custom"))

    @classmethod
    def from_official(cls, path: str | Path, **overrides: Any) -> "SamTool":
        """Load an official SAM or MedSAM `.pth` (see `SamConfig.checkpoint_type`)."""
        config = SamConfig(**overrides)
        path = Path(path)
        model, model_type = load_official(path, config.model_type)
        kind = config.checkpoint_type
        if kind == "auto":
            kind = "medsam" if "medsam" in path.name.lower() else "sam"
        return cls(model, PRESETS[kind], OFFICIAL_ARCHS[model_type], config, source=str(path), model_type=model_type)


def build(checkpoint: str | Path | None = None, **config: Any) -> SamTool:
    """Registry builder: the shipped tiny SAM, a saved folder (or its model.safetensors, or a Hub id
    `hf://owner/name[@revision]`), or an official `.pth` file (`SamTool.from_official`)."""
    if checkpoint is None:
        if not (SHIPPED_WEIGHTS / WEIGHTS_NAME).is_file():
            raise ToolUnavailable(f"tool 'sam': no shipped weights in {SHIPPED_WEIGHTS}; pass checkpoint=PATH")
        return SamTool.from_pretrained(SHIPPED_WEIGHTS, **config)
    if not is_hub_id(checkpoint):
        path = Path(checkpoint)
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES or (path.is_file() and suffix not in FOLDER_FILE_SUFFIXES):
            # the one explicit importer of pickled weights: torch.load(weights_only=True) + a key/shape check
            return SamTool.from_official(path, **config)
    return SamTool.from_pretrained(checkpoint, **config)


# -- prompt validation ---------------------------------------------------------------------------

def validate_prompts(
    shape: tuple[int, int],
    boxes: Any,
    points: Any,
    point_labels: Any,
    mask_logits: Any,
    low_res_size: int,
) -> dict[str, np.ndarray | None]:
    """Check and normalise prompts for `SamPredictorCached.predict`.

    Returns a dict with boxes (N, 4) float32 or None, points (N, P, 2) float32 or None, point_labels
    (N, P) int64 or None, mask_logits (N, 1, L, L) float32 or None. Raises ToolError on bad input.
    """
    h, w = shape
    n = None
    box_arr = None
    if boxes is not None:
        box_arr = np.asarray(boxes, dtype=np.float64)
        if box_arr.shape == (4,):
            box_arr = box_arr[None]
        if box_arr.ndim != 2 or box_arr.shape[1] != 4 or box_arr.shape[0] == 0:
            raise ToolError(f"boxes must be (4,) or (N, 4) [x0, y0, x1, y1], got shape {box_arr.shape}")
        if not np.isfinite(box_arr).all():
            raise ToolError("boxes contain NaN or Inf")
        inverted = (box_arr[:, 2] < box_arr[:, 0]) | (box_arr[:, 3] < box_arr[:, 1])
        outside = (box_arr[:, 0] > w - 1) | (box_arr[:, 2] < 0) | (box_arr[:, 1] > h - 1) | (box_arr[:, 3] < 0)
        if (inverted | outside).any():
            raise ToolError(
                f"box(es) {box_arr[inverted | outside].tolist()} have zero area in the {w}x{h} image: an inclusive "
                "box needs x0 <= x1 and y0 <= y1 and must overlap x in 0..W-1, y in 0..H-1"
            )
        clipped = box_arr.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w - 1)
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h - 1)
        if not np.array_equal(clipped, box_arr):
            warnings.warn(
                f"box(es) {box_arr.tolist()} reach outside the {w}x{h} image (x in 0..{w - 1}, y in 0..{h - 1}); "
                f"clipped to {clipped.tolist()}",
                UserWarning,
                stacklevel=3,
            )
        box_arr = clipped.astype(np.float32)
        n = box_arr.shape[0]
    pts = labels = None
    if points is not None:
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape == (2,):
            pts = pts[None]
        if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
            raise ToolError(f"points must be (2,) or (P, 2) [x, y], got shape {pts.shape}")
        if not np.isfinite(pts).all():
            raise ToolError("points contain NaN or Inf")
        outside = (pts[:, 0] < 0) | (pts[:, 0] > w - 1) | (pts[:, 1] < 0) | (pts[:, 1] > h - 1)
        if outside.any():
            raise ToolError(f"point(s) {pts[outside].tolist()} lie outside the {w}x{h} image")
        if point_labels is None:
            labels = np.ones(len(pts), dtype=np.int64)
        else:
            labels = np.asarray(point_labels).reshape(-1)
            if labels.shape[0] != pts.shape[0]:
                raise ToolError(f"point_labels has {labels.shape[0]} entries for {pts.shape[0]} points")
            if not np.isin(labels, (0, 1)).all():
                raise ToolError(f"point_labels must be 1 (positive) or 0 (negative), got {labels.tolist()}")
            labels = labels.astype(np.int64)
    elif point_labels is not None:
        raise ToolError("point_labels given without points")
    masks = None
    if mask_logits is not None:
        masks = np.asarray(mask_logits, dtype=np.float32)
        if masks.ndim == 2:
            masks = masks[None, None]
        elif masks.ndim == 3:
            masks = masks[:, None]
        if masks.ndim != 4 or masks.shape[1] != 1 or masks.shape[2:] != (low_res_size, low_res_size):
            raise ToolError(
                f"mask_logits must be (L, L), (N, L, L) or (N, 1, L, L) with L = {low_res_size} "
                f"(a previous Prediction.logits), got shape {np.asarray(mask_logits).shape}"
            )
        if n is None:
            n = masks.shape[0]
        elif masks.shape[0] not in (1, n):
            raise ToolError(f"mask_logits holds {masks.shape[0]} maps for {n} boxes (need 1 or {n})")
        if masks.shape[0] == 1 and n > 1:
            masks = np.repeat(masks, n, axis=0)
    if box_arr is None and pts is None and masks is None:
        raise ToolError("sam needs at least one prompt: boxes, points or mask_logits")
    n = n or 1
    if pts is not None:
        pts = np.repeat(pts[None].astype(np.float32), n, axis=0)
        labels = np.repeat(labels[None], n, axis=0)
        if masks is not None and masks.shape[0] != n:
            masks = np.repeat(masks, n, axis=0)
    return {"boxes": box_arr, "points": pts, "point_labels": labels, "mask_logits": masks}


# -- the per-episode session ---------------------------------------------------------------------

@dataclass
class _SessionState:
    box: np.ndarray | None
    points: list[tuple[float, float]]
    labels: list[int]
    logits: np.ndarray | None
    prediction: Prediction | None
    external: bool = False  # logits came from set_mask (always used once, whatever use_previous_logits)


class SamSession:
    """One interactive episode on one 2D case: the box, every click so far and the previous logits.

    Every prompt sends all of them to SAM (the same in training, trajectories and inference). A second
    box replaces the first; clicks stay. `set_mask` makes any tool's mask the mask input of the next
    prompt. `undo` restores the state before the last prompt or mask.

    `use_previous_logits=False` drops SAM's own previous logits from later prompts (box + clicks only,
    plus a `set_mask` mask once); the default True is the environment contract. See docs/sam.md for
    what each gives with the tiny SAM.
    """

    def __init__(self, tool: SamTool, case: Case, use_previous_logits: bool = True) -> None:
        require_2d(case, "sam")
        self.tool = tool
        self.case = case
        self.use_previous_logits = bool(use_previous_logits)
        self._state = _SessionState(None, [], [], None, None)
        self._history: list[_SessionState] = []

    # state accessors
    @property
    def box(self) -> np.ndarray | None:
        return self._state.box

    @property
    def points(self) -> list[tuple[float, float]]:
        return list(self._state.points)

    @property
    def labels(self) -> list[int]:
        return list(self._state.labels)

    @property
    def logits(self) -> np.ndarray | None:
        """(1, L, L) mask input of the next prompt, or None."""
        return self._state.logits

    @property
    def prediction(self) -> Prediction | None:
        return self._state.prediction

    @property
    def mask(self) -> np.ndarray:
        """The current mask (zeros before any prompt)."""
        if self._state.prediction is None:
            return np.zeros(self.case.shape, dtype=np.uint8)
        return self._state.prediction.mask

    def _push(self) -> None:
        s = self._state
        self._history.append(_SessionState(s.box, list(s.points), list(s.labels), s.logits, s.prediction, s.external))

    def _run(self) -> Prediction:
        s = self._state
        pred = self.tool.predict(
            self.case,
            boxes=s.box,
            points=np.array(s.points, dtype=np.float32) if s.points else None,
            point_labels=np.array(s.labels, dtype=np.int64) if s.points else None,
            mask_logits=s.logits if (self.use_previous_logits or s.external) else None,
        )
        s.logits = pred.logits[:1]
        s.external = False
        s.prediction = pred
        return pred

    def set_box(self, box: Sequence[float]) -> Prediction:
        """Set (or replace) the box [x0, y0, x1, y1] and predict. On a ToolError the state is unchanged."""
        self._push()
        try:
            validate_prompts(self.case.shape, box, None, None, None, self.tool.low_res_size)
            self._state.box = np.asarray(box, dtype=np.float32).reshape(4)
            return self._run()
        except Exception:
            self._state = self._history.pop()
            raise

    add_box = set_box

    def add_point(self, point: Sequence[float], positive: bool = True) -> Prediction:
        """Add a click at (x, y), positive or negative, and predict. On a ToolError the state is unchanged."""
        self._push()
        try:
            validate_prompts(self.case.shape, None, [point], [int(bool(positive))], None, self.tool.low_res_size)
            self._state.points.append((float(point[0]), float(point[1])))
            self._state.labels.append(int(bool(positive)))
            return self._run()
        except Exception:
            self._state = self._history.pop()
            raise

    def set_mask(self, mask: np.ndarray) -> None:
        """Make a binary (H, W) mask (from any tool) the mask input of the next prompt."""
        mask = np.asarray(mask)
        if mask.shape != self.case.shape:
            raise ToolError(f"set_mask: mask shape {mask.shape} differs from the image {self.case.shape}")
        self._push()
        self._state.logits = self.tool.mask_to_logits(mask)
        self._state.external = True
        self._state.prediction = Prediction(mask=(mask > 0).astype(np.uint8), extras={"source": "set_mask"})

    def undo(self) -> Prediction | None:
        """Go back one step; returns the prediction now current (None at the start)."""
        if self._history:
            self._state = self._history.pop()
        return self._state.prediction

    def reset(self) -> None:
        self._state = _SessionState(None, [], [], None, None)
        self._history.clear()
