"""RLVR of the VLM policy in the environment: TRL's GRPOTrainer with `environment_factory` = the TRL adapter.

    from medagent.train.grpo import GRPORunConfig, run_grpo
    run = run_grpo(GRPORunConfig(model="runs/sft/model", env={"dataset": "mni-lesion"}, max_steps=50))
    agent = VLMPolicyAgent(run / "model")

Each rollout is one env episode (`medagent.envs.trl_adapter.SegToolEnvironment`): TRL renders the prompt with
the tools block, the policy writes tool calls, TRL runs them on the adapter (which drives `env.step`), and
`get_reward()` gives the env's episode score (weight 1). Each process term of the score (format, outcome,
overshoot, turns, improvement) is also a reward function of its own, logged under `rewards/term_<name>`, with
a weight in `GRPORunConfig.term_weights` (0 by default: the episode score already contains them; a weight
adds that term on top). `max_tool_calling_iterations` is the env's `max_turns`.

Prompts: a dataset from `medagent.trajectories.prompts.build_prompt_dataset` (one row per case and target,
all generations of a group on the same image and target), or a saved one (`data`).

Several processes: `accelerate launch [--config_file configs/accelerate/...] -m medagent.train.grpo --recipe FILE`
(`python -m medagent.train.grpo --help`); TRL gives each process its own prompts of the generation batch, the
main process alone writes the run folder. Rollouts with vLLM: `use_vllm`, `vllm_mode` ("colocate" or "server").

Run folder (`output_dir`, default `medagent-runs/grpo-<time>/`): config.json, versions.json, metrics.jsonl
(one line per log: reward, rewards/<fn>/mean, loss, ...), model/ (the final policy, LoRA merged),
checkpoints/ (with `save_steps`; `resume=True` continues from the last).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError
from medagent.train.trl_common import PolicyRunCommon

#: The process terms of the episode score logged as reward functions (`medagent.rewards.reward_terms` keys).
TERMS = ("format", "outcome", "overshoot", "turns", "improvement")


@dataclass
class GRPORunConfig(PolicyRunCommon):
    """One GRPO run. Defaults run a few steps of the tiny policy on a CPU. LoRA, device, logging, saving and
    resume fields: `PolicyRunCommon` (here `progress` defaults to True).

    Attributes:
        model: a saved VLM folder (an SFT run's `model/`, or a local Hugging Face Qwen3-VL); None builds the
            tiny random Qwen3-VL (only useful for tests).
        env: `EnvConfig` fields of the training env (dataset, split, image_size, max_turns, reward, ...).
        data: a saved prompt dataset (`datasets.save_to_disk`); None builds one from `env` (`prompts` rows).
        prompts: number of prompt rows built from `env` when `data` is None (None: every target of the split).
        output_dir: run folder; None makes `medagent-runs/grpo-<YYYYmmdd-HHMMSS>`.
        max_steps: optimiser steps.
        learning_rate / lr_scheduler_type / warmup_steps / weight_decay: optimiser (transformers names;
            warmup_steps below 1 is a fraction of the steps).
        num_generations: G, rollouts per prompt (the group whose rewards are normalised together).
        per_device_train_batch_size / gradient_accumulation_steps: rollouts per step = their product (x devices);
            must be a multiple of num_generations.
        max_completion_length: tokens per rollout after the prompt, tool results and images included (TRL rolls
            back a tool turn that would overflow, which then scores as an episode ended without stop_action).
        temperature / top_p: sampling of rollouts.
        beta: KL coefficient to the reference model (0: no reference model, as MedSAM-Agent trains).
        loss_type: TRL's GRPO loss ("grpo", "dapo", "dr_grpo", ...).
        term_weights: extra weight of each process term (`TERMS`) added to the episode score.
        use_vllm: generate rollouts with vLLM (TRL's `use_vllm`; needs the `[vllm]` environment, README).
        vllm_mode: "colocate" (vLLM inside every training process, sharing its GPU) or "server" (a separate
            `trl vllm-serve` process on GPUs of its own; TRL's `vllm_mode`).
        vllm_gpu_memory_utilization: colocate: fraction of each GPU vLLM may take (TRL's default 0.3).
        vllm_tensor_parallel_size: colocate: GPUs one vLLM engine spans.
        vllm_server_base_url: server: the server's URL (e.g. "http://10.0.0.5:8000"); None: TRL's default
            host and port (0.0.0.0:8000, the same machine).
    """

    model: str | None = None
    env: dict[str, Any] = field(default_factory=lambda: {"dataset": "mni-lesion", "image_size": 224})
    data: str | None = None
    prompts: int | None = 256
    output_dir: str | None = None
    max_steps: int = 20
    learning_rate: float = 1e-5
    lr_scheduler_type: str = "constant"
    warmup_steps: int | float = 0
    weight_decay: float = 0.0
    num_generations: int = 4
    per_device_train_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    max_completion_length: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    beta: float = 0.0
    loss_type: str = "grpo"
    term_weights: dict[str, float] = field(default_factory=lambda: {t: 0.0 for t in TERMS})
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_tensor_parallel_size: int = 1
    vllm_server_base_url: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        unknown = set(self.term_weights) - set(TERMS)
        if unknown:
            raise ConfigError(f"GRPORunConfig.term_weights has unknown term(s) {sorted(unknown)}; terms: {list(TERMS)}")
        self.term_weights = {t: float(self.term_weights.get(t, 0.0)) for t in TERMS}
        if self.max_steps < 1:
            raise ConfigError(f"GRPORunConfig.max_steps must be >= 1, got {self.max_steps}")
        if self.num_generations < 2:
            raise ConfigError("GRPORunConfig.num_generations must be >= 2 (GRPO normalises rewards within a group)")
        rollouts = self.per_device_train_batch_size * self.gradient_accumulation_steps
        if rollouts % self.num_generations:
            raise ConfigError(f"GRPORunConfig: per_device_train_batch_size x gradient_accumulation_steps = {rollouts} "
                              f"must be a multiple of num_generations = {self.num_generations}")
        if self.max_completion_length < 16:
            raise ConfigError("GRPORunConfig.max_completion_length must be >= 16 tokens")
        if self.vllm_mode not in ("colocate", "server"):
            raise ConfigError(f"GRPORunConfig.vllm_mode must be 'colocate' or 'server', got {self.vllm_mode!r}")
        if not 0.0 < self.vllm_gpu_memory_utilization <= 1.0:
            raise ConfigError("GRPORunConfig.vllm_gpu_memory_utilization must be in (0, 1]")


def term_reward(name: str) -> Any:
    """A TRL reward function returning process term `name` of each rollout's episode (`environments` kwarg)."""

    def reward(environments: list[Any], **_: Any) -> list[float]:
        return [float(env.terms.get(name, 0.0)) for env in environments]

    reward.__name__ = f"term_{name}"
    return reward


def dice_reward(environments: list[Any], **_: Any) -> list[float]:
    """Final Dice of each rollout (weight 0: logged, not optimised)."""
    return [float(env.episode.dice) if env.episode is not None else 0.0 for env in environments]


def trl_fields(config: GRPORunConfig, out: Path, max_turns: int, *, cuda: bool | None = None,
               bf16_supported: bool | None = None) -> dict[str, Any]:
    """The keyword arguments of this run's `trl.GRPOConfig` (`cuda` / `bf16_supported`: see `common_trl_fields`)."""
    from medagent.train.trl_common import common_trl_fields, with_trl_kwargs

    weights = [config.term_weights[t] for t in TERMS] + [0.0]  # + dice (logged only); TRL appends get_reward (1)
    return with_trl_kwargs(config, dict(
        output_dir=str(out / "checkpoints"),
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        max_tool_calling_iterations=max_turns,
        temperature=config.temperature,
        top_p=config.top_p,
        beta=config.beta,
        loss_type=config.loss_type,
        reward_weights=weights,
        log_completions=False,  # crashes while tools return images (DESIGN.md)
        use_vllm=config.use_vllm,
        vllm_mode=config.vllm_mode,
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=config.vllm_tensor_parallel_size,
        vllm_server_base_url=config.vllm_server_base_url,
        **common_trl_fields(config, config.gradient_checkpointing, cuda=cuda, bf16_supported=bf16_supported),
    ))


def trl_args(config: GRPORunConfig, out: Path, max_turns: int) -> Any:
    """The `trl.GRPOConfig` of a run (CPU-safe flags on the CPU)."""
    from trl import GRPOConfig

    from medagent.train.trl_common import build_trl_config

    return build_trl_config(GRPOConfig, trl_fields(config, out, max_turns))


def run_grpo(config: GRPORunConfig) -> Path:
    """Train per `config` and return the run folder (the policy is in `<run>/model`).

    Raises:
        ConfigError: bad settings, or `resume=True` with no checkpoint to resume from.
        DataError: the prompt data is missing or empty.
    """
    import datasets
    import torch
    from trl import GRPOTrainer

    from medagent.agents.vlm import build_tiny_vlm, load_vlm, vision_token_ids
    from medagent.envs.config import EnvConfig
    from medagent.envs.trl_adapter import SegToolEnvironment
    from medagent.train.lora import lora_config
    from medagent.train.progress import progress_callback
    from medagent.provenance import collect_versions
    from medagent.train.trl_common import jsonable, metrics_callback, save_policy
    from medagent.trajectories.prompts import build_prompt_dataset

    cfg = config
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out = Path(cfg.output_dir) if cfg.output_dir else Path("medagent-runs") / f"grpo-{_dt.datetime.now():%Y%m%d-%H%M%S}"
    if cfg.resume and not any((out / "checkpoints").glob("checkpoint-*")):
        raise ConfigError(f"resume=True but {out / 'checkpoints'} has no checkpoint")
    env_config = EnvConfig(**cfg.env)  # checks the env settings before anything is built
    args = trl_args(cfg, out, env_config.max_turns)  # sets up the process group under accelerate launch
    main = args.process_index == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(jsonable(dataclasses.asdict(cfg)), indent=2) + "\n")
        (out / "versions.json").write_text(json.dumps(collect_versions(cfg.seed), indent=2, default=str) + "\n")

    from medagent.envs.env import load_dataset
    from medagent.envs.provider import ToolProvider

    # The main process first: a builtin dataset derives into the cache once, the others read it.
    with args.main_process_first(local=False, desc="the prompts"):
        if cfg.data:
            from medagent.errors import DataError

            if not Path(cfg.data).exists():
                raise DataError(f"GRPO prompt data {cfg.data} does not exist (build it with build_prompt_dataset)")
            prompts = datasets.load_from_disk(cfg.data)
        else:
            prompts = build_prompt_dataset(cfg.env, limit=cfg.prompts, seed=cfg.seed)
        dataset = load_dataset(env_config)
    if cfg.model:
        model, processor = load_vlm(cfg.model)
        model.train()
    else:
        model, processor = build_tiny_vlm()
    peft_config = lora_config(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules) if cfg.lora else None

    # One shared tool provider per process: tools load once for all its rollouts (stateful tools keep
    # per-episode state). TRL gives each process its own prompts of the generation batch.
    provider = ToolProvider(None, env_config.load_tools, dataset.info.name)
    env_kwargs = {k: v for k, v in cfg.env.items() if k not in ("dataset", "data_dir")}
    factory = functools.partial(SegToolEnvironment, dataset=dataset, tools=provider, **env_kwargs)
    reward_funcs = [term_reward(t) for t in TERMS] + [dice_reward]
    callbacks = [metrics_callback(out / "metrics.jsonl")]
    if cfg.progress:
        callbacks.append(progress_callback("GRPO", cfg.max_steps, ("reward", "rewards/dice_reward/mean")))
    # TRL suppresses only the image pad token; a sampled <|vision_start|> breaks Qwen3-VL's rope index mid-run
    suppress = sorted(set(vision_token_ids(processor.tokenizer)) | set((args.generation_kwargs or {}).get("suppress_tokens", [])))
    args.generation_kwargs = {**(args.generation_kwargs or {}), "suppress_tokens": suppress}
    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=args,
                          train_dataset=prompts, processing_class=processor, environment_factory=factory,
                          peft_config=peft_config, callbacks=callbacks)
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # raw log dicts go to metrics.jsonl (and the progress bar), not stdout
    trainer.train(resume_from_checkpoint=True if cfg.resume else None)
    if cfg.save_model:
        save_policy(trainer, processor, out, cfg.lora, save_adapter=False,
                    base=lambda: load_vlm(cfg.model) if cfg.model else build_tiny_vlm())
    return out


if __name__ == "__main__":  # accelerate launch [...] -m medagent.train.grpo --recipe FILE [--FIELD VALUE ...]
    from medagent.train.recipes import main

    raise SystemExit(main("grpo"))
