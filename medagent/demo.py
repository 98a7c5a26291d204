"""The main job on the embedded default (`medagent demo`, `make demo`).

Runs offline on a CPU, end to end, with what medagent ships: the builtin datasets, the tools with their
shipped tiny weights, the metrics and the results files. Each section runs only the parts that are
available; a tool without shipped weights is reported as such, never faked. Everything it measures lands
in one run folder (results.json, cases.parquet, overlay PNGs).
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

    from medagent.data.builtin import load_builtin
    from medagent.data.io import save_overlay_png
    from medagent.eval.catalog import datasets_table, tools_table
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
    console.print(f"run folder: {run.path}")
    return run.path


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
