"""Supervised fine-tuning of a VLM policy on exported trajectories, with TRL's SFTTrainer.

    from medagent.train.sft import SFTRunConfig, run_sft
    run = run_sft(SFTRunConfig(data="runs/sft-data", max_steps=3))   # tiny Qwen3-VL built offline
    agent = VLMPolicyAgent(run / "model")

Input: a `medagent.trajectories.export_trl` folder (a `datasets.DatasetDict` on disk, "train"/"val", each row
"messages" + "images"). Loss on assistant turns only (TRL's `assistant_only_loss`, which swaps in the training
variant of the qwen3_vl template with `{% generation %}` markers; needs transformers >= 5.18).

The collator is medagent's own (`ConversationCollator`): TRL's VLM collator renders without `tools=` and fills
image placeholders only in system/user/assistant turns, while the conversation contract puts the schema
through the template's tools block and an image in each tool turn. It renders exactly what the policy sees at
inference and in GRPO (a test holds the token ids equal).

Several processes: `accelerate launch [--config_file configs/accelerate/...] -m medagent.train.sft --recipe FILE`
(`python -m medagent.train.sft --help`; `medagent.train.recipes`); each process trains on its own shard of the
rows and only the main process writes the run folder.

Run folder (`output_dir`, default `medagent-runs/sft-<time>/`):
    config.json     this config;  versions.json  package versions, git SHA, seed
    metrics.jsonl   one line per trainer log (loss, grad_norm, learning_rate, step, epoch)
    model/          the fine-tuned model + processor (load with `medagent.agents.vlm.load_vlm`)
    checkpoints/    trainer checkpoints when `save_steps` is set (`resume=True` continues from the last)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.agents.vlm import TinyVLMConfig, build_tiny_vlm, load_vlm
from medagent.errors import ConfigError, DataError
from medagent.provenance import collect_versions
from medagent.train.trl_common import PolicyRunCommon, jsonable, metrics_callback
from medagent.trajectories.prompts import GroundingConfig


@dataclass
class SFTRunConfig(PolicyRunCommon):
    """One SFT run. Defaults run on a CPU in seconds with the tiny VLM. LoRA, device, logging, saving and
    resume fields: `PolicyRunCommon`.

    Attributes:
        data: export folder (`medagent trajectories export --format trl`) or a single saved `datasets.Dataset`;
            several folders (a list, or comma-separated text) are concatenated split by split.
        stage: "trajectories" (multi-turn episodes from `data`) or "grounding" (single-turn rows image +
            instruction -> add_bbox with the target's box, `medagent.trajectories.prompts`); with "grounding"
            and no `data`, the rows are drawn per `grounding` into `<run>/grounding-data` (reused on resume).
        grounding: which grounding rows to draw (stage "grounding" without `data`).
        model: a saved VLM folder (`save_tiny_vlm`, an earlier run's `model/`, or a Hugging Face model saved
            locally); None builds the tiny Qwen3-VL from `tiny`.
        tiny: shape of the tiny VLM when `model` is None.
        output_dir: run folder; None makes `medagent-runs/sft-<YYYYmmdd-HHMMSS>`.
        train_split / eval_split: splits of a DatasetDict; eval runs at the end when `eval_split` has rows.
        max_steps: optimiser steps (> 0), or -1 for `num_train_epochs` epochs.
        num_train_epochs: epochs when max_steps is -1.
        per_device_train_batch_size / gradient_accumulation_steps: batch = their product (x devices).
        learning_rate: peak learning rate (1e-3 suits the random tiny model; use about 1e-5 for real VLMs).
        lr_scheduler_type / warmup_steps / weight_decay: optimiser schedule (transformers names; warmup_steps
            below 1 is a fraction of the steps).
        assistant_only_loss: loss on assistant turns only (tool calls and the final answer).
        max_length: truncate longer sequences (tokens); None keeps them whole, which is safest with images
            (truncation inside an image's tokens breaks the batch).
    """

    data: str | list[str] = ""
    stage: str = "trajectories"
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    model: str | None = None
    tiny: TinyVLMConfig = field(default_factory=TinyVLMConfig)
    output_dir: str | None = None
    train_split: str = "train"
    eval_split: str | None = "val"
    max_steps: int = -1
    num_train_epochs: float = 1.0
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1e-3
    lr_scheduler_type: str = "constant"
    warmup_steps: int | float = 0
    weight_decay: float = 0.0
    assistant_only_loss: bool = True
    max_length: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.tiny, dict):
            self.tiny = TinyVLMConfig(**self.tiny)
        if isinstance(self.grounding, dict):
            self.grounding = GroundingConfig(**self.grounding)
        if isinstance(self.data, str):
            self.data = [d.strip() for d in self.data.split(",") if d.strip()]
        self.data = [str(d) for d in self.data]
        if self.stage not in ("trajectories", "grounding"):
            raise ConfigError(f"SFTRunConfig.stage must be 'trajectories' or 'grounding', got {self.stage!r}")
        if not self.data and self.stage != "grounding":
            raise ConfigError("SFTRunConfig.data must name an export folder (medagent trajectories export --format trl)")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ConfigError(f"SFTRunConfig.max_steps must be > 0 or -1, got {self.max_steps}")
        if self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("SFTRunConfig batch size and gradient_accumulation_steps must be >= 1")
        if self.max_length is not None and self.max_length < 16:
            raise ConfigError(f"SFTRunConfig.max_length must be None or >= 16, got {self.max_length}")


def inline_images(example: dict[str, Any]) -> dict[str, Any]:
    """Put the example's images into their placeholders in every turn (tool turns included); `images` -> [].

    Placeholders are content blocks with type "image" and no image; they take `images` in order. Keys the
    datasets layout fills with None (`tool_calls`, `name`, a text block's missing text) are dropped, so the
    messages render exactly as the renderer built them.

    Raises:
        DataError: the number of placeholders and images differ.
    """
    images = list(example.get("images") or [])
    k = 0
    messages = []
    for message in example["messages"]:
        message = {key: value for key, value in message.items() if value is not None}
        content = message.get("content")
        if isinstance(content, list):
            blocks = []
            for block in content:
                if block.get("type") == "image":
                    image = block.get("image")
                    if image is None:
                        if k >= len(images):
                            raise DataError(f"an SFT example has more image placeholders than its {len(images)} images")
                        image = images[k]
                        k += 1
                    block = {"type": "image", "image": image}
                elif block.get("type") == "text":
                    block = {"type": "text", "text": block.get("text") or ""}
                blocks.append(block)
            message = {**message, "content": blocks}
        messages.append(message)
    if k != len(images):
        raise DataError(f"an SFT example has {len(images)} images but {k} image placeholders")
    return {**example, "messages": messages, "images": []}


class ConversationCollator:
    """Tokenises SFT examples exactly as the policy sees them: the chat template with the tool schema through
    `tools=` (TRL's VLM collator cannot pass it), images inline in every turn, loss on assistant tokens only.

    Args:
        processor: the VLM processor.
        tools: JSON tool schema (`medagent.envs.tool_schema()`).
        chat_template: the template to render with; for assistant-only loss, the training variant of the
            model's template (TRL's `get_training_chat_template`, same text plus `{% generation %}` markers).
        assistant_only_loss: labels only on assistant turns (tool calls, the final answer, end-of-turn tokens).
        max_length: truncate longer sequences (tokens); None keeps them whole.
    """

    def __init__(self, processor: Any, tools: list[dict[str, Any]], chat_template: str | None = None,
                 assistant_only_loss: bool = True, max_length: int | None = None) -> None:
        self.processor = processor
        self.tools = tools
        self.chat_template = chat_template
        self.assistant_only_loss = assistant_only_loss
        self.max_length = max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        conversations = [inline_images(e)["messages"] for e in examples]
        output = self.processor.apply_chat_template(
            conversations, tools=self.tools, chat_template=self.chat_template, tokenize=True, return_dict=True,
            return_tensors="pt", return_assistant_tokens_mask=self.assistant_only_loss,
            processor_kwargs={"padding": True, "padding_side": "right", "truncation": self.max_length is not None,
                              "max_length": self.max_length, "add_special_tokens": False},
        )
        labels = output["input_ids"].clone()
        labels[output["attention_mask"] == 0] = -100
        if self.assistant_only_loss:
            labels[output.pop("assistant_masks") == 0] = -100
        output["labels"] = labels
        return output


def _load_one(path: str, split: str, eval_split: str | None) -> tuple[Any, Any]:
    import datasets

    if not Path(path).exists():
        raise DataError(f"SFT data {path} does not exist (write it with `medagent trajectories export --format trl`)")
    try:
        data = datasets.load_from_disk(path)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"SFT data {path} is not a saved datasets folder: {exc}") from exc
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"SFT data {path} has no split {split!r} (it has {sorted(data)})")
        train = data[split]
        evaluation = data[eval_split] if eval_split and eval_split in data and len(data[eval_split]) else None
    else:
        train, evaluation = data, None
    missing = {"messages", "images"} - set(train.column_names)
    if missing:
        raise DataError(f"SFT data {path} lacks column(s) {sorted(missing)}; expected TRL's VLM messages + images")
    if len(train) == 0:
        raise DataError(f"SFT data {path} split {split!r} is empty")
    return train.select_columns(["messages", "images"]), None if evaluation is None else evaluation.select_columns(["messages", "images"])


def _load_data(paths: list[str], split: str, eval_split: str | None) -> tuple[Any, Any]:
    """Train (and eval) rows of every folder in `paths`, concatenated (columns messages + images)."""
    import datasets

    loaded = [_load_one(p, split, eval_split) for p in paths]
    train = datasets.concatenate_datasets([t for t, _ in loaded]) if len(loaded) > 1 else loaded[0][0]
    evals = [e for _, e in loaded if e is not None]
    evaluation = (datasets.concatenate_datasets(evals) if len(evals) > 1 else evals[0]) if evals else None
    return train, evaluation


def make_collator(processor: Any, config: SFTRunConfig) -> ConversationCollator:
    """The `ConversationCollator` of a run: every tool's schema, the training variant of the model's template."""
    from trl.chat_template_utils import get_training_chat_template

    from medagent.envs.tool_specs import tool_schema

    template = get_training_chat_template(processor) if config.assistant_only_loss else None
    return ConversationCollator(processor, tool_schema(), template, config.assistant_only_loss, config.max_length)


def trl_fields(config: SFTRunConfig, out: Path, *, cuda: bool | None = None,
               bf16_supported: bool | None = None) -> dict[str, Any]:
    """The keyword arguments of this run's `trl.SFTConfig` (`cuda` / `bf16_supported`: see `common_trl_fields`)."""
    from medagent.train.trl_common import common_trl_fields, with_trl_kwargs

    return with_trl_kwargs(config, dict(
        output_dir=str(out / "checkpoints"),
        max_steps=config.max_steps,
        num_train_epochs=config.num_train_epochs,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        assistant_only_loss=config.assistant_only_loss,
        max_length=config.max_length,
        **common_trl_fields(config, config.gradient_checkpointing, cuda=cuda, bf16_supported=bf16_supported),
    ))


def trl_args(config: SFTRunConfig, out: Path) -> Any:
    """The `trl.SFTConfig` this run uses (CPU-safe flags on the CPU)."""
    from trl import SFTConfig

    from medagent.train.trl_common import build_trl_config

    return build_trl_config(SFTConfig, trl_fields(config, out))


def run_sft(config: SFTRunConfig) -> Path:
    """Fine-tune per `config` and return the run folder (the model is in `<run>/model`).

    Under `accelerate launch` (several processes) every process trains on its own shard of the rows
    (accelerate's distributed sampler), and only the main process writes the run folder (config.json,
    versions.json, the grounding rows, metrics.jsonl, model/); the others wait for it where they read it.

    Raises:
        DataError: the data folder is missing, malformed or empty.
        ConfigError: bad settings, or `resume=True` with no checkpoint to resume from.
    """
    import torch
    from trl import SFTTrainer

    cfg = config
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir) if cfg.output_dir else Path("medagent-runs") / f"sft-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if cfg.resume and not any((out / "checkpoints").glob("checkpoint-*")):
        raise ConfigError(f"resume=True but {out / 'checkpoints'} has no checkpoint")
    args = trl_args(cfg, out)  # sets up the process group under accelerate launch
    paths = list(cfg.data)
    main = args.process_index == 0
    with args.main_process_first(local=False, desc="the run folder"):
        if main:
            out.mkdir(parents=True, exist_ok=True)
        if not paths:  # stage "grounding" without data: the main process draws the rows into the run folder once
            from medagent.trajectories.prompts import save_grounding

            rows = out / "grounding-data"
            if main and not (rows / "dataset_dict.json").exists():
                save_grounding(cfg.grounding, str(rows))
            paths = [str(rows)]
    train, evaluation = _load_data(paths, cfg.train_split, cfg.eval_split)
    if main:
        (out / "config.json").write_text(json.dumps(jsonable(dataclasses.asdict(cfg)), indent=2) + "\n")
        (out / "versions.json").write_text(json.dumps(collect_versions(cfg.seed), indent=2, default=str) + "\n")

    if cfg.model:
        model, processor = load_vlm(cfg.model)
        model.train()
    else:
        model, processor = build_tiny_vlm(cfg.tiny)
    from medagent.train.lora import lora_config
    from medagent.train.progress import progress_callback
    from medagent.train.trl_common import save_policy

    peft_config = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) if cfg.lora else None
    callbacks = [metrics_callback(out / "metrics.jsonl")]
    if cfg.progress:
        total = cfg.max_steps if cfg.max_steps > 0 else None
        callbacks.append(progress_callback(f"SFT ({cfg.stage})", total, ("loss",)))
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                         processing_class=processor, data_collator=make_collator(processor, cfg),
                         peft_config=peft_config, callbacks=callbacks)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # raw log dicts go to metrics.jsonl (and the progress bar), not stdout
    trainer.train(resume_from_checkpoint=True if cfg.resume else None)
    if evaluation is not None:
        trainer.evaluate()
    if cfg.save_model:
        save_policy(trainer, processor, out, cfg.lora,
                    base=lambda: load_vlm(cfg.model) if cfg.model else build_tiny_vlm(cfg.tiny))
    return out


if __name__ == "__main__":  # accelerate launch [...] -m medagent.train.sft --recipe FILE [--FIELD VALUE ...]
    from medagent.train.recipes import main

    raise SystemExit(main("sft"))
