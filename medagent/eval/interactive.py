"""The standard interactive-segmentation protocol for promptable tools: one box, then k corrective clicks.

    from medagent.eval.interactive import evaluate_interactive
    report = evaluate_interactive("sam", dataset="mni-lesion", clicks=5, max_objects=30)
    report.by_dataset["mni-lesion"]["metrics"]["dsc_auc"]   # {"mean", "ci95", "n", "n_nan"}

The protocol follows the CVPR 2025 challenge "Foundation Models for Interactive 3D Biomedical Image
Segmentation" (its evaluation script CVPR25_iter_eval.py) for the curve, and RITM (Sofiiuk et al. 2022)
for the number of clicks; `docs/evaluation.md` has the details and where this departs from them.
- Targets: every object of every labelled case of the split, as `medagent.tools.sam.prompts.iter_objects`
  enumerates them (instances where the dataset has them, else the 8-connected (26 in 3D) components of
  each class) with >= `min_area` pixels; `max_objects` draws that many per dataset with `seed` (uniformly
  over all objects of the split, kept in dataset order). An object's class is the label under it.
- Step 0 (`box=True`): the object's tight box. Then clicks 1..k: each at `medagent.tools.clicker.next_click`
  of the current mask (the distance-transform maximum of the largest error component, positive on a false
  negative, negative on a false positive; ties drawn from a generator seeded by (seed, object number)).
  Every prompt sends the box, every click so far and, by default, the tool's previous logits.
  Click-only (`box=False`): there is no step 0; click 1 is the rule's click on an empty mask (the
  object's deepest pixel).
- 3D cases go slice-wise (along `Case.default_slice_axis`) over the slices that hold the object: each
  slice has its own session and box, a step places one click on every slice that still has an error, and
  the slices are put back into the volume, which is scored in 3D.
- A mask with no error left gets no more clicks; its later steps keep it (the score stays).
- Per object and step: Dice, IoU, NSD (at `tolerance_mm`, `medagent.metrics`). Per object: DSC-AUC and
  NSD-AUC over the click steps 1..k (`normalised_auc`: trapezoid with unit spacing divided by k - 1, so in
  [0, 1]; the challenge reports the unnormalised value, ours x (k - 1)); final Dice/NSD (after click k);
  NoC@85 / NoC@90 (`number_of_clicks`: clicks until IoU >= 0.85 / 0.90, clicking on up to `noc_max_clicks`
  (20) whatever k is; never reached = 20, and NoF@t counts those failures). With a box, NoC is 0 when the
  box alone reaches the threshold; click-only, NoC counts the first click (RITM).
- Summaries: per dataset and per modality (and per class in the shared "summary" block), means with
  percentile-bootstrap 95% intervals resampling whole subjects (`medagent.eval.results.bootstrap_ci`).

The run folder (``<run_root>/eval-interactive-<time>/``) holds config.json, versions.json, metrics.jsonl,
results.json (protocol, summaries, curves), cases.parquet (one row per object per step),
objects.parquet (one row per object: its curve and summary metrics) and report.html (`medagent.eval.report`:
the tables, Dice / NSD vs click curves, Dice distributions). While it runs, partial.jsonl holds one line per
finished object, so `resume=` (CLI `--resume RUN_FOLDER`) continues a killed run (`medagent.eval.resume`).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from medagent.data.case import Case
from medagent.data.dataset import Dataset
from medagent.errors import ConfigError, MedagentError
from medagent.eval.results import CASE_COLUMNS, bootstrap_ci, copy_results, summarize
from medagent.eval.progress import UnitProgress
from medagent.eval.report import write_report
from medagent.eval.resume import PARTIAL_NAME, UnitLog, open_run, refuse_stateful, roundtrip, seed_torch
from medagent.metrics import binary_metrics
from medagent.provenance import write_json
from medagent.tools.base import Prediction, Tool
from medagent.tools.clicker import next_click
from medagent.tools.sam.prompts import iter_objects, mask_box

__all__ = [
    "InteractiveReport", "PromptSession", "evaluate_interactive", "interactive_table", "noc_name", "normalised_auc",
    "number_of_clicks", "object_metrics",
]

#: IoU thresholds of NoC (RITM's NoC@85 and NoC@90).
NOC_THRESHOLDS = (0.85, 0.90)
#: The click budget of NoC (RITM): an object not reaching the threshold in this many clicks counts this many.
NOC_MAX_CLICKS = 20


# -- the protocol's numbers ------------------------------------------------------------------------------
def normalised_auc(values: Sequence[float]) -> float:
    """Area under a curve sampled at unit steps, divided by its length, so a curve in [0, 1] gives [0, 1].

    `values[i]` is the score after click i + 1. The trapezoid rule over n values spans n - 1 steps; one
    value is its own area (a flat curve); no value gives NaN. The CVPR 2025 challenge reports the
    unnormalised trapezoid (`scipy.integrate.cumulative_trapezoid(values, np.arange(n))[-1]`), i.e. this
    times n - 1.
    """
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return math.nan
    if v.size == 1:
        return float(v[0])
    return float((v[:-1] + v[1:]).sum() / 2.0 / (v.size - 1))


def number_of_clicks(ious: Sequence[float], threshold: float, max_clicks: int = NOC_MAX_CLICKS,
                     first_click: int = 0) -> tuple[int, bool]:
    """Clicks needed to reach IoU >= `threshold`, and whether it failed (RITM's NoC and NoF).

    Args:
        ious: IoU after each step in order; `ious[i]` is after click `first_click + i` (0 = the box alone).
        threshold: the IoU to reach, e.g. 0.85.
        max_clicks: the budget; steps after it are ignored.
        first_click: the click count of `ious[0]`: 0 with a box (the box alone can reach it), 1 click-only.
    Returns:
        (clicks, failed): the first click count whose IoU reaches the threshold, or (`max_clicks`, True)
        when none within the budget does.
    """
    for i, value in enumerate(ious):
        n = first_click + i
        if n > max_clicks:
            break
        if value >= threshold:
            return n, False
    return int(max_clicks), True


def noc_name(threshold: float) -> str:
    """Column name of NoC at an IoU threshold: 0.85 -> "noc85"."""
    return f"noc{round(threshold * 100)}"


def object_metrics(steps: Sequence[dict[str, Any]], clicks: int, box: bool,
                   thresholds: Iterable[float] = NOC_THRESHOLDS, noc_max_clicks: int = NOC_MAX_CLICKS) -> dict[str, float]:
    """One object's summary from its step records (dicts with "step", "dice", "iou", "nsd"; steps in order).

    Returns dice_<s> / nsd_<s> / iou_<s> for the protocol's steps (0..k with a box, 1..k click-only),
    dsc_auc / nsd_auc (over clicks 1..k), final_dice / final_nsd (the last protocol step), and per
    threshold noc<t> and nof<t> (1.0 when the threshold was not reached within `noc_max_clicks`).
    """
    by_step = {int(r["step"]): r for r in steps}
    curve = list(range(0 if box else 1, clicks + 1))
    out: dict[str, float] = {}
    for s in curve:
        for name in ("dice", "nsd", "iou"):
            out[f"{name}_{s}"] = float(by_step[s][name])
    click_steps = [s for s in curve if s >= 1]
    out["dsc_auc"] = normalised_auc([by_step[s]["dice"] for s in click_steps])
    out["nsd_auc"] = normalised_auc([by_step[s]["nsd"] for s in click_steps])
    out["final_dice"] = float(by_step[curve[-1]]["dice"]) if curve else math.nan
    out["final_nsd"] = float(by_step[curve[-1]]["nsd"]) if curve else math.nan
    ordered = [by_step[s]["iou"] for s in sorted(by_step)]
    first = min(by_step)
    for t in thresholds:
        n, failed = number_of_clicks(ordered, t, noc_max_clicks, first_click=first)
        out[noc_name(t)] = float(n)
        out["nof" + noc_name(t)[3:]] = float(failed)
    return out


# -- sessions -------------------------------------------------------------------------------------------
class PromptSession:
    """An interactive episode with any promptable tool that has no session of its own (2D case).

    Every prompt sends the box, all clicks so far and (when the tool takes ``mask_logits`` and
    `use_previous_logits`) the previous prediction's logits, like `SamSession`.
    """

    def __init__(self, tool: Tool, case: Case, use_previous_logits: bool = True) -> None:
        self.tool, self.case = tool, case
        self.use_previous_logits = bool(use_previous_logits)
        self.box: np.ndarray | None = None
        self.points: list[tuple[float, float]] = []
        self.labels: list[int] = []
        self.prediction: Prediction | None = None

    def _run(self) -> Prediction:
        inputs: dict[str, Any] = {}
        if self.box is not None:
            inputs["boxes"] = self.box[None]
        if self.points:
            inputs["points"] = np.asarray(self.points, dtype=np.float32)
            inputs["point_labels"] = np.asarray(self.labels, dtype=np.int64)
        if (self.use_previous_logits and "mask_logits" in self.tool.inputs and self.prediction is not None
                and self.prediction.logits is not None):
            inputs["mask_logits"] = self.prediction.logits
        self.prediction = self.tool.predict(self.case, **inputs)
        return self.prediction

    def set_box(self, box: Sequence[float]) -> Prediction:
        self.box = np.asarray(box, dtype=np.float32).reshape(4)
        return self._run()

    def add_point(self, point: Sequence[float], positive: bool = True) -> Prediction:
        self.points.append((float(point[0]), float(point[1])))
        self.labels.append(int(bool(positive)))
        return self._run()


def _session(tool: Tool, case: Case, use_previous_logits: bool) -> Any:
    make = getattr(tool, "session", None)
    if callable(make):
        return make(case, use_previous_logits=use_previous_logits)
    return PromptSession(tool, case, use_previous_logits)


# -- one object -----------------------------------------------------------------------------------------
def _run_object(tool: Tool, case: Case, target: np.ndarray, *, clicks: int, box: bool, noc_steps: int,
                stop_iou: float, tolerance_mm: float, rng: np.random.Generator,
                use_previous_logits: bool) -> list[dict[str, Any]]:
    """Step records of one object: box (step 0) then clicks, until both the curve and NoC are decided."""
    if case.ndim == 2:
        axis = None
        planes = [(None, case, target)]
    else:
        axis = case.default_slice_axis()
        planes = [(i, case.slice(i, axis), np.take(target, i, axis=axis))
                  for i in range(case.shape[axis]) if np.take(target, i, axis=axis).any()]
    sessions = [_session(tool, c, use_previous_logits) for _, c, _ in planes]
    masks = [np.zeros(t.shape, bool) for _, _, t in planes]

    def volume() -> np.ndarray:
        if axis is None:
            return masks[0]
        out = np.zeros(case.shape, bool)
        for (index, _, _), m in zip(planes, masks):
            where: list[Any] = [slice(None)] * 3
            where[axis] = index
            out[tuple(where)] = m
        return out

    def record(step: int, placed: list[list[int]], seconds: float) -> dict[str, Any]:
        pred = volume()
        names = ("dice", "iou", "nsd") if step <= clicks else ("dice", "iou")
        values = binary_metrics(pred, target, case.spacing, names, tolerance_mm=tolerance_mm)
        return {"step": step, "prompt": "box" if step == 0 else "click", "dice": values["dice"], "iou": values["iou"],
                "nsd": values.get("nsd", math.nan), "n_positive": sum(1 for c in placed if c[-1] == 1),
                "n_negative": sum(1 for c in placed if c[-1] == 0), "clicks": json.dumps(placed),
                "pred_voxels": int(pred.sum()), "time_s": seconds}

    records: list[dict[str, Any]] = []
    if box:
        start = time.perf_counter()
        for j, (_, _, t) in enumerate(planes):
            masks[j] = sessions[j].set_box(mask_box(t)).mask != 0
        records.append(record(0, [], time.perf_counter() - start))
    last = max(clicks, noc_steps)
    for step in range(1, last + 1):
        start = time.perf_counter()
        placed: list[list[int]] = []
        for j, (index, _, t) in enumerate(planes):
            click = next_click(masks[j], t, rng)
            if click is None:
                continue
            masks[j] = sessions[j].add_point(click.xy, click.positive).mask != 0
            where = list(click.index)
            if axis is not None:
                where.insert(axis, int(index))
            placed.append([*where, click.label])
        if not placed and records:  # no error left on any slice: nothing changes any more
            done = dict(records[-1])
            for s in range(step, clicks + 1):
                records.append({**done, "step": s, "prompt": "click", "n_positive": 0, "n_negative": 0,
                                "clicks": "[]", "time_s": 0.0})
            break
        records.append(record(step, placed, time.perf_counter() - start))
        if step >= clicks and records[-1]["iou"] >= stop_iou:  # curve done and every NoC threshold reached
            break
    return records


# -- objects of a dataset -----------------------------------------------------------------------------------
def _object_class(case: Case, mask: np.ndarray) -> tuple[int, str]:
    if case.label is None:
        return 1, case.class_names.get(1, "object")
    values = case.label[mask]
    values = values[values > 0]
    if values.size == 0:
        return 0, case.class_names.get(0, "background")
    c = int(np.bincount(values).argmax())
    return c, str(case.class_names.get(c, f"class {c}"))


def _targets(cases: Any, min_area: int, max_objects: int | None, seed: int,
             skipped: list[dict[str, str]]) -> list[tuple[int, int]]:
    """(case index, object index) of the objects to evaluate: all of them, or `max_objects` drawn with `seed`."""
    found: list[tuple[int, int]] = []
    for i in range(len(cases)):
        case = cases[i]
        if case.label is None and case.instances is None:
            skipped.append({"path": case.id, "reason": "case has no label"})
            continue
        found += [(i, j) for j, _ in enumerate(iter_objects(case, min_area))]
    if max_objects is None or max_objects >= len(found):
        return found
    rng = np.random.default_rng(seed)
    keep = sorted(int(k) for k in rng.choice(len(found), size=max_objects, replace=False))
    return [found[k] for k in keep]


def _object_unit(tool: Tool, ds: Dataset, case: Case, i: int, j: int, target: np.ndarray, *, clicks: int, box: bool,
                 seed: int, thresholds: tuple[float, ...], noc_steps: int, noc_max_clicks: int, tolerance_mm: float,
                 use_previous_logits: bool) -> dict[str, Any]:
    """One object, the unit of the interactive protocol: {"steps": [step rows], "object": its row or None,
    "skipped": [{"path", "reason"}] (the tool could not take it)}."""
    class_index, class_name = _object_class(case, target)
    base = {"method": tool.name, "dataset": ds.info.name, "case_id": case.id, "subject": case.subject or case.id,
            "class_index": class_index, "class_name": class_name, "modality": case.modality or ds.info.modality,
            "object_index": j, "object_id": f"{case.id}#{j}", "object_voxels": int(target.sum())}
    rng = np.random.default_rng((seed, i, j))  # same object, same clicks, whatever else is sampled
    seed_torch(seed, i, j)  # and the same torch draws for stochastic tools, whichever objects ran before
    try:
        records = _run_object(tool, case, target, clicks=clicks, box=box, noc_steps=noc_steps,
                              stop_iou=max(thresholds), tolerance_mm=tolerance_mm, rng=rng,
                              use_previous_logits=use_previous_logits)
    except MedagentError as exc:  # a tool that cannot take this object: record it, go on
        return {"steps": [], "object": None,
                "skipped": [{"path": base["object_id"], "reason": f"{type(exc).__name__}: {exc}"}]}
    summary = object_metrics(records, clicks, box, thresholds, noc_max_clicks)
    n_slices = 1 if case.ndim == 2 else int(np.count_nonzero(np.any(target, axis=tuple(
        a for a in range(3) if a != case.default_slice_axis()))))
    return {"steps": [{**base, **r, "in_curve": r["step"] <= clicks} for r in records],
            "object": {**base, **summary, "n_steps": len(records), "n_slices": n_slices,
                       "time_s": float(sum(r["time_s"] for r in records))},
            "skipped": []}


def _evaluate_dataset(tool: Tool, ds: Dataset, split: str, *, clicks: int, box: bool, max_objects: int | None,
                      min_area: int, seed: int, thresholds: tuple[float, ...], noc_max_clicks: int,
                      tolerance_mm: float, use_previous_logits: bool, progress: bool,
                      skipped: list[dict[str, str]], log: UnitLog | None = None,
                      ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Step rows and object rows of one dataset's chosen objects; objects already in `log` (unit
    "<dataset>/<case index>/<object index>") are read back, the others run and appended to it."""
    cases = ds.cases(split)
    chosen = _targets(cases, min_area, max_objects, seed, skipped)
    by_case: dict[int, list[int]] = {}
    for i, j in chosen:
        by_case.setdefault(i, []).append(j)
    step_rows: list[dict[str, Any]] = []
    object_rows: list[dict[str, Any]] = []
    # the NoC budget in steps: with a box, 20 clicks after it; click-only, clicks 1..20
    noc_steps = noc_max_clicks
    description = f"interactive {tool.name} on {ds.info.name}/{split}"
    with UnitProgress(description, total=len(chosen), figure="final Dice", enabled=progress) as bar:
        for i, wanted in by_case.items():
            keys = {j: f"{ds.info.name}/{i}/{j}" for j in wanted}
            pending = [j for j in wanted if log is None or keys[j] not in log]
            case = cases[i] if pending else None  # a case whose objects are all finished is not even loaded
            objects = list(iter_objects(case, min_area)) if pending else []
            for j in wanted:
                record = log.get(keys[j]) if log is not None else None
                if record is None:
                    record = roundtrip(_object_unit(
                        tool, ds, case, i, j, objects[j], clicks=clicks, box=box, seed=seed, thresholds=thresholds,
                        noc_steps=noc_steps, noc_max_clicks=noc_max_clicks, tolerance_mm=tolerance_mm,
                        use_previous_logits=use_previous_logits))
                    if log is not None:
                        log.add(keys[j], record)
                    report = bar.advance
                else:
                    report = bar.restored
                step_rows += record["steps"]
                skipped += record["skipped"]
                if record["object"] is not None:
                    object_rows.append(record["object"])
                report(record["object"]["final_dice"] if record["object"] is not None else None)
    return step_rows, object_rows


# -- summaries ------------------------------------------------------------------------------------------
def _cells(part: Any, metrics: Sequence[str], seed: int, n_resamples: int) -> dict[str, Any]:
    groups = (part["dataset"].astype(str) + "/" + part["subject"].astype(str)).to_numpy()
    out = {}
    for name in metrics:
        values = part[name].to_numpy(dtype=np.float64)
        mean, lo, hi = bootstrap_ci(values, groups, n_resamples=n_resamples, seed=seed)
        out[name] = {"mean": mean, "ci95": [lo, hi], "n": int(np.isfinite(values).sum()),
                     "n_nan": int(np.isnan(values).sum())}
    return out


def _group(objects: Any, column: str, metrics: Sequence[str], seed: int, n_resamples: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, part in objects.groupby(column, sort=False):
        subjects = (part["dataset"].astype(str) + "/" + part["subject"].astype(str)).nunique()  # the bootstrap's groups
        cell: dict[str, Any] = {"objects": int(len(part)), "subjects": int(subjects)}
        if column == "dataset":
            cell["modality"] = str(part["modality"].iloc[0])
        else:
            cell["datasets"] = sorted(str(d) for d in part["dataset"].unique())
        cell["metrics"] = _cells(part, metrics, seed, n_resamples)
        out[str(key)] = cell
    return out


@dataclass
class InteractiveReport:
    """What `evaluate_interactive` wrote and measured.

    Attributes:
        results: results.json in the run folder.
        run_dir: the run folder.
        protocol: the protocol's settings (also in results.json).
        by_dataset: {dataset: {"modality", "objects", "subjects", "metrics": {metric: {"mean", "ci95", "n", "n_nan"}}}}.
        by_modality: {modality: {"datasets", "objects", "subjects", "metrics": {...}}}.
        objects: one row per object (DataFrame, objects.parquet).
        steps: one row per object per step (DataFrame, cases.parquet).
        skipped: [{"path", "reason"}].
        report: report.html in the run folder (`medagent.eval.report`).
    """

    results: Path
    run_dir: Path
    protocol: dict[str, Any]
    by_dataset: dict[str, Any]
    by_modality: dict[str, Any]
    objects: Any
    steps: Any
    skipped: list[dict[str, str]] = field(default_factory=list)
    report: Path | None = None

    @property
    def curve_steps(self) -> list[int]:
        return list(self.protocol["curve_steps"])


def _datasets(dataset: Any, data_dir: Any, seed: int) -> list[Dataset]:
    from medagent.data.sources import open_dataset

    if (dataset is None) == (data_dir is None):
        raise ConfigError("give exactly one of dataset= (a builtin name, a Dataset, or a list of them) or data_dir=")
    if data_dir is not None:
        return [open_dataset(data_dir, seed=seed)]
    if isinstance(dataset, (str, Dataset)):
        dataset = [dataset]
    out = []
    for d in dataset:
        if isinstance(d, Dataset):
            out.append(d)
        elif str(d) == "all":
            from medagent.data.builtin import BUILTIN_DATASETS

            out += [open_dataset(name, seed=seed) for name in BUILTIN_DATASETS]
        else:
            out.append(open_dataset(d, seed=seed))
    if not out:
        raise ConfigError("no dataset to evaluate")
    return out


def evaluate_interactive(
    tool: str | Tool,
    dataset: str | Dataset | Sequence[str | Dataset] | None = None,
    data_dir: str | Path | None = None,
    split: str = "test",
    clicks: int = 5,
    box: bool = True,
    max_objects: int | None = None,
    min_area: int = 16,
    seed: int = 0,
    checkpoint: str | None = None,
    tool_config: dict[str, Any] | None = None,
    tolerance_mm: float = 2.0,
    noc_thresholds: Sequence[float] = NOC_THRESHOLDS,
    noc_max_clicks: int = NOC_MAX_CLICKS,
    use_previous_logits: bool = True,
    n_resamples: int = 2000,
    run_root: str | Path = "medagent-runs",
    json_out: str | Path | None = None,
    progress: bool = True,
    resume: str | Path | None = None,
    on_run: Callable[[Path], None] | None = None,
) -> InteractiveReport:
    """Run the interactive protocol (module docstring) with a promptable tool and write a run folder.

    Args:
        tool: a registry name (built with `checkpoint` and `tool_config`) or a `Tool` that takes ``points``
            (and ``boxes`` when `box`); tools with a ``session(case, use_previous_logits=)`` method (sam)
            run through it, others through `PromptSession`.
        dataset: a builtin dataset name, "all" (every builtin dataset), a `Dataset`, or a list of these.
        data_dir: a dataset folder instead (nnU-Net/MSD, images + labels, YOLO).
        split: the split to evaluate ("test", ..., or "all").
        clicks: k, the corrective clicks of the curve (>= 1).
        box: start from the tight box (step 0); False is the click-only variant.
        max_objects: at most this many objects per dataset, drawn with `seed`.
        min_area: smallest object, in pixels (voxels in 3D).
        seed: object sampling, click tie-breaks and, when torch is loaded, `torch.manual_seed` (per object, from
            (seed, case index, object index), so an object does not depend on those evaluated before it).
        tolerance_mm: NSD tolerance (2 mm, the challenge's).
        noc_thresholds, noc_max_clicks: NoC's IoU thresholds and click budget (0.85, 0.90; 20).
        use_previous_logits: send the tool's previous logits with every prompt (the session default).
        n_resamples: bootstrap resamples.
        run_root: where the run folder goes; json_out: also copy results.json here.
        progress: show a progress bar with the running mean final Dice and an ETA (only on a terminal).
        resume: the run folder of an interrupted evaluation with the same settings (`medagent.eval.resume.open_run`)
            to continue: the objects in its partial.jsonl (one line per finished object, removed once results.json
            is written) are read back, not run again, and the results equal an uninterrupted run's.
        on_run: called with the run folder once it exists (the CLI prints it, so a killed run can be resumed).
    Returns:
        `InteractiveReport`.
    """
    import pandas as pd

    if clicks < 1:
        raise ConfigError(f"clicks must be >= 1, got {clicks}")
    if max_objects is not None and max_objects < 1:
        raise ConfigError(f"max_objects must be >= 1, got {max_objects}")
    if noc_max_clicks < 1:
        raise ConfigError(f"noc_max_clicks must be >= 1, got {noc_max_clicks}")
    thresholds = tuple(float(t) for t in noc_thresholds)
    if not thresholds or not all(0 < t <= 1 for t in thresholds):
        raise ConfigError(f"noc_thresholds must be IoUs in (0, 1], got {noc_thresholds}")
    datasets = _datasets(dataset, data_dir, seed)
    if isinstance(tool, str):
        from medagent.tools.registry import load_tool

        tool_obj = load_tool(tool, checkpoint=checkpoint, **(tool_config or {}))
    else:
        tool_obj = tool
    if "points" not in tool_obj.inputs:
        raise ConfigError(f"the interactive protocol needs a tool that takes clicks (points); {tool_obj.name!r} "
                          f"accepts {sorted(tool_obj.inputs) or 'no inputs'}")
    if box and "boxes" not in tool_obj.inputs:
        raise ConfigError(f"tool {tool_obj.name!r} takes no boxes: run the click-only variant (box=False)")
    curve_steps = list(range(0 if box else 1, clicks + 1))
    protocol = {
        "name": "box + k clicks" if box else "k clicks (click-only)", "box": box, "clicks": clicks,
        "curve_steps": curve_steps, "auc_steps": [s for s in curve_steps if s >= 1],
        "auc": "trapezoid over the click steps with unit spacing, divided by (k - 1)",
        "click_rule": "medagent.tools.clicker.next_click: EDT maximum of the largest connected error component "
                      "(8-/26-connected), label = ground truth there, ties drawn with rng (seed, case, object)",
        "noc_thresholds": list(thresholds), "noc_max_clicks": noc_max_clicks,
        "noc_counts": "clicks after the box (0 = box alone)" if box else "clicks including the first (RITM)",
        "tolerance_mm": tolerance_mm, "min_area": min_area, "use_previous_logits": use_previous_logits,
        "split": split, "max_objects": max_objects, "objects": "medagent.tools.sam.prompts.iter_objects",
        "volumes": "slice-wise along Case.default_slice_axis over the slices holding the object",
    }
    config = {
        "tool": tool_obj.name, "tool_kind": tool_obj.kind.value, "checkpoint": checkpoint, "tool_config": tool_config or {},
        "datasets": [d.info.name for d in datasets], "dataset_sources": [d.info.source for d in datasets],
        "label_origins": [d.info.label_origin for d in datasets], "n_resamples": n_resamples, **protocol,
    }
    refuse_stateful(tool_obj, resume)
    run = open_run("eval interactive", config, seed, root=run_root, resume=resume)
    if on_run is not None:
        on_run(run.path)
    log = UnitLog(run.file(PARTIAL_NAME))
    skipped: list[dict[str, str]] = []
    for ds in datasets:
        skipped += [{"path": s.path, "reason": s.reason} for s in ds.skipped]
    step_rows: list[dict[str, Any]] = []
    object_rows: list[dict[str, Any]] = []
    for ds in datasets:
        start = time.perf_counter()
        n_skipped = len(skipped)
        s_rows, o_rows = _evaluate_dataset(
            tool_obj, ds, split, clicks=clicks, box=box, max_objects=max_objects, min_area=min_area, seed=seed,
            thresholds=thresholds, noc_max_clicks=noc_max_clicks, tolerance_mm=tolerance_mm,
            use_previous_logits=use_previous_logits, progress=progress, skipped=skipped, log=log)
        step_rows += s_rows
        object_rows += o_rows
        run.log(step=None, event="evaluated", dataset=ds.info.name, objects=len(o_rows),
                skipped=len(skipped) - n_skipped, seconds=round(time.perf_counter() - start, 3))

    base_cols = list(CASE_COLUMNS) + ["modality", "object_index", "object_id", "object_voxels"]
    metric_cols = ([f"{m}_{s}" for m in ("dice", "nsd", "iou") for s in curve_steps]
                   + ["dsc_auc", "nsd_auc", "final_dice", "final_nsd"]
                   + [c for t in thresholds for c in (noc_name(t), "nof" + noc_name(t)[3:])])
    objects = pd.DataFrame(object_rows, columns=base_cols + metric_cols + ["n_steps", "n_slices", "time_s"])
    step_cols = base_cols + ["step", "prompt", "in_curve", "dice", "iou", "nsd", "n_positive", "n_negative",
                             "clicks", "pred_voxels", "time_s"]
    steps = pd.DataFrame(step_rows, columns=step_cols)

    by_dataset = _group(objects, "dataset", metric_cols, seed, n_resamples) if len(objects) else {}
    by_modality = _group(objects, "modality", metric_cols, seed, n_resamples) if len(objects) else {}
    summary = summarize(objects, seed=seed, metrics=metric_cols, n_resamples=n_resamples) if len(objects) else {}
    curves = {name: {"steps": curve_steps,
                     **{m: [cell["metrics"][f"{m}_{s}"]["mean"] for s in curve_steps] for m in ("dice", "nsd", "iou")}}
              for name, cell in by_dataset.items()}
    objects_path = run.file("objects.parquet")
    objects.to_parquet(objects_path, index=False)
    path = run.write_results(summary, cases=steps, skipped=skipped, extra={
        "split": split, "protocol": protocol, "by_dataset": by_dataset, "by_modality": by_modality,
        "curves": curves, "objects": objects_path.name})
    if json_out is not None:
        dest = copy_results(path, json_out)
        data = json.loads(Path(dest).read_text(encoding="utf-8"))
        data["objects"] = os.path.relpath(objects_path.resolve(), Path(dest).parent.resolve())
        write_json(dest, data)
    log.remove()  # objects.parquet and cases.parquet now hold every object
    report = write_report(run.path)
    return InteractiveReport(results=path, run_dir=run.path, protocol=protocol, by_dataset=by_dataset,
                             by_modality=by_modality, objects=objects, steps=steps, skipped=skipped, report=report)


# -- the table the CLI prints ----------------------------------------------------------------------------
def interactive_table(report: InteractiveReport, title: str | None = None) -> Any:
    """A rich table: per dataset (and per modality when it pools several datasets) objects and subjects, Dice
    at each curve step, DSC-AUC, NSD-AUC, NoC@85 / NoC@90: means, with their 95% bootstrap intervals underneath
    (resampled by subject: with few subjects the intervals are narrow and not to be trusted)."""
    from rich.table import Table

    steps = report.curve_steps
    thresholds = report.protocol["noc_thresholds"]
    table = Table(title=title, show_lines=True)
    table.add_column("dataset")
    table.add_column("objects\nsubjects", justify="right")
    for s in steps:
        table.add_column("Dice box" if s == 0 else f"Dice c{s}", justify="right")
    table.add_column("DSC-AUC", justify="right")
    table.add_column("NSD-AUC", justify="right")
    for t in thresholds:
        table.add_column(f"NoC@{round(t * 100)}", justify="right")
    metrics = [f"dice_{s}" for s in steps] + ["dsc_auc", "nsd_auc"] + [noc_name(t) for t in thresholds]

    def fmt(cell: dict[str, Any], noc: bool) -> str:
        if cell["mean"] is None:
            return "-"
        lo, hi = cell["ci95"]
        return f"{cell['mean']:.1f}\n{lo:.1f}-{hi:.1f}" if noc else f"{cell['mean']:.3f}\n{lo:.2f}-{hi:.2f}"

    def row(label: str, cell: dict[str, Any]) -> None:
        table.add_row(label, f"{cell['objects']}\n{cell['subjects']}", *(fmt(cell["metrics"][m], m.startswith("noc")) for m in metrics))

    for name, cell in report.by_dataset.items():
        row(f"{name}\n{cell['modality']}", cell)
    for modality, cell in report.by_modality.items():
        if len(cell["datasets"]) > 1:
            row(f"all {modality}\n{len(cell['datasets'])} datasets", cell)
    return table
