"""Promptable SAM 2 / SAM 2.1 / MedSAM2 on Meta's `sam2` package (the optional extra `medagent[sam2]`).

Modules: `model` (the package's architectures built from its hydra configs, per-family preprocessing, safe
loading of official `.pt` files), `predictor` (embed once / prompt many with the `sam` tool's LRU embedding
cache), `tool` (the `sam2` Tool, `Sam2Session`, `build`). No weights are shipped: pass a checkpoint.
Importing this package imports torch but not `sam2`; the `sam2` package is imported when a model is built.
"""

from medagent.tools.sam2.model import SAM2_CONFIGS, SAM2_PRESETS, build_sam2_model, detect_config, load_sam2_official
from medagent.tools.sam2.predictor import Sam2Embedding, Sam2PredictorCached
from medagent.tools.sam2.tool import Sam2Config, Sam2Session, Sam2Tool, build

__all__ = [
    "SAM2_CONFIGS", "SAM2_PRESETS", "build_sam2_model", "detect_config", "load_sam2_official", "Sam2Embedding",
    "Sam2PredictorCached", "Sam2Config", "Sam2Session", "Sam2Tool", "build",
]
