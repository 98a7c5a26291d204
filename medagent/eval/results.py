"""The results file every evaluator writes, its per-case table, and bootstrap summaries.

``results.json`` (strict JSON; NaN is written as null):

    {"run": {"command", "versions", "seed"},
     "summary": {method: {dataset: {class_name: {metric: {"mean", "ci95": [lo, hi], "n", "n_nan"}}}}},
     "cases": "cases.parquet",            # path relative to the JSON file's folder (or absolute)
     "skipped": [{"path", "reason"}],
     ...extra keys an evaluator adds}

``cases.parquet``: one row per case and class with columns method, dataset, case_id, subject,
class_index, class_name, dice, iou, hd95, nsd, assd, plus evaluator-specific extras.

Summaries (`summarize`):
- "mean" is the mean over the rows whose value is finite; "n" counts them and "n_nan" counts the rows
  skipped because the value was NaN (a distance with exactly one empty mask, see `medagent.metrics`).
  Pass `distance_penalty` (mm) to replace those NaN distances by a penalty instead of skipping them.
- "ci95" is a percentile bootstrap interval of that mean (`n_resamples` resamples, seeded). Resampling
  is by subject: when several rows share a subject (slices of one volume, tiles of one slide) the
  subject is drawn as a whole, because its rows are not independent; with one row per subject this is
  the ordinary case bootstrap. A single value gives the interval [v, v]; no values gives nulls.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from medagent.errors import ConfigError, DataError
from medagent.metrics import DISTANCE_METRICS, METRICS
from medagent.provenance import write_json

#: Columns every per-case table has, in this order; metric columns follow.
CASE_COLUMNS = ("method", "dataset", "case_id", "subject", "class_index", "class_name")
#: The metric columns of a tool evaluation.
DEFAULT_METRICS = ("dice", "iou", "hd95", "nsd", "assd")


# -- bootstrap ------------------------------------------------------------------------------------------
def bootstrap_ci(
    values: Iterable[float],
    groups: Iterable[Any] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float | None, float | None, float | None]:
    """Mean of the finite `values` and its percentile bootstrap interval, resampling whole `groups`.

    Args:
        values: one value per row; NaN rows are dropped first.
        groups: a group key per row (e.g. subject); rows of one group are resampled together.
            None: every row is its own group.
        n_resamples: bootstrap resamples.
        seed: seeds the resampling (same inputs + seed -> same interval).
        confidence: interval mass, e.g. 0.95.
    Returns:
        (mean, lo, hi); (None, None, None) when no value is finite.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ConfigError(f"n_resamples must be >= 1, got {n_resamples}")
    v = np.asarray(list(values), dtype=np.float64)
    g = np.arange(v.size) if groups is None else np.asarray(list(groups), dtype=object)
    if g.size != v.size:
        raise ConfigError(f"{v.size} values but {g.size} group keys")
    keep = np.isfinite(v)
    v, g = v[keep], g[keep]
    if v.size == 0:
        return None, None, None
    mean = float(v.mean())
    _, codes = np.unique(g.astype(str), return_inverse=True)
    sums = np.bincount(codes, weights=v)
    counts = np.bincount(codes).astype(np.float64)
    n_groups = sums.size
    if n_groups == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    stats = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // n_groups)  # bound memory: chunk x n_groups indices at a time
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n_groups, size=(stop - start, n_groups))
        stats[start:stop] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(stats, [alpha, 1 - alpha])
    # Guard against floating-point round-off pushing the bounds past the mean when all values are equal.
    return mean, float(min(lo, mean)), float(max(hi, mean))


def summarize(
    df: Any,
    seed: int = 0,
    metrics: Iterable[str] | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    distance_penalty: float | None = None,
) -> dict[str, Any]:
    """The "summary" block of a results file from a per-case table.

    Args:
        df: pandas DataFrame with the `CASE_COLUMNS` (subject may be missing: case_id is used) and metric columns.
        seed: bootstrap seed.
        metrics: metric columns to summarise; default every `medagent.metrics.METRICS` column present.
        n_resamples, confidence: bootstrap settings.
        distance_penalty: if given, NaN distances (hd95, hd, assd) count as this many mm instead of being skipped.
    Returns:
        {method: {dataset: {class_name: {metric: {"mean", "ci95": [lo, hi], "n", "n_nan"}}}}}.
    """
    missing = [c for c in ("method", "dataset", "class_name") if c not in df.columns]
    if missing:
        raise DataError(f"per-case table lacks column(s) {missing}; it has {list(df.columns)}")
    names = [m for m in (metrics if metrics is not None else METRICS) if m in df.columns]
    group_col = "subject" if "subject" in df.columns else "case_id"
    summary: dict[str, Any] = {}
    for (method, dataset, class_name), part in df.groupby(["method", "dataset", "class_name"], sort=False):
        cell: dict[str, Any] = {}
        groups = part[group_col].astype(str).to_numpy() if group_col in part.columns else None
        for name in names:
            values = part[name].to_numpy(dtype=np.float64)
            n_nan = int(np.count_nonzero(np.isnan(values)))
            if distance_penalty is not None and name in DISTANCE_METRICS:
                values = np.where(np.isnan(values), float(distance_penalty), values)
            mean, lo, hi = bootstrap_ci(values, groups, n_resamples=n_resamples, seed=seed, confidence=confidence)
            cell[name] = {"mean": mean, "ci95": [lo, hi], "n": int(np.count_nonzero(np.isfinite(values))), "n_nan": n_nan}
            if distance_penalty is not None and name in DISTANCE_METRICS:
                cell[name]["penalty"] = float(distance_penalty)
        summary.setdefault(str(method), {}).setdefault(str(dataset), {})[str(class_name)] = cell
    return summary


# -- files ----------------------------------------------------------------------------------------------
def _skipped_dicts(skipped: Iterable[Any] | None) -> list[dict[str, str]]:
    out = []
    for item in skipped or []:
        if isinstance(item, dict):
            out.append({"path": str(item.get("path", "")), "reason": str(item.get("reason", ""))})
        else:  # medagent.data.Skipped or anything with path/reason
            out.append({"path": str(item.path), "reason": str(item.reason)})
    return out


def write_results(
    path: str | Path,
    summary: dict[str, Any],
    run: dict[str, Any],
    cases: Any = None,
    skipped: Iterable[Any] | None = None,
    cases_name: str = "cases.parquet",
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write results JSON at `path` and, if `cases` (a DataFrame) is given, the Parquet table beside it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cases_ref = None
    if cases is not None:
        table = cases.copy()
        table.attrs = {}  # attrs (e.g. skipped lists) are not part of the table
        table.to_parquet(path.parent / cases_name, index=False)
        cases_ref = cases_name
    data = {"run": run, "summary": summary, "cases": cases_ref, "skipped": _skipped_dicts(skipped)}
    for key, value in (extra or {}).items():
        if key in data:
            raise ConfigError(f"extra key {key!r} would overwrite a results field")
        data[key] = value
    write_json(path, data)
    return path


@dataclass
class Results:
    """A results file read back.

    Attributes:
        path: the JSON file.
        run: {"command", "versions", "seed"}.
        summary: {method: {dataset: {class: {metric: {"mean", "ci95", ...}}}}}.
        cases: the per-case DataFrame, or None when the file names no table.
        skipped: [{"path", "reason"}].
        extra: any other top-level keys.
    """

    path: Path
    run: dict[str, Any]
    summary: dict[str, Any]
    cases: Any
    skipped: list[dict[str, str]]
    extra: dict[str, Any] = field(default_factory=dict)


def load_results(path: str | Path) -> Results:
    """Read a results JSON and its per-case Parquet table (resolved relative to the JSON's folder)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read results file {path}: {exc}") from exc
    missing = [k for k in ("run", "summary", "cases", "skipped") if k not in data]
    if missing:
        raise DataError(f"results file {path} lacks key(s) {missing}")
    cases = None
    if data["cases"]:
        import pandas as pd

        table = Path(data["cases"])
        table = table if table.is_absolute() else path.parent / table
        try:
            cases = pd.read_parquet(table)
        except (OSError, ValueError) as exc:
            raise DataError(f"results file {path}: cannot read its case table {table}: {exc}") from exc
    extra = {k: v for k, v in data.items() if k not in ("run", "summary", "cases", "skipped")}
    return Results(path=path, run=data["run"], summary=data["summary"], cases=cases, skipped=data["skipped"], extra=extra)


def copy_results(path: str | Path, dest: str | Path) -> Path:
    """Copy a results JSON to `dest`, rewriting its "cases" reference so it still points at the table."""
    path, dest = Path(path), Path(dest)
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("cases"):
        table = Path(data["cases"])
        table = (table if table.is_absolute() else path.parent / table).resolve()
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            data["cases"] = os.path.relpath(table, dest.parent.resolve())
        except ValueError:  # another drive (Windows): keep it absolute
            data["cases"] = str(table)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
    write_json(dest, data)
    return dest
