"""The trained policy against baselines and references on the same seeded episodes, plus its costs.

    python bench/bench_policy.py                       # shipped policy + the recipe folder's stages
    python bench/bench_policy.py --recipe medagent-runs/policy --episodes 60 --quick

Part 1 (quality), on the test splits of mni-lesion, nuclei and ct-phantom, the same episodes for every agent:
MeanBox, Auto, the blob heuristic, ranked-regions (the policy's teacher: a rule on the tool answer, no GT), the
grounding-only model, SFT, SFT+GRPO (the shipped policy), and the references OracleBox, expert-regions (the same
moves choosing with the GT) and the hybrid expert. Columns: final Dice, episode
score, mean turns, invalid-action rate ((invalid calls + format failures) / (calls + format failures)), tool
use; then paired bootstrap 95% intervals (over subjects) of SFT+GRPO - SFT and of the policy - MeanBox / Auto.
Part 2 (rollout throughput): 8 episodes played one env at a time vs all 8 envs batched into one `generate`
per turn (tokens/s, episodes/s). Part 3: seconds per grounding / SFT / GRPO step and peak memory, each measured
in a fresh subprocess with the shipped policy's shapes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

DATASETS = ("mni-lesion", "nuclei", "ct-phantom")


def quality(args: argparse.Namespace) -> None:
    import pandas as pd

    from medagent.eval.agent_eval import evaluate_agents
    from medagent.eval.results import bootstrap_ci
    from medagent.weights import weights_path

    recipe = Path(args.recipe)
    models = {"policy": str(weights_path("policy-tiny"))}
    for label, folder in (("grounding", "grounding"), ("sft", "sft")):
        if (recipe / folder / "model" / "config.json").exists():
            models[label] = str(recipe / folder / "model")
        else:
            print(f"(no {recipe / folder / 'model'}: the {label} row is skipped; run `medagent train policy --out {recipe}`)")
    agents = ["mean-box", "auto", "blob", "ranked-regions", *[m for m in ("grounding", "sft") if m in models], "policy",
              "oracle-box", "expert-regions", "expert"]
    kwargs = {name: {"agent": "policy", "policy": path} for name, path in models.items()}
    frames = []
    for dataset in args.datasets:
        env = {"dataset": dataset, "split": "test", "image_size": args.image_size, "max_turns": 5}
        started = time.perf_counter()
        df = evaluate_agents(env, agents, episodes=args.episodes, seed=args.seed, agent_kwargs=kwargs)
        print(f"{dataset}: {time.perf_counter() - started:.0f} s")
        frames.append(df)
    df = pd.concat(frames, ignore_index=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    df.to_parquet(Path(args.out) / "bench_policy_cases.parquet")

    print("\n## Agents on the same episodes (test splits)\n")
    print("| dataset | agent | Dice | episode score | turns | invalid rate | tools (calls per episode) | reads GT |")
    print("|---|---|---|---|---|---|---|---|")
    for (dataset, agent), g in df.groupby(["dataset", "agent"], sort=False):
        denominator = g["calls"].sum() + g["format_failed"].sum()
        invalid = (g["invalid"].sum() + g["format_failed"].sum()) / max(denominator, 1)
        counts: dict[str, float] = {}
        for text in g["tool_counts"]:
            for tool, n in json.loads(text).items():
                counts[tool] = counts.get(tool, 0) + n / len(g)
        tools = ", ".join(f"{k} {v:.2f}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
        print(f"| {dataset} | {agent} | {g['dice'].mean():.3f} | {g['episode_score'].mean():.3f} | {g['turns'].mean():.2f} "
              f"| {invalid:.1%} | {tools} | {'yes' if g['oracle'].iloc[0] else 'no'} |")

    print("\n## Why calls were invalid (learned agents; numbers replaced by N)\n")
    print("| dataset | agent | invalid or failed calls | most frequent answers (count) |")
    print("|---|---|---|---|")
    for (dataset, agent), g in df.groupby(["dataset", "agent"], sort=False):
        if agent not in models:
            continue
        reasons = Counter(re.sub(r"\b-?\d+(\.\d+)?\b", "N", text) for errors in g["errors"] for text in json.loads(errors))
        top = "; ".join(f"{text[:110]} ({n})" for text, n in reasons.most_common(3)) or "-"
        print(f"| {dataset} | {agent} | {sum(reasons.values())} | {top.replace('|', '/')} |")

    print("\n## Paired differences (95% bootstrap over subjects)\n")
    print("| dataset | difference | metric | mean [95% CI] |")
    print("|---|---|---|---|")
    pairs = [("policy", "mean-box"), ("policy", "auto"), ("policy", "ranked-regions"), ("policy", "sft")]
    for dataset, g in df.groupby("dataset", sort=False):
        by = {a: x.sort_values("episode") for a, x in g.groupby("agent")}
        for a, b in pairs:
            if a not in by or b not in by:
                continue
            for metric in ("dice", "episode_score"):
                diff = by[a][metric].to_numpy() - by[b][metric].to_numpy()
                mean, lo, hi = bootstrap_ci(diff, groups=by[a]["subject"].to_numpy(), seed=args.seed)
                label = "SFT+GRPO - SFT" if b == "sft" else f"policy - {b}"
                print(f"| {dataset} | {label} | {metric} | {mean:+.3f} [{lo:+.3f}, {hi:+.3f}] |")


def throughput(args: argparse.Namespace) -> None:
    import torch

    from medagent.agents import run_episode
    from medagent.agents.vlm import VLMPolicyAgent, play_batched
    from medagent.envs import InteractiveSegEnv
    from medagent.weights import weights_path

    agent = VLMPolicyAgent(weights_path("policy-tiny"), max_new_tokens=48)
    tok = agent.processor.tokenizer
    seeds = [int(s) for s in np.random.SeedSequence(args.seed).generate_state(8)]
    envs = [InteractiveSegEnv(dataset="mni-lesion", split="test", image_size=args.image_size) for _ in range(8)]
    for env in envs:  # warm the tools (loading is not rollout time)
        env.reset(seed=0)
        env.step('<tool_call>\n{"name": "auto_segment", "arguments": {"model": "unet"}}\n</tool_call>')
    results = {}
    with torch.inference_mode():
        start = time.perf_counter()
        single = [run_episode(envs[0], agent, seed=s) for s in seeds]
        results["one env at a time"] = (time.perf_counter() - start, single)
        start = time.perf_counter()
        batched = play_batched(envs, agent, seeds)
        results["8 envs batched"] = (time.perf_counter() - start, batched)
    print("\n## Rollout throughput (8 mni-lesion test episodes, shipped policy)\n")
    print("| mode | seconds | episodes/s | generated tokens/s | mean Dice |")
    print("|---|---|---|---|---|")
    rates = {}
    for mode, (seconds, played) in results.items():
        tokens = sum(len(tok(s.action, add_special_tokens=False)["input_ids"]) for r in played for s in r.steps)
        rates[mode] = tokens / seconds
        print(f"| {mode} | {seconds:.2f} | {len(played) / seconds:.2f} | {tokens / seconds:.1f} | "
              f"{np.mean([r.dice for r in played]):.3f} |")
    ratio = rates["8 envs batched"] / rates["one env at a time"]
    print(f"\nbatched / one at a time: {ratio:.2f}x tokens/s (goal >= 4x: {'met' if ratio >= 4 else 'not met'})")


STAGE_SCRIPT = """
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[2]))
stage, out = sys.argv[1], sys.argv[3]
from medagent.agents.vlm import policy_config
if stage == "grpo":
    from medagent.train.grpo import GRPORunConfig, run_grpo
    from medagent.weights import weights_path
    run = run_grpo(GRPORunConfig(model=str(weights_path("policy-tiny")), env={"dataset": "mni-lesion", "image_size": 128},
                                 prompts=16, output_dir=out, max_steps=4, num_generations=4, per_device_train_batch_size=8,
                                 max_completion_length=512, progress=False, save_model=False))
else:
    from medagent.train.sft import SFTRunConfig, run_sft
    from medagent.trajectories.prompts import GroundingConfig
    data = [] if stage == "grounding" else [sys.argv[4]]
    run = run_sft(SFTRunConfig(data=data, stage=stage, tiny=policy_config(), output_dir=out, max_steps=10, eval_split=None,
                               per_device_train_batch_size=8, save_model=False,
                               grounding=GroundingConfig(rows=80, image_size=128)))
logs = [json.loads(l) for l in open(f"{out}/metrics.jsonl")]
end = [l for l in logs if "train_runtime" in l][-1]
steps = max(l["step"] for l in logs)
print(json.dumps({"s_per_step": end["train_runtime"] / steps, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def costs(args: argparse.Namespace) -> None:
    import tempfile

    recipe = Path(args.recipe)
    sft_data = next((str(p) for p in sorted((recipe / "sft-data").glob("mni-lesion-*"))), None)
    print("\n## Seconds per step and peak memory (batch 8, fresh subprocess, 1 torch thread)\n")
    print("| stage | s / step | peak RSS (MB) |")
    print("|---|---|---|")
    for stage in ("grounding", "trajectories", "grpo"):
        if stage == "trajectories" and sft_data is None:
            print("| trajectories | (no recipe sft-data) | |")
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-c", STAGE_SCRIPT, stage, "1", str(Path(tmp) / "run"), sft_data or ""]
            out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            line = next((x for x in out.stdout.splitlines() if x.startswith("{")), None)
            if line is None:
                print(f"| {stage} | failed: {out.stderr.strip().splitlines()[-1][:120] if out.stderr.strip() else '?'} | |")
                continue
            got = json.loads(line)
            print(f"| {'SFT' if stage == 'trajectories' else stage} | {got['s_per_step']:.2f} | {got['peak_mb']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="medagent-runs/policy", help="the `medagent train policy` folder")
    parser.add_argument("--episodes", type=int, default=60, help="episodes per dataset (paired across agents)")
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="medagent-runs/bench", help="where bench_policy_cases.parquet goes")
    parser.add_argument("--quick", action="store_true", help="20 episodes, mni-lesion only, no cost part")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: quality, throughput, costs")
    args = parser.parse_args()
    args.datasets = ("mni-lesion",) if args.quick else tuple(d for d in args.datasets.split(",") if d)
    if args.quick:
        args.episodes = 20
    skip = set(args.skip.split(",")) | ({"costs"} if args.quick else set())
    import torch

    torch.set_num_threads(1)
    if "quality" not in skip:
        quality(args)
    if "throughput" not in skip:
        throughput(args)
    if "costs" not in skip:
        costs(args)


if __name__ == "__main__":
    main()
