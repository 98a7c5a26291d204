"""The frozen source model of the CTTA tools: a segmenter checkpoint with batch norm, and its input scaling.

`load_source(dataset=...)` loads the shipped `ctta-source-<dataset>` (`source_weights_name`); `load_source(checkpoint=DIR)`
any `unet` / `ifunet` / `allukan` segmenter checkpoint (the BN-free ones only work with `noadapt`).
Images enter the network as float32 (1, C, H, W) in [0, 1] (the segmenter's intensity scaling).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medagent.data.case import Case
from medagent.errors import CheckpointError, ToolError, ToolUnavailable
from medagent.tools.checkpoint import read_config, resolve_checkpoint
from medagent.tools.tta.batchnorm import convert_bn

#: Shipped CTTA source models are the weights folders `ctta-source-<dataset>`.
SOURCE_PREFIX = "ctta-source-"


def source_weights_name(dataset: str) -> str:
    """Folder name under medagent/weights/ of the CTTA source model of `dataset`."""
    return f"{SOURCE_PREFIX}{dataset}"


class SourceModel:
    """A frozen source segmenter: network, config (classes, modality) and input scaling.

    Args:
        tool: a `medagent.tools.segmenters.SegmenterTool` (its network is never changed here; the
            adaptive tools work on copies).
    """

    def __init__(self, tool: Any) -> None:
        self.tool = tool
        self.config = tool.config
        self.net: nn.Module = tool.net
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.device = tool.device

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    @property
    def class_names(self) -> dict[int, str]:
        return dict(self.config.class_names)

    def scale(self, case: Case) -> torch.Tensor:
        """The model input of a finite 2D case: (1, C, H, W) float32 in [0, 1]."""
        from medagent.tools.segmenters import model_input

        x = model_input(case.image, case.modality, self.config, case.id)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)

    def bn_layers(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def require_bn(self, method: str) -> None:
        """ToolError when the source network has no BatchNorm2d layers (the method needs them)."""
        layers = self.bn_layers()
        if not layers:
            raise ToolError(
                f"tool {method!r} adapts batch-norm statistics, but the source model {self.config.model!r} "
                f"({type(self.net).__name__}) has no BatchNorm layers; use a 'unet' source (BN) or the 'noadapt' tool"
            )
        other = [type(m).__name__ for m in layers if not isinstance(m, nn.BatchNorm2d)]
        if other:
            raise ToolError(f"tool {method!r} supports BatchNorm2d only; the source model has {sorted(set(other))}")

    def adapted_copy(self) -> nn.Module:
        """A deep copy of the network with every BatchNorm2d replaced by a `TTABatchNorm` (params frozen)."""
        net = convert_bn(copy.deepcopy(self.net))
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net


def load_source(dataset: str | None = None, checkpoint: str | Path | None = None, device: str = "cpu") -> SourceModel:
    """The source model: a checkpoint folder (or a Hub id `hf://owner/name[@revision]`), or the shipped
    `ctta-source-<dataset>` (default mni-tissue).

    A checkpoint folder holds a segmenter checkpoint (`model.safetensors` + `config.json`, any of the
    `unet` / `ifunet` / `allukan` models: the BN-free ones only work with `noadapt`).
    """
    from medagent.tools.segmenters import CONFIG_FILE, TOOL_CLASSES, WEIGHTS_FILE

    if checkpoint is None:
        from medagent.weights import WEIGHTS_DIR, read_manifest

        name = source_weights_name(dataset or "mni-tissue")
        folder = WEIGHTS_DIR / name
        if name not in read_manifest() or not folder.is_dir():
            shipped = sorted(n for n in read_manifest() if n.startswith("ctta-source-"))
            raise ToolUnavailable(
                f"no shipped CTTA source model for dataset {dataset!r} (shipped: {shipped or 'none'}); train one with "
                "medagent.train.ctta_source.train_ctta_source or pass checkpoint=DIR"
            )
        checkpoint = folder
    folder = resolve_checkpoint(checkpoint, needs=(CONFIG_FILE, WEIGHTS_FILE), kind="CTTA source segmenter")
    cfg_path = folder / CONFIG_FILE
    model = read_config(cfg_path, kind="CTTA source segmenter").get("model", "unet")
    if model not in TOOL_CLASSES:
        raise CheckpointError(f"{cfg_path}: config field 'model' is {model!r}; a source model is one of {sorted(TOOL_CLASSES)}")
    return SourceModel(TOOL_CLASSES[model].from_pretrained(folder, device=device))
