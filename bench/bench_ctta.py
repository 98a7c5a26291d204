"""Benchmark of continual test-time adaptation: noadapt, tent, cotta, vptta, mgipt (+ mgipt-reduced).

    .venv/bin/python bench/bench_ctta.py [--quick] [--datasets mni-tissue,nuclei] [--max-cases 12] [--rounds 3]

For each dataset, the shipped clean-centre source model (`ctta-source-<dataset>`) is adapted by every
method over the SAME continual stream (centres B -> C -> D -> E of `medagent.data.shifts`, batch 1, no
reset, `--rounds` repetitions, a seeded subsample of `--max-cases` test cases per centre), each image
scored on the prediction made after adapting to it (`medagent.eval.ctta.evaluate_ctta`).

Printed per dataset: the unadapted source's drop from the clean centre to the worst centre (the
calibration check, >= 10 Dice points wanted); per method mean Dice per centre and per round, overall
mean, degradation (round 1 minus last round; positive = lost), forgetting (clean-centre Dice after the
stream minus before), seconds per image and cost relative to noadapt; then the issue's goal checks:
MGIPT best overall and smallest degradation, and mgipt-reduced keeping >= 80% of MGIPT's gain over
noadapt at <= 25x noadapt's per-image cost. Everything is measured in this run, side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from medagent.eval.ctta import DEFAULT_SEVERITY, evaluate_ctta

METHODS = ("noadapt", "tent", "cotta", "vptta", "mgipt", "mgipt-reduced")


def _f(v, digits: int = 4, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def print_table(dataset: str, ctta: dict) -> None:
    methods = [m for m in ctta if not m.startswith("_")]
    centres = list(ctta[methods[0]]["per_centre"])
    rounds = list(ctta[methods[0]]["per_round"])
    src = ctta.get("_source")
    print(f"\n== {dataset} ==")
    if src:
        ok = "OK" if src["drop"] is not None and src["drop"] >= 0.10 else "BELOW 10 POINTS"
        print(f"source (noadapt) clean {_f(src['clean'])} -> worst centre {_f(src['worst_centre'])}: drop "
              f"{100 * src['drop']:.1f} Dice points at severity {src['severity']} [{ok}]")
    head = ["method"] + [f"{c}" for c in centres] + [f"R{r}" for r in rounds] + ["overall", "degr R1-R%s" % rounds[-1], "forget", "s/img", "x noadapt"]
    rows = []
    for m in methods:
        s = ctta[m]
        rows.append([m] + [_f(s["per_centre"][c]) for c in centres] + [_f(s["per_round"][r]) for r in rounds]
                    + [_f(s["overall"]), _f(s["degradation"], signed=True), _f(s.get("forgetting"), signed=True),
                       _f(s["seconds_per_image"], 3), _f(s.get("relative_cost"), 1)])
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(v).rjust(w) for v, w in zip(r, widths)))


def goal_checks(ctta: dict) -> dict:
    """The issue's goals, as measured (True/False/None when a method is missing)."""
    methods = [m for m in ctta if not m.startswith("_")]
    out: dict = {}
    if "mgipt" in ctta:
        others = [m for m in methods if m not in ("mgipt", "mgipt-reduced")]
        out["mgipt_best_overall"] = all(ctta["mgipt"]["overall"] >= ctta[m]["overall"] for m in others)
        degr = {m: ctta[m]["degradation"] for m in methods if m != "mgipt-reduced" and ctta[m]["degradation"] is not None}
        out["mgipt_smallest_degradation"] = bool(degr) and min(degr, key=lambda m: abs(degr[m])) == "mgipt" if "mgipt" in degr else None
    if {"mgipt", "mgipt-reduced", "noadapt"} <= set(ctta):
        gain = ctta["mgipt"]["overall"] - ctta["noadapt"]["overall"]
        red_gain = ctta["mgipt-reduced"]["overall"] - ctta["noadapt"]["overall"]
        out["reduced_gain_fraction"] = red_gain / gain if gain > 0 else None
        out["reduced_cost_x_noadapt"] = ctta["mgipt-reduced"]["relative_cost"]
        out["reduced_goal"] = (out["reduced_gain_fraction"] is not None and out["reduced_gain_fraction"] >= 0.8
                               and out["reduced_cost_x_noadapt"] <= 25)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="mni-tissue,nuclei")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--max-cases", type=int, default=12, help="test cases per centre (seeded subsample)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--severity", type=float, default=None, help="shift severity (default: calibrated per dataset)")
    parser.add_argument("--episodic", action="store_true", help="reset every method at each centre change")
    parser.add_argument("--quick", action="store_true", help="nuclei only, 3 cases per centre, 2 rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="medagent-runs", help="parent folder of the run folders")
    parser.add_argument("--json", default=None, help="write the tables and goal checks here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    datasets = ["nuclei"] if args.quick else args.datasets.split(",")
    max_cases, rounds = (3, 2) if args.quick else (args.max_cases, args.rounds)
    methods = args.methods.split(",")
    everything = {}
    for ds in datasets:
        severity = args.severity if args.severity is not None else DEFAULT_SEVERITY.get(ds, 3.0)
        report = evaluate_ctta(ds, methods, rounds=rounds, seed=args.seed, episodic=args.episodic, run_root=args.out,
                               severity=severity, max_cases=max_cases, progress=True)
        print_table(ds, report.ctta)
        checks = goal_checks(report.ctta)
        print("goal checks:", json.dumps(checks))
        print("run folder:", report.run_dir)
        everything[ds] = {"ctta": report.ctta, "goals": checks, "run_dir": str(report.run_dir),
                          "max_cases": max_cases, "rounds": rounds, "severity": severity}
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, default=str) + "\n")
    return everything


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
