"""The shipped tiny policy's recipe: expert trajectories -> grounding SFT -> trajectory SFT -> GRPO -> ship.

    medagent train policy --out medagent-runs/policy        # resumable: rerun the same command after a stop
    medagent train policy --out medagent-runs/policy --ship # and copy the result into medagent/weights/policy-tiny

Every stage writes into `output_dir` and is skipped when its output is complete, so an interrupted recipe continues
where it stopped (trajectory shards and trainer checkpoints are step-exact). Every stop step is a field of
`PolicyRecipeConfig`, so the model card's command reproduces the shipped policy step for step.

Stages (`output_dir/...`):
    traj/<dataset>-<seed>/   teacher trajectories (`RankedRegionsAgent` by default) on the training split of each dataset,
                             procedural datasets drawn with several dataset seeds (new lesions per seed);
                             `<dataset>-<split>-<seed>/` for the other `teacher_splits` (e.g. val)
    sft-data/<...>/          their TRL export (one example per episode)
    grounding/               SFT stage "grounding" from a fresh tiny Qwen3-VL (`policy_config`)
    sft/                     SFT on the trajectories, from grounding/model
    grpo/                    GRPO in the env (`grpo_dataset`, `grpo_split`), from sft/model
    timings.json             seconds per stage
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError


@dataclass
class PolicyRecipeConfig:
    """Every setting of the recipe (module docstring); the defaults are the shipped policy's.

    Attributes:
        output_dir: recipe folder.
        datasets: builtin datasets the trajectories come from.
        teacher_splits: splits the teacher plays on. The automatic segmenters were trained on the train split and
            make few mistakes there (mni-lesion: more regions than targets in 5 of 28 multi-target episodes, 21 of
            28 on the test split, `bench/bench_region_rules.py`), so a policy taught there only rarely sees the false
            positives it meets at test time; the val split's subjects show them (18 of 27). Test splits are never used.
        procedural_seeds: dataset seeds for procedural datasets (`medagent.trajectories.prompts.PROCEDURAL`).
        episodes: expert episodes per (dataset, dataset seed).
        image_size: the policy's image side, pixels (env observation and the VLM's image size).
        max_turns: env turns.
        expert: the agent that plays the trajectories.
        grounding_rows / grounding_steps / grounding_lr: grounding stage.
        sft_steps / sft_lr: trajectory SFT stage.
        batch_size: SFT batch size.
        grpo_dataset / grpo_split: the GRPO env's dataset and split (the teacher splits' reasoning holds here too:
            on val the segmenters' mistakes are test-like, so different actions of a group score differently).
        grpo_prompts / grpo_steps / grpo_lr / num_generations / grpo_batch_size / max_completion_length /
            temperature / beta: GRPO stage (`GRPORunConfig`).
        seed: seed of every stage.
        num_threads: torch threads of the trainers.
    """

    output_dir: str = "medagent-runs/policy"
    datasets: tuple[str, ...] = ("mni-lesion", "nuclei", "ct-phantom")
    teacher_splits: tuple[str, ...] = ("train",)
    procedural_seeds: tuple[int, ...] = tuple(range(40))
    episodes: int = 50
    image_size: int = 128
    max_turns: int = 5
    expert: str = "ranked-regions"
    grounding_rows: int = 800
    grounding_steps: int = 150
    grounding_lr: float = 2e-3
    sft_steps: int = 1800
    sft_lr: float = 2e-3
    batch_size: int = 8
    grpo_dataset: str = "mni-lesion"
    grpo_split: str = "val"
    grpo_prompts: int = 256
    grpo_steps: int = 60
    grpo_lr: float = 2e-5
    num_generations: int = 4
    grpo_batch_size: int = 8
    max_completion_length: int = 512
    temperature: float = 1.5
    beta: float = 0.0
    seed: int = 0
    num_threads: int | None = None
    tiny: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.datasets = tuple(self.datasets)
        self.teacher_splits = tuple(self.teacher_splits)
        if "test" in (*self.teacher_splits, self.grpo_split) or not self.teacher_splits:
            raise ConfigError("PolicyRecipeConfig.teacher_splits and grpo_split must name train/val splits, got "
                              f"{self.teacher_splits} and {self.grpo_split!r}")
        self.procedural_seeds = tuple(int(s) for s in self.procedural_seeds)
        if min(self.episodes, self.grounding_steps, self.sft_steps, self.grpo_steps) < 1:
            raise ConfigError("PolicyRecipeConfig: episodes and every stage's steps must be >= 1")

    def env(self, dataset: str, **more: Any) -> dict[str, Any]:
        return {"dataset": dataset, "image_size": self.image_size, "max_turns": self.max_turns, **more}


def _timed(timings: dict[str, float], name: str, path: Path, fn: Any) -> Any:
    start = time.perf_counter()
    result = fn()
    timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
    path.write_text(json.dumps(timings, indent=2) + "\n")
    return result


def trajectory_sources(config: PolicyRecipeConfig) -> list[tuple[str, str, int]]:
    """(dataset, split, dataset seed) triples the trajectories are played on."""
    from medagent.trajectories.prompts import PROCEDURAL

    return [(name, split, s) for split in config.teacher_splits for name in config.datasets
            for s in (config.procedural_seeds if name in PROCEDURAL else (0,))]


def _source_folder(name: str, split: str, dataset_seed: int) -> str:
    """`<dataset>-<seed>` on the train split (the layout of earlier recipes), `<dataset>-<split>-<seed>` otherwise."""
    return f"{name}-{dataset_seed}" if split == "train" else f"{name}-{split}-{dataset_seed}"


def run_recipe(config: PolicyRecipeConfig) -> Path:
    """Run (or continue) every stage; returns the folder of the final policy (`grpo/model`)."""
    from medagent.agents.vlm import policy_config
    from medagent.envs import InteractiveSegEnv
    from medagent.train.grpo import GRPORunConfig, run_grpo
    from medagent.train.sft import SFTRunConfig, run_sft
    from medagent.trajectories import GenerateConfig, export_trl, generate
    from medagent.trajectories.prompts import GroundingConfig

    cfg = config
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "recipe.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    timings_path = out / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    tiny = dataclasses.replace(policy_config(cfg.seed), **cfg.tiny)

    exports = []
    for name, split, dataset_seed in trajectory_sources(cfg):
        folder = _source_folder(name, split, dataset_seed)
        traj, data = out / "traj" / folder, out / "sft-data" / folder
        exports.append(str(data))
        if (data / "dataset_dict.json").exists():
            continue
        factory = functools.partial(InteractiveSegEnv, **cfg.env(name, dataset_seed=dataset_seed, split=split))
        game = GenerateConfig(agent=cfg.expert, episodes=cfg.episodes, seed=cfg.seed + dataset_seed, shard_size=50)

        def play(factory=factory, traj=traj, data=data, game=game):
            generate(factory, traj, game, resume=True, env_description={"dataset": str(traj.name)}, progress=True)
            export_trl(traj, data, val_fraction=0.0)

        _timed(timings, "trajectories", timings_path, play)

    def sft(stage: str, folder: str, steps: int, lr: float, model: str | None, data: list[str]) -> Path:
        run = out / folder
        if (run / "model" / "config.json").exists():
            return run
        resume = any((run / "checkpoints").glob("checkpoint-*"))
        grounding = GroundingConfig(datasets=cfg.datasets, rows=cfg.grounding_rows, dataset_seeds=cfg.procedural_seeds,
                                    image_size=cfg.image_size, seed=cfg.seed)
        run_config = SFTRunConfig(data=data, stage=stage, grounding=grounding, model=model, tiny=tiny, output_dir=str(run),
                                  max_steps=steps, learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=min(50, steps // 10),
                                  per_device_train_batch_size=cfg.batch_size, eval_split=None, save_steps=100,
                                  resume=resume, num_threads=cfg.num_threads, seed=cfg.seed, progress=True,
                                  logging_steps=10)
        return _timed(timings, "grounding" if stage == "grounding" else "sft", timings_path, lambda: run_sft(run_config))

    grounding = sft("grounding", "grounding", cfg.grounding_steps, cfg.grounding_lr, None, [])
    tuned = sft("trajectories", "sft", cfg.sft_steps, cfg.sft_lr, str(grounding / "model"), exports)

    rl = out / "grpo"
    if not (rl / "model" / "config.json").exists():
        resume = any((rl / "checkpoints").glob("checkpoint-*"))
        grpo = GRPORunConfig(model=str(tuned / "model"), env=cfg.env(cfg.grpo_dataset, split=cfg.grpo_split),
                             prompts=cfg.grpo_prompts, output_dir=str(rl), max_steps=cfg.grpo_steps, learning_rate=cfg.grpo_lr,
                             num_generations=cfg.num_generations, per_device_train_batch_size=cfg.grpo_batch_size,
                             max_completion_length=cfg.max_completion_length, temperature=cfg.temperature, beta=cfg.beta,
                             save_steps=10, resume=resume, num_threads=cfg.num_threads, seed=cfg.seed, logging_steps=1)
        _timed(timings, "grpo", timings_path, lambda: run_grpo(grpo))
    return rl / "model"


#: The model card's evaluation: the bench's first mni-lesion episodes (`bench/bench_policy.py`, seed 0), run by
#: `medagent.eval.agent_eval.card_rows` (the CLI's `train policy --ship` passes its rows to `ship`).
CARD_EVAL = {"dataset": "mni-lesion", "split": "test", "episodes": 40, "seed": 0, "agents": ("policy", "auto", "mean-box")}


def ship(config: PolicyRecipeConfig, evaluate: Any, name: str = "policy-tiny", version: str | None = None) -> Path:
    """Copy the recipe's final policy into `medagent/weights/<name>` (float16 weights), with a model card (its
    recipe, timings and an evaluation on `CARD_EVAL` episodes) and its manifest entry; returns the folder.

    Args:
        evaluate: `(model_folder, env_settings, agents, episodes, seed) -> rows` (dicts with agent, dice,
            episode_score, turns, invalid_rate): `medagent.eval.agent_eval.card_rows`, passed in because
            evaluation sits above training in the package's layering.
        version: the manifest version; None bumps the shipped one when the weights change (1 when new).
    """
    import shutil

    import torch

    from medagent.agents.vlm import load_vlm, save_vlm
    from medagent.weights import WEIGHTS_DIR, record_weights

    from medagent.weights import read_manifest, sha256

    out = Path(config.output_dir)
    model, processor = load_vlm(out / "grpo" / "model")
    previous = read_manifest().get(name)
    dest = WEIGHTS_DIR / name
    if dest.exists():
        shutil.rmtree(dest)
    save_vlm(model.to(torch.float16), processor, dest)
    # The chat template is TRL's file: not shipped, `load_vlm` reads it from the installed trl instead.
    (dest / "chat_template.jinja").unlink(missing_ok=True)
    if version is None:
        same = previous is not None and previous["files"].get("model.safetensors") == sha256(dest / "model.safetensors")
        version = "1" if previous is None else previous["version"] if same else str(int(previous["version"]) + 1)
    timings = json.loads((out / "timings.json").read_text())
    env = {"dataset": CARD_EVAL["dataset"], "split": CARD_EVAL["split"], "image_size": config.image_size,
           "max_turns": config.max_turns}
    evaluation = evaluate(dest, env, CARD_EVAL["agents"], CARD_EVAL["episodes"], CARD_EVAL["seed"])
    (out / "card_eval.json").write_text(json.dumps(evaluation, indent=2) + "\n")
    table = "\n".join(f"| {r['agent']} | {r['dice']:.3f} | {r['episode_score']:.3f} | {r['turns']:.2f} | {r['invalid_rate']:.1%} |"
                      for r in evaluation)
    params = sum(p.numel() for p in model.parameters())
    defaults = dataclasses.asdict(PolicyRecipeConfig())
    changed = {k: v for k, v in dataclasses.asdict(config).items() if k != "output_dir" and v != defaults[k]}
    flags = " ".join(f"--set {k}={json.dumps(v)}" for k, v in changed.items())
    (dest / "README.md").write_text(MODEL_CARD.format(
        version=version, params=params, expert=config.expert, command=f"medagent train policy --out DIR {flags}".strip(),
        recipe=json.dumps(dataclasses.asdict(config), indent=2), timings=json.dumps(timings, indent=2), table=table,
        datasets=", ".join(f"`{d}`" for d in config.datasets), eval_episodes=CARD_EVAL["episodes"],
        splits=" and ".join(config.teacher_splits), grpo_dataset=config.grpo_dataset, grpo_split=config.grpo_split,
        total=sum(timings.values()) / 60.0))
    record_weights(name, "mni-lesion-v1+nuclei-v1+ct-phantom-v1", version=version)
    return dest


MODEL_CARD = """# policy-tiny

The tiny vision-language policy shipped with medagent (embedded default; offline, CPU). Manifest version {version}.
A Qwen3-VL architecture built from a config ({params} parameters, float16 here; loaded as float32 on a CPU) with a
tokenizer trained on medagent's own text (every integer 0-999 one token).

- What it does: calls `auto_segment`, reads the regions the tool answer lists (boxes in the 0-999 frame, nearest
  the top-left first, areas in pixels), prompts SAM with the box of the region the instruction asks for
  (`select_region` with its number), and stops.
- Data: the {splits} splits of the builtin datasets {datasets} (procedural datasets with several dataset seeds),
  played by the teacher agent in the environment with the shipped tools; no external data, no pretrained weights.
- Recipe (`medagent.train.policy_recipe`, every stage resumable and step-exact):
  `{command}` then `--ship`. Stages: teacher trajectories (`{expert}`) -> grounding SFT -> trajectory SFT ->
  GRPO in the env ({grpo_dataset} {grpo_split} split).
- Full recipe configuration:

```json
{recipe}
```

- Seconds per stage on a 2-core CPU ({total:.1f} minutes in all):

```json
{timings}
```

- Evaluation at ship time (`medagent.eval.agent_eval.card_rows`): the first {eval_episodes} paired
  mni-lesion test episodes of `bench/bench_policy.py` (seed 0); invalid rate = (invalid calls + format
  failures) / (calls + format failures). The full tables (three datasets, paired intervals, costs) come from
  `python bench/bench_policy.py` and are in docs/policy.md.

| agent | Dice | episode score | turns | invalid rate |
|---|---|---|---|---|
{table}

- Limits: trained on synthetic and template-derived data with the shipped tiny tools; it chooses among the
  regions an automatic segmenter proposes, so it cannot find a target the segmenter misses. A demonstration
  policy, not a clinical one.
"""
