"""The main job on the embedded default (`medagent demo`, `make demo`).

Runs offline on a CPU, end to end, with what medagent ships: the builtin datasets, the tools with their
shipped tiny weights, the metrics and the results files. Each section runs only the parts that are
available; a tool without shipped weights is reported as such, never faked. Everything it measures lands
in one run folder (results.json, cases.parquet, overlay PNGs, the CTTA and agent evaluations' own run folders,
the small loop's trajectories, SFT and GRPO runs) and one self-contained report.html over all of it
(`medagent.eval.report`), whose path is printed at the end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: (dataset, automatic tools to score on it). The intensity baseline is the floor of every table.
AUTOMATIC_PLAN: list[tuple[str, list[str]]] = [
    ("mni-tissue", ["otsu", "unet", "ifunet", "allukan"]),
    ("ct-phantom", ["unet"]),
    ("nuclei", ["otsu", "unet"]),
]
#: (dataset, promptable tool) scored with one GT box per component.
PROMPTED_PLAN: list[tuple[str, str]] = [("mni-lesion", "sam"), ("nuclei", "sam")]


def _try_tool(name: str, dataset: str, console: Any):
    """Build a tool with its shipped weights for `dataset`, or say why it cannot run here (None)."""
    from medagent.errors import MedagentError
    from medagent.tools import load_tool

    try:
        return load_tool(name, dataset=dataset)
    except MedagentError as exc:
        console.print(f"  [yellow]skipped[/] {name} on {dataset}: {exc}")
        return None


def run_demo(out_root: str | Path = "medagent-runs", quick: bool = False, console: Any = None, seed: int = 0) -> Path:
    """Run the demo and return its run folder.

    Args:
        out_root: parent folder of the run folder.
        quick: score fewer cases (6 instead of 24 per dataset and tool).
        console: a rich Console (default: a new one).
        seed: seed for case sampling and bootstrap intervals.
    """
    import pandas as pd
    from rich.console import Console

    from medagent.errors import MedagentError
    from medagent.data.builtin import load_builtin
    from medagent.data.io import save_overlay_png
    from medagent.eval.catalog import datasets_table, tools_table
    from medagent.eval.report import write_report
    from medagent.eval.results import summarize
    from medagent.eval.runs import RunFolder
    from medagent.eval.table import summary_table
    from medagent.eval.tool_eval import evaluate_tool

    console = console or Console()
    max_cases = 6 if quick else 24
    run = RunFolder.create("demo", config={"quick": quick, "max_cases": max_cases}, seed=seed, root=out_root)

    console.rule("[bold]1. Builtin datasets")
    console.print(datasets_table())
    console.rule("[bold]2. Tools")
    console.print(tools_table())

    frames = []
    console.rule("[bold]3. Automatic segmenters against the intensity baseline (test split)")
    for dataset_name, tool_names in AUTOMATIC_PLAN:
        dataset = load_builtin(dataset_name, seed=seed)
        for tool_name in tool_names:
            tool = _try_tool(tool_name, dataset_name, console)
            if tool is None:
                continue
            df = evaluate_tool(tool, dataset, split="test", max_cases=max_cases, seed=seed, progress=False)
            df["method"] = tool_name
            frames.append(df)
            _save_examples(run.path / "overlays", tool, dataset, tool_name, save_overlay_png)

    console.rule("[bold]4. Promptable segmentation with one ground-truth box per object (test split)")
    for dataset_name, tool_name in PROMPTED_PLAN:
        tool = _try_tool(tool_name, dataset_name, console)
        if tool is None:
            continue
        dataset = load_builtin(dataset_name, seed=seed)
        df = evaluate_tool(tool, dataset, split="test", prompt="box", max_cases=max_cases, seed=seed, progress=False)
        df["method"] = f"{tool_name}+box"
        frames.append(df)

    if frames:
        cases = pd.concat(frames, ignore_index=True)
        summary = summarize(cases, seed=seed)
        console.print(summary_table(summary, title="Per-class metrics, means with 95% bootstrap intervals over subjects"))
        results = run.write_results(summary, cases=cases)
        console.print(f"results: {results}")

    sections = [
        ("5. Contour refiner: coarse masks (perturbed ground truth) before and after refinement", _refiner_section),
        ("6. Continual test-time adaptation over a multi-centre stream (nuclei)", _ctta_section),
        ("7. Agents in the interactive environment (mni-lesion, the same episodes for every agent)", _agents_section),
        ("8. The policy: the shipped tiny VLM policy, then the loop (trajectories -> SFT -> GRPO -> play)", _policy_section),
    ]
    for title, section in sections:
        console.rule(f"[bold]{title}")
        try:
            section(run, console, quick, seed)
        except MedagentError as exc:  # a missing tool or weights: say so, keep going
            console.print(f"  [yellow]skipped[/]: {exc}")
    report = write_report(run.path)
    console.print(f"run folder: {run.path}")
    console.print(f"report: {report}")
    return run.path


def _refiner_section(run: Any, console: Any, quick: bool, seed: int) -> None:
    """Boundary F (2 px) and Dice of coarse vs refined masks on held-out lesion and nuclei cases."""
    import numpy as np
    from rich.table import Table

    from medagent.data.builtin import load_builtin
    from medagent.metrics import boundary_f1, dice
    from medagent.tools import load_tool
    from medagent.tools.refiner.perturb import perturb_mask

    tool = load_tool("refine")
    rng = np.random.default_rng(seed)
    table = Table(title="refine (4 diffusion steps) on perturbed ground truth")
    for col in ("dataset", "cases", "BF@2 coarse", "BF@2 refined", "Dice coarse", "Dice refined", "ms per image"):
        table.add_column(col, justify="left" if col == "dataset" else "right")
    import time

    for name in ("mni-lesion", "nuclei"):
        cases = load_builtin(name, seed=seed).cases("test")
        scores, seconds = [], 0.0
        for case in list(cases)[: 4 if quick else 12]:
            gt = (case.label > 0).astype(np.uint8)
            if gt.sum() < 16:
                continue
            coarse = perturb_mask(gt, rng)
            start = time.perf_counter()
            refined = tool.predict(case, mask=coarse).mask
            seconds += time.perf_counter() - start
            scores.append((boundary_f1(coarse, gt, 2), boundary_f1(refined, gt, 2), dice(coarse, gt), dice(refined, gt)))
        if scores:
            m = np.mean(scores, axis=0)
            table.add_row(name, str(len(scores)), *(f"{v:.3f}" for v in m), f"{1000 * seconds / len(scores):.0f}")
    console.print(table)


def _ctta_section(run: Any, console: Any, quick: bool, seed: int) -> None:
    from medagent.eval.ctta_report import ctta_table
    from medagent.eval.ctta import evaluate_ctta

    methods = ["noadapt", "tent", "mgipt-reduced"] if quick else ["noadapt", "tent", "cotta", "vptta", "mgipt-reduced"]
    report = evaluate_ctta("nuclei", methods, rounds=1 if quick else 2, seed=seed, max_cases=2 if quick else 6,
                           run_root=run.path, forgetting=not quick, progress=False)
    console.print(ctta_table(report.ctta, methods, title="Dice on the stream B -> C -> D -> E, no labels, batch 1"))


def _agents_section(run: Any, console: Any, quick: bool, seed: int) -> None:
    from medagent.eval.agent_eval import agents_table, run_agent_eval

    settings = {"dataset": "mni-lesion", "split": "test", "image_size": 256}
    _, df = run_agent_eval(settings, ["expert", "expert-box", "oracle-box", "mean-box", "auto", "random"],
                           episodes=4 if quick else 16, seed=seed, run_root=run.path, record_turns=1 if quick else 2)
    df.to_parquet(run.path / "agents.parquet")
    console.print(agents_table(df, title="Agents (reads GT = oracle or expert, an upper reference, not a policy)"))
    console.print("  expert: the trajectory generator's mix (30% of episodes start from a click only); "
                  "expert-box: every episode starts from a box, then corrective clicks.")


def _policy_section(run: Any, console: Any, quick: bool, seed: int) -> None:
    import functools
    import json

    import datasets

    from medagent.envs import InteractiveSegEnv
    from medagent.errors import CheckpointError
    from medagent.eval.agent_eval import agents_table, evaluate_agents, run_agent_eval
    from medagent.train.grpo import GRPORunConfig, run_grpo
    from medagent.train.sft import SFTRunConfig, run_sft
    from medagent.trajectories import GenerateConfig, export_trl, generate
    from medagent.weights import weights_path

    datasets.disable_progress_bars()
    test = {"dataset": "mni-lesion", "split": "test", "image_size": 128}
    try:
        shipped = weights_path("policy-tiny")
    except CheckpointError as exc:
        console.print(f"  [yellow]skipped[/] the shipped policy: {exc}")
        shipped = None
    if shipped is not None:
        _, df = run_agent_eval(test, ["policy", "mean-box", "auto", "ranked-regions", "expert-regions"],
                               episodes=8 if quick else 30, seed=seed, run_root=run.path, record_turns=1 if quick else 2)
        df.to_parquet(run.path / "policy.parquet")
        console.print(agents_table(df, title="The shipped tiny policy (grounding -> SFT -> GRPO) against baselines, "
                                             "same episodes; ranked-regions is its teacher (no GT), expert-regions reads GT"))
    # The loop itself, small: expert trajectories -> SFT -> GRPO -> the policy plays.
    settings = {"dataset": "mni-lesion", "split": "train", "image_size": 128}
    episodes = 8 if quick else 24
    trajectories = generate(functools.partial(InteractiveSegEnv, **settings), run.path / "trajectories",
                            GenerateConfig(agent="ranked-regions", episodes=episodes, seed=seed, shard_size=8),
                            env_description=settings)
    export_trl(trajectories, run.path / "sft-data", val_fraction=0.0)
    steps = 10 if quick else 40
    start = str(shipped) if shipped is not None else None
    sft_dir = run_sft(SFTRunConfig(data=str(run.path / "sft-data"), model=start, output_dir=str(run.path / "sft"),
                                   max_steps=steps, learning_rate=1e-4 if start else 1e-3, num_threads=1, seed=seed,
                                   eval_split=None, per_device_train_batch_size=4))
    losses = [v for v in (json.loads(line).get("loss") for line in (sft_dir / "metrics.jsonl").read_text().splitlines())
              if v is not None]
    grpo_dir = run_grpo(GRPORunConfig(model=str(sft_dir / "model"), env=settings, prompts=8, output_dir=str(run.path / "grpo"),
                                      max_steps=2, num_generations=4, per_device_train_batch_size=4,
                                      max_completion_length=512, learning_rate=1e-5, num_threads=1, progress=False))
    rewards = [json.loads(line).get("reward") for line in (grpo_dir / "metrics.jsonl").read_text().splitlines()]
    rewards = [v for v in rewards if v is not None]
    console.print(f"  {episodes} ranked-regions episodes -> SFT {steps} steps (loss {losses[0]:.2f} -> {losses[-1]:.2f}) "
                  f"-> GRPO 2 steps in the env (mean reward {sum(rewards) / max(len(rewards), 1):.3f})")
    df = evaluate_agents(test, ["vlm"], episodes=2 if quick else 8, seed=seed,
                         agent_kwargs={"vlm": {"model": str(grpo_dir / "model")}})
    console.print(agents_table(df, title="That policy after the small loop (a pipeline check, not a result)"))


def _save_examples(folder: Path, tool: Any, dataset: Any, tool_name: str, save_overlay_png: Any, n: int = 2) -> None:
    """Overlay PNGs of the tool's prediction next to the ground truth for the first `n` test cases."""
    cases = dataset.cases("test")
    for index in range(min(n, len(cases))):
        case = cases[index]
        prediction = tool.predict(case)
        stem = f"{dataset.info.name}-{index}"
        save_overlay_png(case, prediction.mask, folder / f"{stem}-{tool_name}.png")
        gt_path = folder / f"{stem}-ground-truth.png"
        if not gt_path.exists():
            save_overlay_png(case, case.label, gt_path)
