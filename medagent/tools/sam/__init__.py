"""Promptable SAM: official checkpoints (SAM ViT-B/L/H, MedSAM), the tiny embedded model, prompts.

Modules: `model` (architectures and official-checkpoint loading), `preprocess` (per-checkpoint
preprocessing), `predictor` (embed once / prompt many with an LRU embedding cache), `tool` (the `sam`
Tool, `SamSession`, `build`), `prompts` (simulated boxes and corrective clicks).
Importing this package imports torch; the registry imports `medagent.tools.sam.tool` lazily.
"""

from medagent.tools.sam.model import OFFICIAL_ARCHS, TINY_ARCH, SamArchConfig, build_sam
from medagent.tools.sam.predictor import EmbeddingCache, SamPredictorCached
from medagent.tools.sam.preprocess import PRESETS, Preprocessing
from medagent.tools.sam.prompts import Click, corrective_click, jitter_box, mask_box, simulate_clicks
from medagent.tools.sam.tool import SamConfig, SamSession, SamTool, build

__all__ = [
    "OFFICIAL_ARCHS", "TINY_ARCH", "SamArchConfig", "build_sam", "EmbeddingCache", "SamPredictorCached",
    "PRESETS", "Preprocessing", "Click", "corrective_click", "jitter_box", "mask_box", "simulate_clicks",
    "SamConfig", "SamSession", "SamTool", "build",
]
