"""Score one segmentation tool on one dataset split: a per-case table, then a run folder with results.

How each kind of tool is asked:
- automatic tools (and any tool called with ``prompt=None``): one `Tool.predict(case)` per case (3D cases
  run as they are; `Tool.predict` goes slice-wise for 2D tools). Every foreground class of the case is
  scored from that one prediction. When the tool declares ``class_names`` (index -> name), GT classes
  are matched to the tool's classes BY NAME (case-insensitive; spaces, "-" and "_" are the same), so a
  tool whose classes are in another order is scored right; GT classes the tool does not know are
  skipped, with a reason, once per dataset. A tool without ``class_names`` is matched by index.
- promptable tools with ``prompt="box"``: for each class present in the GT, each connected component of
  that class (8-connectivity in 2D) gives one box ``(x0, y0, x1, y1)``, inclusive pixel coordinates,
  x = column; one call ``tool.predict(case, boxes=(N, 4) array)`` returns the union mask (non-zero =
  the target). On a 3D case the boxes are made and the tool called on each slice (along the coarsest
  axis, `Case.default_slice_axis`) that contains the class; the slice masks are put back in the volume,
  which is scored in 3D.
A class absent from both the GT and the prediction of a case gives no row (it says nothing about the
tool); a class the tool predicts but the GT lacks gives a row with Dice 0. Cases without a label and
cases on which the tool raises a medagent error are skipped with the reason.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
from scipy import ndimage

from medagent.data.case import Case
from medagent.data.dataset import Dataset
from medagent.errors import ConfigError, MedagentError
from medagent.eval.results import CASE_COLUMNS, DEFAULT_METRICS, copy_results, summarize
from medagent.eval.progress import UnitProgress
from medagent.eval.report import write_report
from medagent.eval.resume import PARTIAL_NAME, UnitLog, open_run, refuse_stateful, roundtrip, seed_torch
from medagent.metrics import binary_metrics
from medagent.tools.base import Tool, ToolKind

__all__ = ["component_boxes", "evaluate_tool", "run_tool_eval", "summarize"]

PROMPTS = (None, "box")


def component_boxes(mask: np.ndarray) -> np.ndarray:
    """One box per 8-connected component of a 2D mask: int64 (N, 4) rows (x0, y0, x1, y1), inclusive, x = column."""
    mask = np.asarray(mask) != 0
    if mask.ndim != 2:
        raise ConfigError(f"component_boxes needs a 2D mask, got shape {mask.shape}")
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    boxes = [(sx.start, sy.start, sx.stop - 1, sy.stop - 1) for sy, sx in ndimage.find_objects(labels)]
    return np.asarray(boxes, dtype=np.int64).reshape(n, 4)


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def _tool_class_index(tool: Tool) -> dict[str, int] | None:
    """Normalised class name -> tool class index (foreground only), or None when the tool names no classes."""
    names = getattr(tool, "class_names", None)
    if not isinstance(names, dict) or not names:
        return None
    return {_norm(v): int(k) for k, v in names.items() if int(k) != 0}


def _wanted(classes: Iterable[int | str] | None) -> tuple[set[int], set[str]] | None:
    if classes is None:
        return None
    ints = {int(c) for c in classes if isinstance(c, (int, np.integer))}
    names = {_norm(c) for c in classes if isinstance(c, str)}
    return ints, names


def _pick_indices(n: int, max_cases: int | None, seed: int) -> list[int]:
    if max_cases is None or max_cases >= n:
        return list(range(n))
    if max_cases < 1:
        raise ConfigError(f"max_cases must be >= 1, got {max_cases}")
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=max_cases, replace=False))


def _predict_boxes(tool: Tool, case: Case, target: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Binary prediction of `target` (bool, case grid) from one box per GT component (slice-wise in 3D)."""
    if case.ndim == 2:
        boxes = component_boxes(target)
        pred = tool.predict(case, boxes=boxes)
        return pred.mask != 0, {"n_prompts": int(len(boxes)), "n_slices": 1}
    axis = case.default_slice_axis()
    out = np.zeros(case.shape, bool)
    n_prompts = n_slices = 0
    for index in range(case.shape[axis]):
        target_2d = np.take(target, index, axis=axis)
        if not target_2d.any():
            continue
        boxes = component_boxes(target_2d)
        pred = tool.predict(case.slice(index, axis), boxes=boxes)
        where: list[Any] = [slice(None)] * 3
        where[axis] = index
        out[tuple(where)] = pred.mask != 0
        n_prompts += len(boxes)
        n_slices += 1
    return out, {"n_prompts": n_prompts, "n_slices": n_slices, "slice_axis": axis}


def _mean_dice(rows: list[dict[str, Any]]) -> float | None:
    """Mean Dice over a case's rows (its classes), None without any: the progress bar's key figure."""
    values = [float(r["dice"]) for r in rows if r.get("dice") is not None and math.isfinite(float(r["dice"]))]
    return sum(values) / len(values) if values else None


def _score_case(tool: Tool, case: Case, dataset: Dataset, prompt: str | None, *, gt_filter: Any,
                tool_index: dict[str, int] | None, metrics: tuple[str, ...], tolerance_mm: float,
                unknown_classes: set[str]) -> dict[str, Any]:
    """One case, the unit of a tool evaluation: {"rows": [one per class], "skipped": [{"path", "reason"}],
    "unknown_classes": [GT class names the tool lacks, first seen here]} (the module docstring's rules).
    `unknown_classes` (the names reported by earlier cases) is read, not changed."""
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    unknown: list[str] = []
    if case.label is None:
        return {"rows": rows, "skipped": [{"path": case.id, "reason": "case has no label"}], "unknown_classes": unknown}
    gt_classes = [c for c in sorted(case.class_names) if c != 0 and gt_filter(c, case.class_names[c])]
    present = set(case.foreground_classes())
    base = {"method": tool.name, "dataset": dataset.info.name, "case_id": case.id, "subject": case.subject,
            "modality": case.modality or dataset.info.modality}
    try:
        if prompt is None:
            start = time.perf_counter()
            pred = tool.predict(case)
            elapsed = time.perf_counter() - start
            if pred.mask.shape != case.shape:
                raise ConfigError(f"tool {tool.name!r} returned a mask of shape {pred.mask.shape} for case grid {case.shape}")
            for c in gt_classes:
                name = case.class_names[c]
                if tool_index is None:
                    t = c
                elif _norm(name) in tool_index:
                    t = tool_index[_norm(name)]
                else:
                    if name not in unknown_classes and name not in unknown:  # reported once per dataset
                        unknown.append(name)
                        skipped.append({"path": f"{dataset.info.name}/class/{name}",
                                        "reason": f"tool {tool.name!r} has no class named {name!r}"})
                    continue
                pred_bin, gt_bin = pred.mask == t, case.label == c
                if c not in present and not pred_bin.any():
                    continue
                rows.append({**base, "class_index": c, "class_name": name,
                             **binary_metrics(pred_bin, gt_bin, case.spacing, metrics, tolerance_mm=tolerance_mm),
                             "gt_voxels": int(gt_bin.sum()), "pred_voxels": int(pred_bin.sum()),
                             "pred_class_index": t, "n_prompts": 0, "n_slices": math.nan, "time_s": elapsed})
        else:
            for c in gt_classes:
                if c not in present:
                    continue
                gt_bin = case.label == c
                start = time.perf_counter()
                pred_bin, info = _predict_boxes(tool, case, gt_bin)
                elapsed = time.perf_counter() - start
                rows.append({**base, "class_index": c, "class_name": case.class_names[c],
                             **binary_metrics(pred_bin, gt_bin, case.spacing, metrics, tolerance_mm=tolerance_mm),
                             "gt_voxels": int(gt_bin.sum()), "pred_voxels": int(pred_bin.sum()),
                             "pred_class_index": -1, "n_prompts": info["n_prompts"], "n_slices": info["n_slices"],
                             "time_s": elapsed})
    except MedagentError as exc:  # a tool that cannot handle this case: record it, go on with the rest
        rows = []
        skipped.append({"path": case.id, "reason": f"{type(exc).__name__}: {exc}"})
    return {"rows": rows, "skipped": skipped, "unknown_classes": unknown}


def evaluate_tool(
    tool: Tool,
    dataset: Dataset,
    split: str = "test",
    prompt: str | None = None,
    classes: Iterable[int | str] | None = None,
    max_cases: int | None = None,
    seed: int = 0,
    metrics: Iterable[str] = DEFAULT_METRICS,
    tolerance_mm: float = 1.0,
    progress: bool = True,
    partial: str | Path | None = None,
) -> Any:
    """Score `tool` on `dataset[split]`, per case and class (see the module docstring for the rules).

    Args:
        tool: any `Tool`.
        dataset: the dataset; its `info.name` fills the "dataset" column.
        split: "train", "val", "test" or "all".
        prompt: None (the tool segments on its own) or "box" (one box per GT component; promptable tools).
        classes: restrict to these GT classes (indices or names); default all foreground classes.
        max_cases: score at most this many cases, drawn with `seed` (kept in dataset order).
        seed: case sampling and, when torch is loaded, `torch.manual_seed` for stochastic tools (before each
            case, from (seed, case index), so a case's result does not depend on the cases scored before it).
        metrics: metric names (see `medagent.metrics.METRICS`).
        tolerance_mm: NSD tolerance in mm.
        progress: show a progress bar with the running mean Dice and an ETA (only on a terminal).
        partial: a JSONL file that records each finished case (`medagent.eval.resume.UnitLog`); cases already
            in it are not run again (their recorded rows are reused), so an interrupted evaluation resumes
            where it stopped.
    Returns:
        pandas DataFrame, one row per (case, class): `CASE_COLUMNS`, the metric columns, and extras
        (modality, gt_voxels, pred_voxels, pred_class_index, n_prompts, n_slices, time_s). Rows skipped and why
        are in ``df.attrs["skipped"]`` as [{"path", "reason"}].
    """
    import pandas as pd

    if prompt not in PROMPTS:
        raise ConfigError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    if prompt == "box" and "boxes" not in tool.inputs:
        raise ConfigError(f"prompt='box' needs a promptable tool that accepts boxes; tool {tool.name!r} accepts {sorted(tool.inputs) or 'no inputs'}")
    if prompt is None and tool.kind == ToolKind.PROMPTABLE:
        raise ConfigError(f"tool {tool.name!r} is promptable: evaluate it with prompt='box'")
    metrics = tuple(metrics)

    cases = dataset.cases(split)
    indices = _pick_indices(len(cases), max_cases, seed)
    wanted = _wanted(classes)
    tool_index = _tool_class_index(tool) if prompt is None else None
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    unknown_classes: set[str] = set()

    def keep_class(index: int, name: str) -> bool:
        return wanted is None or index in wanted[0] or _norm(name) in wanted[1]

    log = UnitLog(partial) if partial is not None else None
    description = f"eval {tool.name} on {dataset.info.name}/{split}"
    with UnitProgress(description, total=len(indices), figure="Dice", enabled=progress) as bar:
        for i in indices:
            record = log.get(cases.ids[i]) if log is not None else None
            if record is None:
                seed_torch(seed, i)  # each case from (seed, case index): a resumed run scores it as an uninterrupted one
                record = roundtrip(_score_case(tool, cases[i], dataset, prompt, gt_filter=keep_class, tool_index=tool_index,
                                               metrics=metrics, tolerance_mm=tolerance_mm, unknown_classes=unknown_classes))
                if log is not None:  # record the finished case so a rerun can skip it
                    log.add(cases.ids[i], record)
                report = bar.advance
            else:
                report = bar.restored
            rows += record["rows"]
            skipped += record["skipped"]
            unknown_classes.update(record["unknown_classes"])
            report(_mean_dice(record["rows"]))
    columns = (list(CASE_COLUMNS) + list(metrics)
               + ["modality", "gt_voxels", "pred_voxels", "pred_class_index", "n_prompts", "n_slices", "time_s"])
    df = pd.DataFrame(rows, columns=columns)
    df.attrs["skipped"] = skipped
    return df


def run_tool_eval(
    tool: str | Tool,
    dataset: Dataset,
    split: str = "test",
    prompt: str | None = None,
    classes: Iterable[int | str] | None = None,
    max_cases: int | None = None,
    seed: int = 0,
    json_out: str | Path | None = None,
    run_root: str | Path = "medagent-runs",
    checkpoint: str | None = None,
    tool_config: dict[str, Any] | None = None,
    tolerance_mm: float = 1.0,
    n_resamples: int = 2000,
    progress: bool = True,
    resume: str | Path | None = None,
    on_run: Callable[[Path], None] | None = None,
) -> Path:
    """Evaluate a tool (a registry name, built with `checkpoint` and `tool_config`, or a `Tool`) and write a run folder.

    Writes ``<run_root>/eval-tool-<time>/`` with config.json, versions.json, metrics.jsonl, cases.parquet,
    results.json (summary with bootstrap CIs by subject, see `medagent.eval.results`) and report.html
    (`medagent.eval.report`, beside results.json); copies the
    results JSON to `json_out` when given (its "cases" reference rewritten to still find the table).
    Finished cases are recorded in the run folder's partial.jsonl while the run goes (removed once
    results.json is written); `resume` (the run folder of an interrupted evaluation with the same settings,
    `medagent.eval.resume.open_run`) continues it instead of starting a new folder: its finished cases are
    read back, not recomputed. `on_run(run_folder)` is called once the folder exists (the CLI prints it, so a
    killed run can be resumed). Returns the path of results.json in the run folder.
    """
    if isinstance(tool, str):
        from medagent.tools.registry import load_tool

        tool_obj = load_tool(tool, checkpoint=checkpoint, **(tool_config or {}))
    else:
        tool_obj = tool
    classes = list(classes) if classes is not None else None
    config = {
        "tool": tool_obj.name, "tool_kind": tool_obj.kind.value, "checkpoint": checkpoint, "tool_config": tool_config or {},
        "dataset": dataset.info.name, "dataset_source": dataset.info.source, "label_origin": dataset.info.label_origin,
        "split": split, "prompt": prompt, "classes": classes, "max_cases": max_cases,
        "tolerance_mm": tolerance_mm, "n_resamples": n_resamples,
    }
    refuse_stateful(tool_obj, resume)
    run = open_run("eval tool", config, seed, root=run_root, resume=resume)
    if on_run is not None:
        on_run(run.path)
    start = time.perf_counter()
    df = evaluate_tool(tool_obj, dataset, split=split, prompt=prompt, classes=classes, max_cases=max_cases,
                       seed=seed, tolerance_mm=tolerance_mm, progress=progress, partial=run.file(PARTIAL_NAME))
    skipped = [{"path": s.path, "reason": s.reason} for s in dataset.skipped] + list(df.attrs.get("skipped", []))
    summary = summarize(df, seed=seed, metrics=DEFAULT_METRICS, n_resamples=n_resamples)
    run.log(step=None, event="evaluated", rows=len(df), cases=int(df["case_id"].nunique()) if len(df) else 0,
            skipped=len(skipped), seconds=round(time.perf_counter() - start, 3))
    path = run.write_results(summary, cases=df, skipped=skipped,
                             extra={"split": split, "prompt": prompt, "tolerance_mm": tolerance_mm})
    run.file(PARTIAL_NAME).unlink(missing_ok=True)  # cases.parquet now holds every row
    write_report(run.path)
    if json_out is not None:
        copy_results(path, json_out)
    return path
