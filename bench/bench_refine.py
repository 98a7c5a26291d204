"""Benchmark of the `refine` tool: does refinement improve coarse masks, and how fast is it?

    .venv/bin/python bench/bench_refine.py [--cases 12] [--quick] [--split test|val] [--out DIR]

On held-out builtin cases ("test" split; "val" with --split val, for choosing between models), coarse
masks come from seeded GT perturbations (refiner/perturb.py) and, where shipped, from the automatic
segmenters (unet, ifunet, allukan).
Every coarse mask is refined by, side by side on the same inputs in the same process:
    refine      the shipped diffusion refiner, T = its default steps
    full-step   the same network with 4x as many steps, batch 1
    one-shot    the shipped one-shot UNet baseline (same inputs, similar size, one pass)
Printed: boundary F at 1 and 2 px, HD95 (px) and Dice, coarse vs each method, per dataset and
coarse source; then frames per second (refinement calls per second, post-processing included) and the
two goal checks: refined boundary F above coarse on every dataset, and refine FPS >= 3x full-step at
equal or better boundary F. Numbers are what this run measured; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from medagent.data.builtin import load_builtin
from medagent.errors import MedagentError
from medagent.metrics import binary_metrics
from medagent.tools import load_tool
from medagent.tools.refiner.perturb import perturb_mask

DATASETS = ("mni-tissue", "mni-lesion", "nuclei", "ct-phantom", "phantom")
SEGMENTERS = ("unet", "ifunet", "allukan")


def _metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    two = binary_metrics(pred, gt, None, metrics=("dice", "hd95", "boundary_f1"), boundary_tol_px=2.0)
    one = binary_metrics(pred, gt, None, metrics=("boundary_f1",), boundary_tol_px=1.0)
    return {"bf1": one["boundary_f1"], "bf2": two["boundary_f1"], "hd95": two["hd95"], "dice": two["dice"]}


def _inputs(name: str, cases_per_dataset: int, classes_per_case: int, seed: int, use_segmenters: bool, notes: list[str],
            split: str = "test"):
    """Yield (source, case, class, coarse) for one dataset's held-out cases of `split` ("test" or "val")."""
    cases = load_builtin(name).cases(split)
    picks = sorted(set(np.linspace(0, len(cases) - 1, num=min(cases_per_dataset, len(cases))).round().astype(int).tolist()))
    segmenters = []
    if use_segmenters:
        for tool_name in SEGMENTERS:
            try:
                segmenters.append(load_tool(tool_name, dataset=name))
            except Exception:  # no shipped weights for this dataset
                notes.append(f"no shipped {tool_name} for {name}")
    rng = np.random.default_rng(seed)
    for index in picks:
        case = cases[index]
        classes = [c for c in case.foreground_classes() if np.count_nonzero(case.label == c) >= 30]
        if not classes:
            continue
        chosen = rng.choice(classes, size=min(classes_per_case, len(classes)), replace=False)
        seg_masks = {}
        for tool in segmenters:
            try:
                seg_masks[tool.name] = tool.predict(case).mask
            except MedagentError as exc:
                notes.append(f"{tool.name} failed on {case.id}: {exc}")
        for c in sorted(int(k) for k in chosen):
            gt = (case.label == c).astype(np.uint8)
            yield "perturb", case, c, perturb_mask(gt, rng)
            for tool_name, pred in seg_masks.items():
                coarse = (pred == c).astype(np.uint8)
                if coarse.any() and not coarse.all():
                    yield tool_name, case, c, coarse


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="held-out cases per dataset")
    parser.add_argument("--classes", type=int, default=2, help="classes refined per case (random, seeded)")
    parser.add_argument("--quick", action="store_true", help="4 cases per dataset, 1 class")
    parser.add_argument("--no-segmenters", action="store_true", help="perturbation coarse masks only")
    parser.add_argument("--checkpoint", default=None, help="refine checkpoint folder (default: shipped refine-tiny)")
    parser.add_argument("--split", default="test", choices=("test", "val"),
                        help="held-out split: 'val' for model selection, 'test' for reported numbers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write results.json into this folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.classes = 4, 1
    torch.set_num_threads(args.threads)

    refine = load_tool("refine", checkpoint=args.checkpoint)
    full_steps = 4 * refine.config.steps
    methods = {"refine": (refine, refine.config.steps), "full-step": (refine, full_steps)}
    notes: list[str] = []
    try:
        methods["one-shot"] = (load_tool("refine", checkpoint=args.checkpoint, model_name="oneshot"), None)
    except MedagentError as exc:
        notes.append(f"one-shot baseline unavailable: {exc}")

    scores: dict = defaultdict(lambda: defaultdict(list))      # (dataset, source) -> method -> [metrics]
    seconds: dict[str, float] = defaultdict(float)
    calls = 0
    for name in DATASETS:
        try:
            inputs = list(_inputs(name, args.cases, args.classes, args.seed, not args.no_segmenters, notes, args.split))
        except MedagentError as exc:
            notes.append(f"{name}: skipped ({exc})")
            continue
        for source, case, cls, coarse in inputs:
            gt = (case.label == cls).astype(np.uint8)
            scores[(name, source)]["coarse"].append(_metrics(coarse, gt))
            for method, (tool, steps) in methods.items():
                kwargs = {"steps": steps} if steps is not None else {}
                start = time.perf_counter()
                pred = tool.predict_2d(case, mask=coarse, **kwargs)
                seconds[method] += time.perf_counter() - start
                scores[(name, source)][method].append(_metrics(pred.mask, gt))
            calls += 1

    method_names = ["coarse", *methods]
    summary: dict = {}
    print("\nBoundary F @1px / @2px, HD95 px, Dice (means)")
    print(f"{'':<24}  " + "  ".join(f"{m:>27}" for m in method_names))
    print(f"{'dataset':<11} {'source':<8} {'n':>3}  " + "  ".join(f"{'BF1   BF2   HD95   Dice':>27}" for _ in method_names))
    for (name, source), per_method in scores.items():
        row = {m: {k: float(np.nanmean([s[k] for s in per_method[m]])) for k in ("bf1", "bf2", "hd95", "dice")}
               for m in method_names}
        summary.setdefault(name, {})[source] = {"n": len(per_method["coarse"]), **row}
        cells = "  ".join(f"{row[m]['bf1']:5.3f} {row[m]['bf2']:5.3f} {row[m]['hd95']:6.2f} {row[m]['dice']:5.3f}".rjust(27)
                          for m in method_names)
        print(f"{name:<11} {source:<8} {len(per_method['coarse']):>3}  {cells}")

    fps = {m: calls / seconds[m] if seconds[m] else float("nan") for m in methods}
    print(f"\nSpeed on {calls} refinements, batch 1, {args.threads} thread(s), side by side:")
    for m in methods:
        steps = methods[m][1] or 1
        print(f"  {m:<10} steps {steps:>2}   {fps[m]:7.2f} FPS   {1000 / fps[m]:7.1f} ms/image")
    ratio = fps["refine"] / fps["full-step"]

    def pooled(method: str, key: str, dataset: str | None = None) -> float:
        values = [s[key] for (n, _), pm in scores.items() if dataset in (None, n) for s in pm[method]]
        return float(np.nanmean(values))

    print("\nGoals:")
    wins = {}
    for name in summary:
        c, r = pooled("coarse", "bf2", name), pooled("refine", "bf2", name)
        c1, r1 = pooled("coarse", "bf1", name), pooled("refine", "bf1", name)
        wins[name] = bool(r > c and r1 > c1)
        print(f"  {name:<11} boundary F@2 coarse {c:.3f} -> refine {r:.3f}; F@1 {c1:.3f} -> {r1:.3f}  "
              f"{'above coarse' if wins[name] else 'NOT above coarse'}")
    bf_refine, bf_full = pooled("refine", "bf2", None), pooled("full-step", "bf2", None)
    print(f"  FPS refine / full-step = {ratio:.2f}x (goal >= 3x); boundary F@2 refine {bf_refine:.3f} vs "
          f"full-step {bf_full:.3f} ({'equal or better' if bf_refine >= bf_full - 1e-9 else 'worse'})")
    if "one-shot" in methods:
        print(f"  one-shot baseline boundary F@2 {pooled('one-shot', 'bf2', None):.3f}, "
              f"FPS refine / one-shot = {fps['refine'] / fps['one-shot']:.2f}x")
    missing = [n for n in notes if n.startswith("no shipped ")]
    if missing:
        print(f"  segmenter coarse masks unavailable ({len(missing)}): " + "; ".join(n[len("no shipped "):] for n in missing))
    for note in notes:
        if note not in missing:
            print(f"  note: {note}")

    results = {"run": {"command": "bench refine", "seed": args.seed, "split": args.split, "argv": sys.argv[1:]},
               "summary": summary, "fps": fps, "fps_ratio_refine_over_full": ratio,
               "refine_above_coarse": wins, "notes": notes}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
