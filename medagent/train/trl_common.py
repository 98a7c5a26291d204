"""What SFT and GRPO runs share: TrainingArguments fields (device flags safe on a CPU, run bookkeeping),
strict JSON of a config, and the callback that writes metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError


def common_trl_fields(config: Any, gradient_checkpointing: bool = False) -> dict[str, Any]:
    """Fields of `trl.SFTConfig` / `trl.GRPOConfig` from a run config with `device`, `logging_steps`,
    `save_steps`, `report_to` and `seed`.

    The CPU flags TRL needs: its defaults (bf16=True, gradient_checkpointing=True) break or crawl on a CPU.
    transformers >= 5.24 renamed gradient_checkpointing to activation_checkpointing and warns on the old name,
    which TRL always sets (default True); setting the new name wins and silences that.

    Raises:
        ConfigError: device "cuda" without CUDA.
    """
    import torch

    name = type(config).__name__
    cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{name}.device='cuda' but CUDA is not available")
    return {
        "use_cpu": not cuda,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "activation_checkpointing": bool(cuda and gradient_checkpointing),
        "logging_steps": config.logging_steps,
        "save_strategy": "steps" if config.save_steps else "no",
        "save_steps": config.save_steps or 500,
        "report_to": config.report_to,
        "seed": config.seed,
        "data_seed": config.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def jsonable(value: Any) -> Any:
    """`value` as plain JSON types (anything else becomes its repr)."""
    return json.loads(json.dumps(value, default=lambda v: v if isinstance(v, (int, float, str)) else repr(v)))


def metrics_callback(path: Path) -> Any:
    """A transformers `TrainerCallback` appending every trainer log (one JSON line) to `path` as it happens."""
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers' signature
            if logs and state.is_world_process_zero:
                with path.open("a") as f:
                    f.write(json.dumps(jsonable({"step": state.global_step, **logs})) + "\n")

    return _Log()
