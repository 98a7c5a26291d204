"""Compare two evaluation runs case by case: paired differences with bootstrap intervals.

    from medagent.eval.compare import compare_runs
    table = compare_runs("medagent-runs/eval-tool-A", "medagent-runs/eval-tool-B")   # or their results.json

Rows of the two runs' `cases.parquet` are paired on what identifies a case: dataset, case id, class and,
for agent runs, the episode index (every agent of one run faces the same episodes, and two runs with the same
seed face the same ones). Only the cases both runs hold are compared. Methods are paired by name when the two
runs share names; when each run holds exactly one method, those two are compared whatever their names;
otherwise name them (`method_a=`, `method_b=`). The interval of each mean difference (B - A) resamples whole
subjects (`medagent.eval.results.bootstrap_ci`), since slices of one volume are not independent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medagent.errors import ConfigError, DataError
from medagent.eval.results import bootstrap_ci, load_results

#: Columns that identify one case of a per-case table (those present are used).
CASE_KEYS = ("dataset", "case_id", "class_name", "episode")
#: Metrics compared when the caller names none (those present in both tables).
DEFAULT_METRICS = ("dice", "iou", "nsd", "hd95", "assd", "episode_score", "turns", "dice_3d", "iou_3d", "nsd_3d", "hd95_3d")


def _cases(run: str | Path) -> tuple[Any, Path]:
    path = Path(run)
    results = path / "results.json" if path.is_dir() else path
    if not results.exists():
        raise DataError(f"{run}: no results.json (give a run folder or its results.json)")
    loaded = load_results(results)
    if loaded.cases is None or len(loaded.cases) == 0:
        raise DataError(f"{results}: the run has no per-case table to compare")
    return loaded.cases, results


def _pairing(methods_a: list[str], methods_b: list[str], method_a: str | None, method_b: str | None) -> list[tuple[str, str]]:
    if method_a or method_b:
        a, b = method_a or method_b, method_b or method_a
        for name, names, which in ((a, methods_a, "A"), (b, methods_b, "B")):
            if name not in names:
                raise ConfigError(f"method {name!r} is not in run {which} (it holds {', '.join(names)})")
        return [(a, b)]
    shared = [m for m in methods_a if m in methods_b]
    if shared:
        return [(m, m) for m in shared]
    if len(methods_a) == 1 and len(methods_b) == 1:
        return [(methods_a[0], methods_b[0])]
    raise ConfigError(f"the runs share no method name (A: {', '.join(methods_a)}; B: {', '.join(methods_b)}); "
                      "name the two to compare with method_a= / method_b= (--method-a / --method-b)")


def compare_runs(run_a: str | Path, run_b: str | Path, metrics: tuple[str, ...] | None = None,
                 method_a: str | None = None, method_b: str | None = None, seed: int = 0) -> Any:
    """Paired per-case differences B - A, one row per (method pair, dataset, metric).

    Args:
        run_a / run_b: run folders (or their results.json).
        metrics: metric columns to compare (default: those of `DEFAULT_METRICS` both tables have).
        method_a / method_b: the methods to compare when the runs' method names do not pair by themselves.
        seed: seeds the bootstrap.
    Returns:
        DataFrame with columns method_a, method_b, dataset, metric, n (paired cases with both values finite),
        mean_a, mean_b, diff, lo, hi (the 95% interval of diff), and one more dataset "all" per pair and metric.
    Raises:
        DataError: a run has no per-case table, or the runs share no case.
        ConfigError: methods that cannot be paired, or an unknown metric.
    """
    import pandas as pd

    cases_a, path_a = _cases(run_a)
    cases_b, path_b = _cases(run_b)
    keys = [k for k in CASE_KEYS if k in cases_a.columns and k in cases_b.columns]
    if metrics is None:
        metrics = tuple(m for m in DEFAULT_METRICS if m in cases_a.columns and m in cases_b.columns)
    unknown = [m for m in metrics if m not in cases_a.columns or m not in cases_b.columns]
    if unknown:
        raise ConfigError(f"metric(s) {unknown} are not in both case tables")
    pairs = _pairing(list(dict.fromkeys(cases_a["method"])), list(dict.fromkeys(cases_b["method"])), method_a, method_b)
    rows = []
    for ma, mb in pairs:
        a = cases_a[cases_a["method"] == ma]
        b = cases_b[cases_b["method"] == mb]
        joined = a.merge(b, on=keys, suffixes=("_a", "_b"))
        if joined.empty:
            raise DataError(f"{path_a} ({ma}: {len(a)} rows of {', '.join(sorted(set(map(str, a['dataset']))))}) and "
                            f"{path_b} ({mb}: {len(b)} rows of {', '.join(sorted(set(map(str, b['dataset']))))}) share no case "
                            f"(cases are matched on {', '.join(keys)})")
        groups = joined["subject_a"] if "subject_a" in joined else None
        for dataset in [*sorted(set(joined["dataset"])), "all"]:
            part = joined if dataset == "all" else joined[joined["dataset"] == dataset]
            subjects = None if groups is None else (part["dataset"].astype(str) + "/" + part["subject_a"].astype(str))
            for metric in metrics:
                va = part[f"{metric}_a"].to_numpy(dtype=float)
                vb = part[f"{metric}_b"].to_numpy(dtype=float)
                finite = np.isfinite(va) & np.isfinite(vb)
                diff, lo, hi = bootstrap_ci(vb[finite] - va[finite],
                                            groups=None if subjects is None else subjects.to_numpy()[finite], seed=seed)
                rows.append({"method_a": ma, "method_b": mb, "dataset": dataset, "metric": metric, "n": int(finite.sum()),
                             "mean_a": float(va[finite].mean()) if finite.any() else None,
                             "mean_b": float(vb[finite].mean()) if finite.any() else None,
                             "diff": diff, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)
