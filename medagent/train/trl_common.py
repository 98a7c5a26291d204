"""What SFT and GRPO runs share: the run-config fields of `PolicyRunCommon`, TrainingArguments fields (device flags safe on a CPU, run bookkeeping, extra
TRL fields), strict JSON of a config, the callback that writes metrics.jsonl, and saving the final policy from
one process or many (`accelerate launch`: DDP, FSDP, DeepSpeed)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError


@dataclass
class PolicyRunCommon:
    """The fields `SFTRunConfig` and `GRPORunConfig` share: LoRA, device and precision, logging, saving, resume.

    Attributes:
        lora: train LoRA adapters (peft) instead of all weights; `model/` holds the merged model, `adapter/`
            the adapters alone.
        lora_r / lora_alpha / lora_dropout / lora_target_modules: LoRA rank, scale, dropout and target modules
            (None: `medagent.train.lora.LANGUAGE_TARGETS`; "all" adds the vision tower).
        device: "auto" (CUDA when available), "cpu" or "cuda". On the CPU: use_cpu=True, bf16=False,
            gradient_checkpointing=False.
        bf16: bf16 mixed precision; None: on CUDA when the GPU supports it (True on a CPU is an error).
        gradient_checkpointing: on GPUs only (ignored on the CPU).
        logging_steps: log every this many steps (to metrics.jsonl).
        save_steps: write a trainer checkpoint every this many steps (None: only the final model).
        resume: continue from the last checkpoint in `output_dir/checkpoints`, step-exactly.
        save_model: save the final model + processor into `output_dir/model`.
        report_to: "none", "tensorboard" or "wandb".
        num_threads: torch CPU threads (None leaves torch's setting).
        seed: seed of data order, sampling and initialisation.
        progress: show a rich progress bar (loss; GRPO: reward and Dice) while training.
        trl_kwargs: other fields of TRL's `SFTConfig` / `GRPOConfig`, passed as they are (e.g. max_grad_norm,
            optim, save_total_limit, steps_per_generation); a field the run config sets itself is refused.
    """

    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: tuple[str, ...] | None = None
    device: str = "auto"
    bf16: bool | None = None
    gradient_checkpointing: bool = False
    logging_steps: int = 1
    save_steps: int | None = None
    resume: bool = False
    save_model: bool = True
    report_to: str = "none"
    num_threads: int | None = None
    seed: int = 0
    progress: bool = False
    trl_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.lora_target_modules is not None and not isinstance(self.lora_target_modules, str):
            self.lora_target_modules = tuple(self.lora_target_modules)
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{name}.device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.report_to not in ("none", "tensorboard", "wandb"):
            raise ConfigError(f"{name}.report_to must be none, tensorboard or wandb, got {self.report_to!r}")


def common_trl_fields(config: Any, gradient_checkpointing: bool = False, *, cuda: bool | None = None,
                      bf16_supported: bool | None = None) -> dict[str, Any]:
    """Fields of `trl.SFTConfig` / `trl.GRPOConfig` from a run config with `device`, `bf16`, `logging_steps`,
    `save_steps`, `report_to` and `seed`.

    The CPU flags TRL needs: its defaults (bf16=True, gradient_checkpointing=True) break or crawl on a CPU.
    transformers >= 5.24 renamed gradient_checkpointing to activation_checkpointing and warns on the old name,
    which TRL always sets (default True); setting the new name wins and silences that. Older transformers (the
    `[vllm]` environment's 5.18-5.20) only know gradient_checkpointing, which is then the key set.

    Args:
        cuda / bf16_supported: None detects them (from `device` and the machine); a recipe's dry run passes True
            to get the fields a bf16 GPU would run with (`medagent.train.recipes.dry_run`).

    Raises:
        ConfigError: device "cuda" without CUDA, or bf16=True without CUDA.
    """
    import torch

    name = type(config).__name__
    if cuda is None:
        cuda = torch.cuda.is_available() if config.device == "auto" else config.device == "cuda"
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"{name}.device='cuda' but CUDA is not available")
    if bf16_supported is None:
        bf16_supported = bool(cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    bf16 = getattr(config, "bf16", None)
    if bf16 is None:
        bf16 = bool(cuda and bf16_supported)
    elif bf16 and not cuda:
        raise ConfigError(f"{name}.bf16=True needs a CUDA device (device={config.device!r})")
    return {
        "use_cpu": not cuda,
        "bf16": bool(bf16),
        checkpointing_field(): bool(cuda and gradient_checkpointing),
        "logging_steps": config.logging_steps,
        "save_strategy": "steps" if config.save_steps else "no",
        "save_steps": config.save_steps or 500,
        "report_to": config.report_to,
        "seed": config.seed,
        "data_seed": config.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


def checkpointing_field() -> str:
    """The TrainingArguments field that turns activation (gradient) checkpointing on in the installed transformers."""
    import dataclasses

    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    return "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"


def with_trl_kwargs(config: Any, fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` plus the config's `trl_kwargs` (other TRL fields passed as they are).

    Raises:
        ConfigError: a key of `trl_kwargs` is one the run config sets itself (set that field instead).
    """
    extra = dict(getattr(config, "trl_kwargs", None) or {})
    clash = sorted(set(extra) & set(fields))
    if clash:
        raise ConfigError(f"{type(config).__name__}.trl_kwargs sets {clash}, which the run config sets itself: "
                          "set the run config's own field (see its Attributes) instead")
    return {**fields, **extra}


def build_trl_config(cls: type, fields: dict[str, Any]) -> Any:
    """`cls(**fields)` (TRL's SFTConfig / GRPOConfig) with TRL's refusals as ConfigError."""
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def save_policy(trainer: Any, processor: Any, out: Path, lora: bool, base: Any, save_adapter: bool = True) -> None:
    """Write the trained policy into `out/model` (LoRA merged) and, with LoRA and `save_adapter`, the adapters
    into `out/adapter`. Every process calls this; only the main process writes.

    Under FSDP or DeepSpeed (sharded parameters) `trainer.save_model` gathers the full weights first (the
    accelerate config's full state dict / `zero3_save_16bit_model`); with LoRA the adapters are then merged
    into a fresh copy of the base model, `base()` -> (model, processor).
    """
    from medagent.agents.vlm import save_vlm
    from medagent.train.lora import merge_lora

    if getattr(trainer, "is_fsdp_enabled", False) or getattr(trainer, "is_deepspeed_enabled", False):
        target = out / ("adapter" if lora else "model")
        trainer.save_model(str(target))  # collective: every rank takes part in gathering the weights
        if trainer.is_world_process_zero():
            if lora:
                from peft import PeftModel

                model, _ = base()
                save_vlm(PeftModel.from_pretrained(model, str(target)).merge_and_unload(), processor, out / "model")
            else:
                processor.save_pretrained(target)
        return
    if not trainer.is_world_process_zero():
        return
    if lora and save_adapter:
        trainer.model.save_pretrained(out / "adapter")
    save_vlm(merge_lora(trainer.model) if lora else trainer.model, processor, out / "model")


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
