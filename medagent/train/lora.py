"""LoRA for the VLM policy (peft): which modules, and merging back into a plain model.

Qwen3-VL module names (the same in the tiny policy and in Qwen3-VL-2B/4B/8B):
- language model: `model.language_model.layers.N.self_attn.{q,k,v,o}_proj`, `...mlp.{gate,up,down}_proj`;
- vision tower: `model.visual.blocks.N.attn.{qkv,proj}`, `...mlp.linear_fc{1,2}`; the merger
  (`model.visual.merger.*`) projects vision features into the language model.
`LANGUAGE_TARGETS` (the default) adapts the language model only, the usual choice when the vision tower is
pretrained; `ALL_TARGETS` adds the vision tower and merger (for a vision tower trained from scratch).
"""

from __future__ import annotations

from typing import Any, Sequence

LANGUAGE_TARGETS = r".*language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
VISION_TARGETS = r".*visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.linear_fc(1|2))|merger\.linear_fc(1|2))"
ALL_TARGETS = f"({LANGUAGE_TARGETS})|({VISION_TARGETS})"


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.0, target_modules: Sequence[str] | str | None = None) -> Any:
    """A `peft.LoraConfig` for causal LM training; `target_modules` None = `LANGUAGE_TARGETS`, "all" = `ALL_TARGETS`,
    else module names or one regular expression."""
    from peft import LoraConfig

    if target_modules is None:
        targets: Any = LANGUAGE_TARGETS
    elif target_modules == "all" or list(target_modules) == ["all"]:
        targets = ALL_TARGETS
    elif isinstance(target_modules, str):
        targets = target_modules
    else:
        targets = list(target_modules)
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, task_type="CAUSAL_LM")


def merge_lora(model: Any) -> Any:
    """The plain model with LoRA weights merged in (a peft model) or `model` itself (no adapters)."""
    merge = getattr(model, "merge_and_unload", None)
    return merge() if callable(merge) else model
