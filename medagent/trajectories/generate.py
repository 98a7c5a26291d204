"""Generate trajectories: play episodes with an agent and store every step as a Hugging Face dataset on disk.

Layout of an output folder:

    out/meta.json                  what was generated (agent, seed, episodes, shard size, env description)
    out/shards/shard-00000/        one `datasets.Dataset.save_to_disk` folder per shard of `shard_size` episodes
    out/shards/.tmp-shard-00001-*  a shard being written (renamed into place when complete, so a crash loses
                                   at most the shards in progress; leftovers are removed on resume)

Episode i is played with the seed `episode_seed(seed, i)`, whichever worker plays it, so the same seed gives
identical trajectories with any number of workers, and `resume=True` only plays the missing shards.
One row per step: the observation image the agent saw, instruction, history, the action text, the step
reward, the reward terms (JSON), Dice/IoU after the step, the episode's ids, the step's tool turns (one per
call: tool name, answer text, image after the call or none once the episode is over), and on an episode's
last row the final observation image.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medagent.errors import ConfigError

SCHEMA_VERSION = 2  # 2: per-call tool turns (names, texts, images)


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode `index` of a run seeded with `seed` (independent of workers and shards)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


@dataclass
class GenerateConfig:
    """What to generate.

    Attributes:
        agent: agent name (`medagent.agents.AGENTS`).
        agent_kwargs: keyword arguments of the agent.
        episodes: number of episodes.
        seed: run seed; episode i uses `episode_seed(seed, i)`.
        shard_size: episodes per shard (the unit of atomic writes and of resuming).
        workers: parallel worker processes (1 = in this process).
    """

    agent: str = "expert"
    agent_kwargs: dict[str, Any] = field(default_factory=dict)
    episodes: int = 100
    seed: int = 0
    shard_size: int = 16
    workers: int = 1

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.shard_size < 1 or self.workers < 1:
            raise ConfigError("GenerateConfig: episodes, shard_size and workers must be >= 1")


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _play_shard(env_factory: Callable[[], Any], config: GenerateConfig, shard: int, out: str) -> str:
    """Play the episodes of one shard and write it atomically; returns the shard folder."""
    import datasets

    from medagent.agents import make_agent, run_episode

    env = env_factory()
    agent = make_agent(config.agent, **config.agent_kwargs)
    rows: list[dict[str, Any]] = []
    first = shard * config.shard_size
    for index in range(first, min(first + config.shard_size, config.episodes)):
        seed = episode_seed(config.seed, index)
        result = run_episode(env, agent, seed=seed)
        info0 = result.reset_info
        for t, step in enumerate(result.steps):
            last = t == len(result.steps) - 1
            rows.append({
                "episode": index, "step": t, "seed": seed, "agent": config.agent,
                "case_id": str(info0["case_id"]), "subject": str(info0["subject"]),
                "class_name": str(info0["class_name"]), "instance": int(info0["instance"]),
                "image": step.observation["image"], "instruction": step.observation["instruction"],
                "history": step.observation["history"], "turn": int(step.observation["turn"]),
                "action": step.action, "reward": step.reward,
                "reward_terms": json.dumps(step.info["reward_terms"], sort_keys=True),
                "results": json.dumps(step.info["results"]), "outcomes": json.dumps(step.info["outcomes"]),
                "dice": float(step.info["dice"]), "iou": float(step.info["iou"]),
                "terminated": step.terminated, "truncated": step.truncated,
                "episode_score": float(result.score), "final_image": result.final_observation["image"] if last else None,
                "tool_names": json.dumps([t.name for t in step.tool_turns]),
                "tool_texts": json.dumps([t.text for t in step.tool_turns]),
                "tool_has_image": json.dumps([t.image is not None for t in step.tool_turns]),
                "tool_images": [t.image for t in step.tool_turns if t.image is not None],
            })
    env.close()
    features = datasets.Features({
        "episode": datasets.Value("int64"), "step": datasets.Value("int64"), "seed": datasets.Value("int64"),
        "agent": datasets.Value("string"), "case_id": datasets.Value("string"), "subject": datasets.Value("string"),
        "class_name": datasets.Value("string"), "instance": datasets.Value("int64"), "image": datasets.Image(),
        "instruction": datasets.Value("string"), "history": datasets.Value("string"), "turn": datasets.Value("int64"),
        "action": datasets.Value("string"), "reward": datasets.Value("float64"), "reward_terms": datasets.Value("string"),
        "results": datasets.Value("string"), "outcomes": datasets.Value("string"), "dice": datasets.Value("float64"),
        "iou": datasets.Value("float64"), "terminated": datasets.Value("bool"), "truncated": datasets.Value("bool"),
        "episode_score": datasets.Value("float64"), "final_image": datasets.Image(),
        "tool_names": datasets.Value("string"), "tool_texts": datasets.Value("string"),
        "tool_has_image": datasets.Value("string"), "tool_images": datasets.Sequence(datasets.Image()),
    })
    shards = Path(out) / "shards"
    tmp = shards / f".tmp-{_shard_name(shard)}-{uuid.uuid4().hex[:8]}"
    datasets.Dataset.from_list(rows, features=features).save_to_disk(str(tmp))
    final = shards / _shard_name(shard)
    os.replace(tmp, final)  # atomic on one filesystem: a shard is either complete or absent
    return str(final)


def _run_shard(args: tuple[Callable[[], Any], GenerateConfig, int, str]) -> str:
    return _play_shard(*args)


def generate(env_factory: Callable[[], Any], out: str | Path, config: GenerateConfig | None = None,
             resume: bool = False, env_description: dict[str, Any] | None = None,
             max_shards: int | None = None, progress: bool = False) -> Path:
    """Generate `config.episodes` episodes into `out` (see module docstring).

    Args:
        env_factory: picklable zero-argument callable building the env (e.g. `functools.partial(InteractiveSegEnv,
            dataset="phantom")`); called once per shard.
        out: output folder.
        config: what to generate.
        resume: continue an interrupted run in `out` (same config required); without it `out` must be empty.
        env_description: JSON-able description of the env stored in meta.json (and compared on resume).
        max_shards: write at most this many new shards, then return (for tests and time-boxed runs).
        progress: show a rich progress bar.
    Returns:
        The output folder.
    """
    config = config or GenerateConfig()
    out = Path(out)
    shards_dir = out / "shards"
    meta = {"schema_version": SCHEMA_VERSION, "config": asdict(config), "env": env_description or {}}
    meta_for_compare = {**meta, "config": {k: v for k, v in asdict(config).items() if k != "workers"}}
    meta_path = out / "meta.json"
    if meta_path.exists():
        if not resume:
            raise ConfigError(f"{out} already holds trajectories; pass resume=True (--resume) to continue, or use a new folder")
        old = json.loads(meta_path.read_text())
        old_cmp = {**old, "config": {k: v for k, v in old["config"].items() if k != "workers"}}
        if old_cmp != meta_for_compare:
            raise ConfigError(f"{meta_path} was written with another configuration; cannot resume with this one")
    shards_dir.mkdir(parents=True, exist_ok=True)
    if not meta_path.exists():
        tmp = meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2, default=str))
        os.replace(tmp, meta_path)
    for leftover in shards_dir.glob(".tmp-*"):  # shards a crash left half-written
        shutil.rmtree(leftover, ignore_errors=True)
    n_shards = -(-config.episodes // config.shard_size)
    todo = [k for k in range(n_shards) if not (shards_dir / _shard_name(k)).exists()]
    if max_shards is not None:
        todo = todo[:max_shards]
    jobs = [(env_factory, config, k, str(out)) for k in todo]
    bar = None
    if progress:
        from rich.progress import Progress

        bar = Progress()
        bar.start()
        task = bar.add_task("trajectories", total=len(jobs))
    try:
        if config.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                _run_shard(job)
                if bar:
                    bar.advance(task)
        else:
            with mp.get_context("spawn").Pool(min(config.workers, len(jobs))) as pool:
                for _ in pool.imap_unordered(_run_shard, jobs):
                    if bar:
                        bar.advance(task)
    finally:
        if bar:
            bar.stop()
    return out


def load_trajectories(path: str | Path) -> "Any":
    """All complete shards of a trajectory folder as one `datasets.Dataset`, ordered by (episode, step)."""
    import datasets

    meta = Path(path) / "meta.json"
    if meta.is_file():
        version = json.loads(meta.read_text()).get("schema_version")
        if version != SCHEMA_VERSION:
            raise ConfigError(f"{meta}: trajectories of schema version {version}; this medagent reads version "
                              f"{SCHEMA_VERSION} (regenerate them with `medagent trajectories generate`)")
    shards = sorted((Path(path) / "shards").glob("shard-*"))
    if not shards:
        raise ConfigError(f"{path} has no trajectory shards (expected {Path(path) / 'shards' / 'shard-00000'})")
    return datasets.concatenate_datasets([datasets.load_from_disk(str(s)) for s in shards])
