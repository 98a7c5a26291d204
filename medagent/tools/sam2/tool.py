"""The promptable `sam2` tool (SAM 2 / SAM 2.1 / MedSAM2 on Meta's `sam2` package) and its `Sam2Session`.

    from medagent.tools import load_tool
    sam2 = load_tool("sam2", checkpoint="sam2.1_hiera_tiny.pt")   # official SAM 2.1 (architecture from the weights)
    sam2 = load_tool("sam2", checkpoint="MedSAM2_latest.pt")      # MedSAM2: "medsam2" in the file name -> 512 px preset
    sam2 = load_tool("sam2", checkpoint="weights.pt", checkpoint_type="medsam2")  # ... or said explicitly
    pred = sam2.predict(case, boxes=[x0, y0, x1, y1], points=[[x, y]], point_labels=[1])
    pred2 = sam2.predict(case, boxes=box, points=[[x, y], [x2, y2]], point_labels=[1, 0], mask_logits=pred.logits)

The same prompt contract as the `sam` tool (`medagent.tools.sam.tool`: pixels of the image as the `Case` holds
it, inclusive boxes, several boxes in one decoder call, the same validation and errors), the same `Prediction`
(mask, probabilities (2, H, W), logits (N, L, L) with L = S / 4: 256 at 1024 px, 128 for MedSAM2's 512 px;
score = mean predicted IoU; extras masks / scores / boxes / cache_hit / timings_ms / checkpoint /
preprocessing), and the same session (`Sam2Session` is `SamSession`: box, every click so far and the previous
low-res logits at every prompt). No weights are shipped: a checkpoint is required.

Checkpoints: an official SAM 2 / 2.1 or MedSAM2 `.pt` (a dict with a "model" state dict) read with
`torch.load(weights_only=True)`, or a folder written by `save_pretrained` (config.json with the architecture
and preprocessing, model.safetensors; local or a Hub id `hf://owner/name[@revision]`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from medagent.data.case import Case
from medagent.errors import CheckpointError, ConfigError, ToolError, ToolUnavailable
from medagent.tools.base import Prediction, ToolKind, require_2d
from medagent.tools.checkpoint import (FOLDER_FILE_SUFFIXES, PICKLE_SUFFIXES, is_hub_id, load_state_strict,
                                       read_config, read_weights, resolve_checkpoint, write_checkpoint)
from medagent.tools.sam.preprocess import Preprocessing
from medagent.tools.sam.tool import PredictorConfig, PredictorTool, SamSession
from medagent.tools.sam2.model import (INSTALL_HINT, SAM2_CONFIGS, SAM2_PRESETS, build_sam2_model, load_sam2_official,
                                       preset, require_sam2)
from medagent.tools.sam2.predictor import Sam2PredictorCached

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "medagent-sam2"
NO_CHECKPOINT = (
    "tool 'sam2' ships no weights: pass a SAM 2.1 or MedSAM2 checkpoint, e.g. checkpoint='sam2.1_hiera_tiny.pt' "
    "(Meta's SAM 2.1 release) or checkpoint='MedSAM2_latest.pt' (bowang-lab/MedSAM2), or a folder saved by "
    f"Sam2Tool.save_pretrained (CLI: --checkpoint FILE); it also needs {INSTALL_HINT}"
)


@dataclass
class Sam2Config(PredictorConfig):
    """Runtime options of the `sam2` tool (the architecture and preprocessing come with the checkpoint):
    `PredictorConfig`'s (cache_max_mb defaults to 1024: an embedding is 16 MiB at 1024 px), and

    Attributes:
        checkpoint_type: "auto" (folder -> its config; .pt -> MedSAM2 when the file name contains "medsam2",
            SAM 2 otherwise), "sam2" (1024 px) or "medsam2" (512 px), for .pt files.
        config: the architecture of a .pt file, one of `SAM2_CONFIGS` ("sam2.1_hiera_t", ...); None detects it
            from the weights.
        image_size: input side S for a .pt fine-tuned at another size (a multiple of 32); None: the preset's.
    """

    cache_max_mb: float = 1024.0
    checkpoint_type: str = "auto"
    config: str | None = None
    image_size: int | None = None

    def __post_init__(self) -> None:
        if self.checkpoint_type not in ("auto", *SAM2_PRESETS):
            raise ConfigError(f"checkpoint_type must be 'auto', 'sam2' or 'medsam2', got {self.checkpoint_type!r}")
        if self.config is not None and self.config not in SAM2_CONFIGS:
            raise ConfigError(f"config must be one of {sorted(SAM2_CONFIGS)} or None, got {self.config!r}")


class Sam2Tool(PredictorTool):
    """Promptable SAM 2 / 2.1 / MedSAM2 with an embedding cache. See the module docstring."""

    name: ClassVar[str] = "sam2"
    kind: ClassVar[ToolKind] = ToolKind.PROMPTABLE
    inputs: ClassVar[frozenset[str]] = frozenset({"boxes", "points", "point_labels", "mask_logits", "multimask"})

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, config_name: str,
                 config: Sam2Config | None = None, source: str = "") -> None:
        self.config = config or Sam2Config()
        self.config_name = config_name
        self.source = source
        self.predictor = Sam2PredictorCached(model, preprocessing, self.config.embedding_cache(), self.config.intensity(),
                                             self.config.device)


    def session(self, case: Case, use_previous_logits: bool = True) -> "Sam2Session":
        return Sam2Session(self, case, use_previous_logits)

    def checkpoint_extras(self) -> dict[str, Any]:
        return {**super().checkpoint_extras(), "config": self.config_name}

    def predict_2d(self, case: Case, boxes: Any = None, points: Any = None, point_labels: Any = None,
                   mask_logits: Any = None, multimask: bool = False) -> Prediction:
        """`PredictorTool.predict_2d`; SAM 2 needs at least one prompt."""
        if boxes is None and points is None and mask_logits is None:
            raise ToolError("sam2 needs at least one prompt: boxes, points or mask_logits")
        return super().predict_2d(case, boxes, points, point_labels, mask_logits, multimask)

    # -- checkpoints ----------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, dtype: str = "float32") -> Path:
        """Write config.json (architecture, preprocessing) and model.safetensors (weights in `dtype`)."""
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"dtype must be 'float32' or 'float16', got {dtype!r}")
        meta = {"format": FORMAT, "version": 1, "config": self.config_name,
                "preprocessing": self.preprocessing.to_dict(), "dtype": dtype}
        return write_checkpoint(directory, meta, self.model.state_dict(), config_name=CONFIG_NAME,
                                weights_name=WEIGHTS_NAME, dtype=getattr(torch, dtype), metadata={"format": FORMAT})

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: Any) -> "Sam2Tool":
        """Load a folder written by `save_pretrained` (or its model.safetensors, or a Hub id
        `hf://owner/name[@revision]`); `overrides` are `Sam2Config` runtime fields."""
        folder = resolve_checkpoint(directory, needs=(CONFIG_NAME, WEIGHTS_NAME), kind="medagent SAM 2")
        cfg_path, w_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        meta = read_config(cfg_path, kind="medagent SAM 2", expect={"format": FORMAT})
        try:
            name = meta["config"]
            pre = Preprocessing.from_dict(meta["preprocessing"])
            if name not in SAM2_CONFIGS:
                raise ConfigError(f"unknown SAM 2 config {name!r}")
        except (KeyError, ConfigError, TypeError) as exc:
            raise CheckpointError(f"{cfg_path}: bad architecture or preprocessing entry: {exc}") from exc
        model = build_sam2_model(name, pre.image_size)
        load_state_strict(model, read_weights(w_path), w_path, what=f"the SAM 2 architecture {name!r}")
        config = Sam2Config(**overrides)
        source = str(directory) if is_hub_id(directory) else str(folder)
        return cls(model, pre, name, config, source=source)

    @classmethod
    def from_official(cls, path: str | Path, **overrides: Any) -> "Sam2Tool":
        """Load an official SAM 2 / 2.1 or MedSAM2 `.pt` (see `Sam2Config.checkpoint_type` / `config` / `image_size`)."""
        config = Sam2Config(**overrides)
        path = Path(path)
        kind = config.checkpoint_type
        if kind == "auto":
            kind = "medsam2" if "medsam2" in path.name.lower() else "sam2"
        pre = preset(kind, config.image_size)
        model, name = load_sam2_official(path, config.config, pre.image_size)
        return cls(model, pre, name, config, source=str(path))


class Sam2Session(SamSession):
    """One interactive episode on one 2D case: the `SamSession` contract (box, every click so far and the
    previous logits at every prompt; `set_mask`, `undo`, `reset`) on the `sam2` tool."""

    def __init__(self, tool: Sam2Tool, case: Case, use_previous_logits: bool = True) -> None:
        require_2d(case, "sam2")
        super().__init__(tool, case, use_previous_logits)  # type: ignore[arg-type]


def build(checkpoint: str | Path | None = None, **config: Any) -> Sam2Tool:
    """Registry builder: an official SAM 2 / 2.1 / MedSAM2 `.pt` (`Sam2Tool.from_official`) or a saved folder
    (or its model.safetensors, or a Hub id). There are no shipped weights: no checkpoint is ToolUnavailable."""
    if checkpoint is None:
        raise ToolUnavailable(NO_CHECKPOINT)
    require_sam2()
    if not is_hub_id(checkpoint):
        path = Path(checkpoint)
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES or (path.is_file() and suffix not in FOLDER_FILE_SUFFIXES):
            # the one explicit importer of pickled weights: torch.load(weights_only=True) + a strict key/shape check
            return Sam2Tool.from_official(path, **config)
    return Sam2Tool.from_pretrained(checkpoint, **config)
