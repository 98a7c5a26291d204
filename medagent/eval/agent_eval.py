"""Evaluate agents in the interactive environment: the same episodes (case, target) for every agent.

    from medagent.eval.agent_eval import evaluate_agents
    df = evaluate_agents({"dataset": "mni-lesion", "split": "test"}, ["expert", "oracle-box", "auto"], episodes=20)

Episode i is reset with the same seed for every agent, so each agent faces the same case and target and
the comparison is paired. Agents that read the ground truth (`Agent.uses_ground_truth`: the expert, the
oracle box) are flagged in the table so nobody mistakes them for policies.

On volumes an episode is a volume episode (`medagent.eval.agent_volumes`): the agent plays every slice holding
the episode's target, the final masks are reassembled on the volume's grid and 3D Dice, IoU, NSD and HD95 are
reported beside the per-slice means.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medagent.errors import ConfigError
from medagent.eval.agent_volumes import (VOLUME_METRICS, check_max_slices, draw_volume_target, is_volume_split,
                                         play_volume_unit)
from medagent.eval.progress import UnitProgress
from medagent.eval.resume import PARTIAL_NAME, UnitLog, open_run, roundtrip, seed_torch

#: A volume run's table of slice episodes, in its run folder beside cases.parquet.
SLICES_NAME = "slices.parquet"


def _agent(entry: Any, agent_kwargs: dict[str, dict[str, Any]] | None) -> tuple[str, Any]:
    """(name, Agent) of an `evaluate_agents` entry: an `Agent` object, or a name for `make_agent`."""
    from medagent.agents import Agent, make_agent

    if isinstance(entry, Agent):
        return str(entry.name), entry
    name = str(entry)
    kwargs = dict((agent_kwargs or {}).get(name, {}))
    return name, make_agent(kwargs.pop("agent", name), **kwargs)


def _play(env: Any, agent: Any, name: str, index: int, episode_seed: int, record: bool) -> dict[str, Any]:
    """One episode, the unit of an agent evaluation: {"row": the table's row, "recording": the turn-by-turn
    record (`medagent.eval.recording`, PNGs as base64) or None}."""
    from medagent.agents import run_episode
    from medagent.eval.recording import record_episode, recording_to_json

    start = time.perf_counter()
    result = run_episode(env, agent, seed=episode_seed)
    seconds = time.perf_counter() - start
    episode = env.unwrapped.episode
    records = episode.trace.calls
    row = {
        "agent": name, "dataset": env.dataset.info.name,
        "modality": episode.case.modality or env.dataset.info.modality, "episode": index, "case_id": episode.case.id,
        "subject": episode.case.subject,
        "instruction": result.reset_info.get("instruction") or (result.steps[0].observation["instruction"] if result.steps else ""),
        "dice": result.dice, "iou": result.iou, "turns": result.turns, "episode_score": result.score,
        "oracle": bool(getattr(agent, "uses_ground_truth", False)),
        "calls": len(records), "invalid": sum(r.outcome == "invalid" for r in records),
        "failed": sum(r.outcome == "failed" for r in records), "format_failed": bool(episode.trace.format_failed),
        "tool_counts": json.dumps(dict(Counter(r.name or "?" for r in records)), sort_keys=True),
        "errors": json.dumps([line.split(" -> ", 1)[-1] for r, line in zip(records, episode.history)
                              if r.outcome in ("invalid", "failed")]),
        "dice_per_turn": json.dumps([round(float(r.dice), 6) for r in records]),
        "seconds": seconds,
    }
    recording = recording_to_json(record_episode(env, result, name, index)) if record else None
    return {"row": row, "recording": recording}


def evaluate_agents(env_settings: dict[str, Any], agents: list[Any], episodes: int = 20, seed: int = 0,
                    agent_kwargs: dict[str, dict[str, Any]] | None = None, tools: dict[str, Any] | None = None,
                    record_turns: int = 0, record_dir: str | Path | None = None, progress: bool = True,
                    partial: str | Path | None = None, volumes: bool | None = None, max_slices: int | None = None,
                    tolerance_mm: float = 1.0) -> Any:
    """One row per (agent, episode): dataset, modality, case, subject, instruction, dice, iou, turns, episode_score,
    oracle, calls, invalid (calls the parser or validator rejected), failed (tool errors), format_failed (the
    episode ended on a message with no parseable call), tool_counts (JSON: tool name -> calls), errors (JSON: the
    env's answers to the invalid and failed calls, in order), dice_per_turn (JSON: Dice after each call),
    seconds (wall time).

    On volumes an episode is a volume episode (`medagent.eval.agent_volumes`): one env episode per slice holding
    the target, the masks reassembled on the volume's grid; its row has the means over slices of dice, iou, turns
    and episode_score, the sums of calls, invalid, failed, format_failed (a count), tool_counts and seconds, and
    dice_3d, iou_3d, nsd_3d, hd95_3d (mm), target_class, target_instance, slice_axis, slices (played),
    slices_total (holding the target), slice_indices (JSON), gt_voxels, pred_voxels. The slice episodes' own rows
    are in ``df.attrs["slices"]`` (a list of dicts; [] for 2D runs).

    Args:
        env_settings: `EnvConfig` fields (dataset, split, image_size, max_turns, ...).
        agents: agent names (`medagent.agents.make_agent`) or `Agent` objects (named by their `name`).
        episodes: episodes per agent.
        seed: base seed; episode i uses the same seed for every agent, a function of (seed, i) only (so an
            episode does not depend on the ones played before it, and a resumed run plays it identically).
        agent_kwargs: per-agent keyword arguments (e.g. {"vlm": {"model": "..."}}); an entry's "agent" key makes
            the name a label for another agent (e.g. {"sft": {"agent": "policy", "policy": "runs/sft/model"}}).
        tools: tool objects to use instead of the registry (see `InteractiveSegEnv(tools=...)`).
        record_turns: keep the first `record_turns` episodes of every agent turn by turn (the image after each
            call, the call, its answer, reward terms; `medagent.eval.recording`) for the report's trajectory viewer.
        record_dir: where those go (``<record_dir>/episodes/``); required when `record_turns` > 0.
        progress: show a progress bar with the agent's running mean Dice and an ETA (only on a terminal).
        partial: a JSONL file that records each finished episode (`medagent.eval.resume.UnitLog`, unit
            "<agent>/<episode>", a whole volume episode on volumes); episodes already in it are not played again,
            and an agent whose episodes are all there is not even built.
        volumes: play volume episodes (True), or one random labelled slice per episode as before (False); None
            decides from the split (`agent_volumes.is_volume_split`: its cases are 3D).
        max_slices: a volume episode plays at most this many slices (a contiguous run around the target's
            largest slice; its 3D metrics are over that slab); None plays them all.
        tolerance_mm: NSD tolerance of the 3D metrics.
    """
    import pandas as pd

    from medagent.agents import Agent
    from medagent.envs import InteractiveSegEnv
    from medagent.eval.recording import recording_from_json, write_recordings

    if record_turns < 0:
        raise ConfigError(f"record_turns must be >= 0, got {record_turns}")
    if record_turns and record_dir is None:
        raise ConfigError("record_turns needs record_dir (the folder that receives episodes/)")
    env = InteractiveSegEnv(tools=tools, **env_settings)
    check_max_slices(max_slices)  # before any episode
    volume_mode = is_volume_split(env) if volumes is None else bool(volumes)
    drawn: dict[int, Any] = {}  # episode index -> its (case index, target): the same for every agent
    # SeedSequence(seed).generate_state(n)[i] is the same for every n >= i + 1: episode i's seed is (seed, i)'s
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(episodes)]
    log = UnitLog(partial) if partial is not None else None
    rows, slice_rows, recorded = [], [], []
    figure = "3D Dice" if volume_mode else "Dice"
    with UnitProgress("eval agents", total=len(agents) * episodes, figure=figure, enabled=progress) as bar:
        for entry in agents:
            name = str(entry.name) if isinstance(entry, Agent) else str(entry)
            bar.reset_mean(f"eval agent {name}")
            agent = None  # built at its first episode still to play: a resumed run may not need it at all
            for index, episode_seed in enumerate(seeds):
                key = f"{name}/{index}"
                record = log.get(key) if log is not None else None
                if record is None:
                    if agent is None:
                        name, agent = _agent(entry, agent_kwargs)
                    seed_torch(seed, index)  # tools drawing from torch's global generator: same per episode
                    if volume_mode:
                        if index not in drawn:
                            drawn[index] = draw_volume_target(env, episode_seed)
                        record = roundtrip(play_volume_unit(env, agent, name, index, episode_seed, drawn[index], seed=seed,
                                                            max_slices=max_slices, tolerance_mm=tolerance_mm,
                                                            record=index < record_turns))
                    else:
                        record = roundtrip(_play(env, agent, name, index, episode_seed, record=index < record_turns))
                    if log is not None:
                        log.add(key, record)
                    bar.advance(record["row"].get("dice_3d", record["row"]["dice"]))
                else:
                    bar.restored(record["row"].get("dice_3d", record["row"]["dice"]))
                rows.append(record["row"])
                slice_rows += record.get("slices", [])
                if record["recording"] is not None:
                    recorded.append(recording_from_json(record["recording"]))
    env.close()
    if recorded:
        write_recordings(record_dir, recorded)
    df = pd.DataFrame(rows)
    df.attrs["slices"] = slice_rows
    return df


def _skipped_files(env_settings: dict[str, Any]) -> list[dict[str, str]]:
    """The files a user folder opened with `skip_bad` left out, and why ([] otherwise): a second scan of the folder's
    index (cases load lazily, so this reads no images), the same the env's own open saw."""
    if not (env_settings.get("data_dir") and env_settings.get("skip_bad")):
        return []
    from medagent.data.layouts import load_folder

    return [{"path": s.path, "reason": s.reason} for s in load_folder(env_settings["data_dir"], skip_bad=True).skipped]


def card_rows(model: Any, env_settings: dict[str, Any], agents: Any, episodes: int, seed: int) -> list[dict[str, Any]]:
    """Mean Dice, episode score, turns and invalid-action rate ((invalid calls + format failures) / (calls +
    format failures)) per agent on the same episodes; the agent "policy" plays the model at `model`.
    One dict per agent, in the order given (a model card's table)."""
    df = evaluate_agents(env_settings, list(agents), episodes=episodes, seed=seed, agent_kwargs={"policy": {"policy": str(model)}})
    rows = []
    for agent, g in df.groupby("agent", sort=False):
        attempts = g["calls"].sum() + g["format_failed"].sum()
        rows.append({"agent": agent, "dice": float(g["dice"].mean()), "episode_score": float(g["episode_score"].mean()),
                     "turns": float(g["turns"].mean()),
                     "invalid_rate": float((g["invalid"].sum() + g["format_failed"].sum()) / max(attempts, 1))})
    return rows


def agents_table(df: Any, title: str | None = None) -> Any:
    """A rich table: per agent and dataset, mean Dice [95% bootstrap CI over subjects], IoU, turns, episode score."""
    from rich.table import Table

    from medagent.eval.results import bootstrap_ci

    volumes = "dice_3d" in df.columns  # volume episodes: the 3D scores beside the per-slice means
    table = Table(title=title)
    columns = ["agent", "dataset", "episodes", "Dice [95% CI]", "IoU", "turns", "episode score", "reads GT"]
    if volumes:
        columns[3:5] = ["3D Dice [95% CI]", "3D NSD", "3D HD95 mm", "slice Dice", "slice IoU"]
    for col in columns:
        table.add_column(col, justify="left" if col in ("agent", "dataset") else "right")
    for (agent, dataset), group in df.groupby(["agent", "dataset"], sort=False):
        mean, lo, hi = bootstrap_ci(group["dice_3d" if volumes else "dice"].to_numpy(), groups=group["subject"].to_numpy())
        cells = [f"{mean:.3f} [{lo:.3f}, {hi:.3f}]", f"{group['iou'].mean():.3f}"]
        if volumes:
            cells = [cells[0], f"{group['nsd_3d'].mean():.3f}", f"{group['hd95_3d'].mean():.2f}",
                     f"{group['dice'].mean():.3f}", cells[1]]
        table.add_row(agent, dataset, str(len(group)), *cells, f"{group['turns'].mean():.2f}",
                      f"{group['episode_score'].mean():.3f}", "yes" if group["oracle"].iloc[0] else "no")
    return table


def _env_config(env_settings: dict[str, Any]) -> dict[str, Any]:
    """The env settings as config.json stores them: plain values, a `Dataset` object by its name."""
    out = {}
    for key, value in env_settings.items():
        if isinstance(value, (str, int, float, bool, type(None))):
            out[key] = value
        elif getattr(getattr(value, "info", None), "name", None) is not None:  # a Dataset: its repr holds an address
            out[key] = f"dataset {value.info.name}"
    return out


def run_agent_eval(env_settings: dict[str, Any], agents: list[Any], episodes: int = 20, seed: int = 0,
                   agent_kwargs: dict[str, dict[str, Any]] | None = None, json_out: str | None = None,
                   run_root: str | Path = "medagent-runs", record_turns: int = 2,
                   tools: dict[str, Any] | None = None, progress: bool = True, resume: str | Path | None = None,
                   on_run: Callable[[Path], None] | None = None, volumes: bool | None = None,
                   max_slices: int | None = None, tolerance_mm: float = 1.0) -> tuple[Any, Any]:
    """`evaluate_agents` plus a run folder: cases.parquet, results.json (summary per agent with bootstrap CIs),
    the first `record_turns` episodes of every agent turn by turn (episodes/) and report.html
    (`medagent.eval.report`, with their trajectory viewer).

    On volumes (`volumes`, `max_slices`, `tolerance_mm`: see `evaluate_agents`) cases.parquet has one row per
    volume episode with the 3D columns, slices.parquet one row per slice episode, results.json summarises
    dice_3d, iou_3d, nsd_3d and hd95_3d too and says how under "volume", and the report adds a 3D table; the
    recorded episode of a volume is its slice with the most target voxels.

    Finished episodes are recorded in the run folder's partial.jsonl while the run goes (removed once
    results.json is written); `resume` (the run folder of an interrupted agent evaluation with the same
    settings, `medagent.eval.resume.open_run`) continues it: its finished episodes are read back, not played
    again, and the results equal an uninterrupted run's. `on_run(run_folder)` is called once the folder
    exists (the CLI prints it, so a killed run can be resumed). Injected `tools` are not part of the saved
    settings: resume with the same ones.

    Returns (results.json path, per-episode DataFrame); the report is ``report.html`` beside results.json.
    """
    from medagent.eval.report import write_report
    from medagent.eval.results import summarize

    check_max_slices(max_slices)  # before the run folder exists
    names = [str(getattr(a, "name", a)) for a in agents]
    config = {"env": _env_config(env_settings), "agents": names, "episodes": episodes, "record_turns": record_turns,
              "agent_kwargs": {n: (agent_kwargs or {})[n] for n in names if n in (agent_kwargs or {})}}
    # the volume settings only when set, so a 2D run's config.json (and resuming one) is as before
    config.update({k: v for k, v in (("volumes", volumes), ("max_slices", max_slices)) if v is not None})
    if tolerance_mm != 1.0:
        config["tolerance_mm"] = tolerance_mm
    run = open_run("eval-agent", config, seed, root=run_root, resume=resume)
    if on_run is not None:
        on_run(run.path)
    df = evaluate_agents(env_settings, agents, episodes=episodes, seed=seed, agent_kwargs=agent_kwargs, tools=tools,
                         record_turns=min(record_turns, episodes), record_dir=run.path, progress=progress,
                         partial=run.file(PARTIAL_NAME), volumes=volumes, max_slices=max_slices, tolerance_mm=tolerance_mm)
    slices = df.attrs.pop("slices", [])
    table = df.rename(columns={"agent": "method"}).assign(class_index=0, class_name="episode target")
    summary = summarize(table, seed=seed, metrics=["dice", "iou", "turns", "episode_score", *VOLUME_METRICS])
    extra = None
    if "dice_3d" in table.columns:
        import pandas as pd

        pd.DataFrame(slices).to_parquet(run.file(SLICES_NAME), index=False)
        extra = {"volume": {"slice_axis": "coarsest spacing (Case.default_slice_axis)", "max_slices": max_slices,
                            "tolerance_mm": tolerance_mm, "slices": SLICES_NAME,
                            "aggregation": "dice, iou, turns, episode_score: means over a volume's slice episodes; "
                                           "calls, invalid, failed, format_failed, seconds: sums; *_3d: the "
                                           "reassembled mask on the volume's grid"}}
    path = run.write_results(summary, cases=table, extra=extra, skipped=_skipped_files(env_settings))
    run.file(PARTIAL_NAME).unlink(missing_ok=True)  # cases.parquet and episodes/ now hold every episode
    write_report(run.path)
    if json_out:
        from medagent.eval.results import copy_results

        copy_results(path, json_out)
    return path, df
