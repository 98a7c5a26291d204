"""Evaluate agents in the interactive environment: the same episodes (case, target) for every agent.

    from medagent.eval.agent_eval import evaluate_agents
    df = evaluate_agents({"dataset": "mni-lesion", "split": "test"}, ["expert", "oracle-box", "auto"], episodes=20)

Episode i is reset with the same seed for every agent, so each agent faces the same case and target and
the comparison is paired. Agents that read the ground truth (`Agent.uses_ground_truth`: the expert, the
oracle box) are flagged in the table so nobody mistakes them for policies.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medagent.errors import ConfigError


def evaluate_agents(env_settings: dict[str, Any], agents: list[Any], episodes: int = 20, seed: int = 0,
                    agent_kwargs: dict[str, dict[str, Any]] | None = None, tools: dict[str, Any] | None = None,
                    record_turns: int = 0, record_dir: str | Path | None = None) -> Any:
    """One row per (agent, episode): dataset, modality, case, subject, instruction, dice, iou, turns, episode_score,
    oracle, calls, invalid (calls the parser or validator rejected), failed (tool errors), format_failed (the
    episode ended on a message with no parseable call), tool_counts (JSON: tool name -> calls), errors (JSON: the
    env's answers to the invalid and failed calls, in order), dice_per_turn (JSON: Dice after each call),
    seconds (wall time).

    Args:
        env_settings: `EnvConfig` fields (dataset, split, image_size, max_turns, ...).
        agents: agent names (`medagent.agents.make_agent`) or `Agent` objects (named by their `name`).
        episodes: episodes per agent.
        seed: base seed; episode i uses the same seed for every agent.
        agent_kwargs: per-agent keyword arguments (e.g. {"vlm": {"model": "..."}}); an entry's "agent" key makes
            the name a label for another agent (e.g. {"sft": {"agent": "policy", "policy": "runs/sft/model"}}).
        tools: tool objects to use instead of the registry (see `InteractiveSegEnv(tools=...)`).
        record_turns: keep the first `record_turns` episodes of every agent turn by turn (the image after each
            call, the call, its answer, reward terms; `medagent.eval.recording`) for the report's trajectory viewer.
        record_dir: where those go (``<record_dir>/episodes/``); required when `record_turns` > 0.
    """
    import pandas as pd

    from medagent.agents import Agent, make_agent, run_episode
    from medagent.envs import InteractiveSegEnv
    from medagent.eval.recording import record_episode, write_recordings

    if record_turns < 0:
        raise ConfigError(f"record_turns must be >= 0, got {record_turns}")
    if record_turns and record_dir is None:
        raise ConfigError("record_turns needs record_dir (the folder that receives episodes/)")
    env = InteractiveSegEnv(tools=tools, **env_settings)
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(episodes)]
    rows, recorded = [], []
    for entry in agents:
        if isinstance(entry, Agent):
            name, agent = str(entry.name), entry
        else:
            name = str(entry)
            kwargs = dict((agent_kwargs or {}).get(name, {}))
            agent = make_agent(kwargs.pop("agent", name), **kwargs)
        for index, episode_seed in enumerate(seeds):
            start = time.perf_counter()
            result = run_episode(env, agent, seed=episode_seed)
            seconds = time.perf_counter() - start
            episode = env.unwrapped.episode
            records = episode.trace.calls
            if index < record_turns:
                recorded.append(record_episode(env, result, name, index))
            rows.append({
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
            })
    env.close()
    if recorded:
        write_recordings(record_dir, recorded)
    return pd.DataFrame(rows)


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

    table = Table(title=title)
    for col in ("agent", "dataset", "episodes", "Dice [95% CI]", "IoU", "turns", "episode score", "reads GT"):
        table.add_column(col, justify="left" if col in ("agent", "dataset") else "right")
    for (agent, dataset), group in df.groupby(["agent", "dataset"], sort=False):
        mean, lo, hi = bootstrap_ci(group["dice"].to_numpy(), groups=group["subject"].to_numpy())
        table.add_row(agent, dataset, str(len(group)), f"{mean:.3f} [{lo:.3f}, {hi:.3f}]",
                      f"{group['iou'].mean():.3f}", f"{group['turns'].mean():.2f}",
                      f"{group['episode_score'].mean():.3f}", "yes" if group["oracle"].iloc[0] else "no")
    return table


def run_agent_eval(env_settings: dict[str, Any], agents: list[Any], episodes: int = 20, seed: int = 0,
                   agent_kwargs: dict[str, dict[str, Any]] | None = None, json_out: str | None = None,
                   run_root: str | Path = "medagent-runs", record_turns: int = 2,
                   tools: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """`evaluate_agents` plus a run folder: cases.parquet, results.json (summary per agent with bootstrap CIs),
    the first `record_turns` episodes of every agent turn by turn (episodes/) and report.html
    (`medagent.eval.report`, with their trajectory viewer).

    Returns (results.json path, per-episode DataFrame); the report is ``report.html`` beside results.json.
    """

    from medagent.eval.results import summarize
    from medagent.eval.runs import RunFolder

    from medagent.eval.report import write_report

    names = [str(getattr(a, "name", a)) for a in agents]
    config = {"env": {k: v for k, v in env_settings.items() if isinstance(v, (str, int, float, bool, type(None)))},
              "agents": names, "episodes": episodes, "record_turns": record_turns}
    run = RunFolder.create("eval-agent", config=config, seed=seed, root=run_root)
    df = evaluate_agents(env_settings, agents, episodes=episodes, seed=seed, agent_kwargs=agent_kwargs, tools=tools,
                         record_turns=min(record_turns, episodes), record_dir=run.path)
    table = df.rename(columns={"agent": "method"}).assign(class_index=0, class_name="episode target")
    summary = summarize(table, seed=seed, metrics=["dice", "iou", "turns", "episode_score"])
    path = run.write_results(summary, cases=table)
    write_report(run.path)
    if json_out:
        from medagent.eval.results import copy_results

        copy_results(path, json_out)
    return path, df
