"""Accuracy benchmark of the automatic segmenters, measured side by side in one run.

Intensity baseline (`otsu`) / UNet / IF-UNet / ALL U-KAN, each network trained with the same budget and
recipe (`medagent.train.shipped_segmenters`: steps, batch, crop, lr, augmentation, seed), for several seeds, on
- the mni-tissue test split (clean, centre "A"),
- the same test split at the shifted centres B-E, severity 3 (`medagent.data.shifts.shifted_dataset`),
- one other builtin task (default nuclei), trained and tested on its own splits.
Printed: per-class Dice, mean foreground Dice and mean HD95 (mm; NaN where a class is missing from one of
the masks is skipped) as mean +- std over seeds, and parameter counts. Classes are matched by name.

    python bench/bench_segmenters.py            # 3 seeds, each task's shipped unet recipe and its steps
    python bench/bench_segmenters.py --quick    # 1 seed, 60 steps, 12 test cases: a smoke run
    python bench/bench_segmenters.py --shipped  # no training: the shipped checkpoints vs otsu (the issue's goal)
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import numpy as np
import torch

from medagent.data.builtin import load_builtin
from medagent.data.case import labelled_2d
from medagent.data.shifts import shifted_dataset
from medagent.metrics import per_class
from medagent.tools import load_tool
from medagent.tools.segmenters import TOOL_CLASSES
from medagent.train.shipped_segmenters import SHIPPED_RECIPES, shipped_config
from medagent.train.tool_trainer import train_tool

NETWORKS = ("unet", "ifunet", "allukan")


def evaluate(tool, cases, class_names: dict[int, str]) -> dict[str, dict[str, float]]:
    """Mean Dice and HD95 per class name over `cases` (classes matched by name)."""
    tool_names = getattr(tool, "class_names", None) or tool.config.class_names
    by_name = {v: k for k, v in tool_names.items()}
    dice = {n: [] for c, n in class_names.items() if c}
    hd = {n: [] for c, n in class_names.items() if c}
    for case in cases:
        pred = tool.predict(case).mask
        for c, name in class_names.items():
            if c == 0:
                continue
            pc = by_name.get(name)
            pmask = (pred == pc) if pc is not None else np.zeros_like(pred, bool)
            m = per_class(pmask.astype(np.uint8), (case.label == c).astype(np.uint8), classes=[1], metrics=("dice", "hd95"),
                          spacing=case.spacing)[1]
            dice[name].append(m["dice"])
            hd[name].append(m["hd95"])
    out = {n: {"dice": float(np.mean(dice[n])), "hd95": float(np.nanmean(hd[n])) if np.isfinite(hd[n]).any() else float("nan")} for n in dice}
    out["mean"] = {"dice": float(np.mean([v["dice"] for v in out.values()])),
                   "hd95": float(np.nanmean([v["hd95"] for k, v in out.items() if k != "mean"]))}
    return out


def train(model: str, dataset: str, seed: int, steps: int | None, workdir: str):
    """Train one network with the shipped unet recipe of `dataset` (same budget for every model; `steps` None
    keeps the recipe's own)."""
    recipe = f"unet-{dataset}" if f"unet-{dataset}" in SHIPPED_RECIPES else "unet-mni-tissue"
    base = shipped_config(recipe, f"{workdir}/{model}-{dataset}-{seed}")
    steps = base.max_steps if steps is None else steps
    config = dataclasses.replace(base, model=model, dataset=dataset, seed=seed, max_steps=steps, val_every=max(steps // 4, 1), resume=False,
                                 model_config={k: v for k, v in base.model_config.items()})
    best = train_tool(config)
    return TOOL_CLASSES[model].from_pretrained(best)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 60 steps, 12 test cases, centres B and D")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the shipped unet recipe's max_steps of each task)")
    parser.add_argument("--other", default="nuclei", help="the other builtin task")
    parser.add_argument("--centres", default="B,C,D,E")
    parser.add_argument("--max-cases", type=int, default=0, help="test cases per condition (0 = all)")
    parser.add_argument("--shipped", action="store_true", help="score the shipped checkpoints instead of training")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.steps, args.max_cases, args.centres = "0", 60, 12, "B,D"
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()
    tissue = load_builtin("mni-tissue")
    conditions = {"mni-tissue A (clean)": tissue}
    for centre in args.centres.split(","):
        conditions[f"mni-tissue {centre} sev3"] = shifted_dataset(tissue, centre, severity=3, seed=0)
    other = load_builtin(args.other)
    tasks = {"mni-tissue": list(conditions), args.other: [f"{args.other} (clean)"]}
    conditions[f"{args.other} (clean)"] = other

    def cases_of(ds):
        cases = labelled_2d(ds.cases("test"))
        return cases[: args.max_cases] if args.max_cases else cases

    results: dict[tuple[str, str], list[dict]] = {}
    params: dict[tuple[str, str], int] = {}
    dataset_of: dict[str, str] = {}
    for dataset, conds in tasks.items():
        baseline = load_tool("otsu", dataset=dataset)
        for cond in conds:
            dataset_of[cond] = dataset
            results[(cond, "otsu")] = [evaluate(baseline, cases_of(conditions[cond]), conditions[cond].info.class_names)]
        if args.shipped:
            for model in NETWORKS:
                try:
                    tool = load_tool(model, dataset=dataset)
                except Exception as exc:  # noqa: BLE001  (not shipped for this dataset)
                    print(f"  {model} on {dataset}: not shipped ({exc})", file=sys.stderr)
                    continue
                params[(dataset, model)] = tool.num_parameters()
                for cond in conds:
                    ds = conditions[cond]
                    results[(cond, model)] = [evaluate(tool, cases_of(ds), ds.info.class_names)]
            continue
        with tempfile.TemporaryDirectory() as work:
            for model in NETWORKS:
                for seed in seeds:
                    print(f"  training {model} on {dataset}, seed {seed} ({time.time() - started:.0f} s)", file=sys.stderr, flush=True)
                    tool = train(model, dataset, seed, args.steps, work)
                    params[(dataset, model)] = tool.num_parameters()
                    for cond in conds:
                        ds = conditions[cond]
                        results.setdefault((cond, model), []).append(evaluate(tool, cases_of(ds), ds.info.class_names))
    if args.shipped:
        seeds, args.steps = [0], "shipped"
    print_table(results, params, dataset_of, seeds, args, time.time() - started)
    print_goal(results)


def _ms(values: list[float]) -> str:
    arr = np.asarray(values, float)
    if len(arr) == 1:
        return f"{arr[0]:.3f}"
    return f"{np.nanmean(arr):.3f}+-{np.nanstd(arr):.3f}"


def print_table(results, params, dataset_of, seeds, args, seconds) -> None:
    print(f"\nSegmenters: {len(seeds)} seed(s) {seeds}, {args.steps or 'recipe'} steps each (same recipe for every network), "
          f"{'all' if not args.max_cases else args.max_cases} test cases per condition; Dice / HD95 (mm) mean+-std over seeds\n")
    conds = list(dict.fromkeys(c for c, _ in results))
    for cond in conds:
        methods = [m for c, m in results if c == cond]
        classes = [k for k in results[(cond, methods[0])][0] if k != "mean"]
        head = f"{cond:24s} | {'method':8s} | {'params':>7s} | " + " | ".join(f"{c[:14]:>14s}" for c in classes) + f" | {'mean Dice':>13s} | {'HD95':>13s}"
        print(head)
        print("-" * len(head))
        for m in methods:
            runs = results[(cond, m)]
            cells = [_ms([r[c]["dice"] for r in runs]) for c in classes]
            print(f"{cond:24s} | {m:8s} | {params.get((dataset_of[cond], m), 0):7d} | " + " | ".join(f"{c:>14s}" for c in cells)
                  + f" | {_ms([r['mean']['dice'] for r in runs]):>13s} | {_ms([r['mean']['hd95'] for r in runs]):>13s}")
        print()
    print(f"(otsu has no training and no seeds; total time {seconds:.0f} s on this machine, 1 thread)")


def print_goal(results) -> None:
    """The issue's goal: every network beats the intensity baseline (mean Dice) on every shifted centre."""
    shifted = sorted({c for c, _ in results if "sev3" in c})
    for model in NETWORKS:
        rows = [(c, np.mean([r["mean"]["dice"] for r in results[(c, model)]]), results[(c, "otsu")][0]["mean"]["dice"])
                for c in shifted if (c, model) in results]
        if not rows:
            continue
        wins = sum(m > o for _, m, o in rows)
        detail = ", ".join(f"{c.split()[1]}: {m:.3f} vs {o:.3f}" for c, m, o in rows)
        print(f"goal {model} > otsu on shifted centres: {wins}/{len(rows)} ({detail})")


if __name__ == "__main__":
    main()
