"""Continual test-time adaptation streams: run, score and summarise the adaptive tools (the CTTA evaluator).

Protocol (METHODS.md section 3): the source model is trained on the clean centre "A"; the target centres
(default B -> C -> D -> E, from `medagent.data.shifts`) are streamed in that order, one image at a time
(batch 1), with no reset between centres (continual mode; `episodic=True` resets the tool at every
centre change), for `rounds` repetitions of the same stream. Every image is scored on the prediction
made after adapting to it. Forgetting: the tool's mean Dice on the clean centre, run (adapting as usual)
from its state after the whole stream, minus the same from its fresh state.

Library entry point (the CLI calls it):
    evaluate_ctta(dataset, methods, rounds=3, ...) -> CTTAReport   # run folder + results JSON
Adapting a folder of a user's images without scores: `medagent.tools.tta.folder.adapt_folder`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medagent.data.case import Case
from medagent.errors import ConfigError
from medagent.tools.tta.folder import METHOD_ALIASES, build_method  # noqa: F401  (METHOD_ALIASES re-exported)

DEFAULT_CENTRES = ("B", "C", "D", "E")
#: Severity of the stream's shifts per dataset (calibrated so that the unadapted source loses >= 10 Dice
#: points from the clean centre to the worst centre; see docs/ctta.md). Others default to 3.
DEFAULT_SEVERITY: dict[str, float] = {"mni-tissue": 3.0, "nuclei": 3.0}


@dataclass
class ImageScore:
    """One scored image of a stream."""

    method: str
    centre: str
    round: int
    position: int
    case_id: str
    subject: str
    dice: dict[str, float]
    seconds: float
    phase: str = "stream"

    @property
    def mean_dice(self) -> float:
        return float(np.mean(list(self.dice.values()))) if self.dice else float("nan")


def score_case(mask: np.ndarray, case: Case, classes: Sequence[int], class_names: dict[int, str]) -> dict[str, float]:
    """Dice of each foreground class (by name) of `mask` against `case.label` (`medagent.metrics.per_class`)."""
    from medagent.metrics import per_class

    result = per_class(mask, case.label, classes=list(classes), metrics=("dice",))
    return {class_names.get(c, str(c)): float(result[c]["dice"]) for c in classes}


def run_stream(tool: Any, items: Iterable[Any], classes: Sequence[int], class_names: dict[int, str], method: str | None = None,
               episodic: bool = False, phase: str = "stream", on_score: Callable[[ImageScore], None] | None = None,
               skipped: list[dict[str, str]] | None = None) -> list[ImageScore]:
    """Feed `items` (StreamItems, or Cases taken as one centre "A", round 0) to `tool` in order and score each.

    Args:
        tool: an adaptive tool (`predict(case)`, `reset()`).
        items: `medagent.data.shifts.StreamItem`s or labelled `Case`s.
        classes: foreground class indices to score.
        episodic: reset the tool whenever the centre changes.
        on_score: called with every `ImageScore` (progress, logging).
        skipped: list that receives {"path", "reason"} of images the tool skipped.
    """
    method = method or tool.name
    scores: list[ImageScore] = []
    previous = None
    for pos, item in enumerate(items):
        if isinstance(item, Case):
            case, centre, rnd = item, "A", 0
        else:
            case, centre, rnd, pos = item.case, item.centre, item.round, item.position
        if episodic and previous is not None and centre != previous:
            tool.reset()
        previous = centre
        start = time.perf_counter()
        pred = tool.predict(case)
        seconds = time.perf_counter() - start
        if pred.extras.get("skipped"):
            if skipped is not None:
                skipped.append({"path": f"{centre}/r{rnd}/{case.id}", "reason": str(pred.extras["skipped"])})
            continue
        subject = str(case.subject or case.id) if hasattr(case, "subject") else case.id
        score = ImageScore(method, centre, rnd, pos, case.id, subject, score_case(pred.mask, case, classes, class_names), seconds, phase)
        scores.append(score)
        if on_score is not None:
            on_score(score)
    return scores


# ----------------------------------------------------------------------------------------------
# summaries
# ----------------------------------------------------------------------------------------------
def _mean(values: Iterable[float]) -> float | None:
    v = [x for x in values if np.isfinite(x)]
    return float(np.mean(v)) if v else None


def summarize_stream(scores: list[ImageScore], clean_before: list[ImageScore] | None = None,
                     clean_after: list[ImageScore] | None = None) -> dict[str, Any]:
    """Per-centre, per-round, per-(round, centre) and overall mean Dice (mean over classes, then images),
    degradation (round 1 minus last round; positive = lost), forgetting (clean after - before) and the
    mean seconds per image."""
    stream = [s for s in scores if s.phase == "stream"]
    centres = list(dict.fromkeys(s.centre for s in stream))
    rounds = sorted({s.round for s in stream})
    out: dict[str, Any] = {
        "overall": _mean(s.mean_dice for s in stream),
        "per_centre": {c: _mean(s.mean_dice for s in stream if s.centre == c) for c in centres},
        "per_round": {str(r + 1): _mean(s.mean_dice for s in stream if s.round == r) for r in rounds},
        "per_round_centre": {str(r + 1): {c: _mean(s.mean_dice for s in stream if s.round == r and s.centre == c) for c in centres} for r in rounds},
        "seconds_per_image": _mean(s.seconds for s in stream),
        "images": len(stream),
    }
    first, last = out["per_round"].get("1"), out["per_round"].get(str(rounds[-1] + 1)) if rounds else None
    out["degradation"] = None if first is None or last is None or len(rounds) < 2 else first - last
    if clean_before is not None and clean_after is not None:
        before, after = _mean(s.mean_dice for s in clean_before), _mean(s.mean_dice for s in clean_after)
        out["clean_before"], out["clean_after"] = before, after
        out["forgetting"] = None if before is None or after is None else after - before
    return out


# ----------------------------------------------------------------------------------------------
# evaluation
# ----------------------------------------------------------------------------------------------
@dataclass
class CTTAReport:
    """What `evaluate_ctta` returns.

    Attributes:
        run_dir: the run folder (config.json, versions.json, metrics.jsonl, results.json, cases.parquet, report.html).
        results: path of results.json (shared results shape; the CTTA tables are under its "ctta" key).
        ctta: {method: summarize_stream(...) + "relative_cost"}, plus "_source": the unadapted drop.
        report: report.html in the run folder (`medagent.eval.report`).
    """

    run_dir: Path
    results: Path
    ctta: dict[str, Any] = field(default_factory=dict)
    report: Path | None = None


def _pick(n: int, max_cases: int | None, seed: int) -> list[int]:
    if max_cases is None or max_cases >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(int(i) for i in rng.choice(n, size=max_cases, replace=False))


def evaluate_ctta(
    dataset: str,
    methods: Sequence[str] = ("noadapt", "tent", "cotta", "vptta", "mgipt"),
    rounds: int = 3,
    centres: Sequence[str] | None = None,
    seed: int = 0,
    episodic: bool = False,
    json_out: str | Path | None = None,
    run_root: str | Path = "medagent-runs",
    severity: float | None = None,
    max_cases: int | None = None,
    split: str = "test",
    checkpoint: str | None = None,
    configs: dict[str, Any] | None = None,
    forgetting: bool = True,
    progress: bool = True,
    device: str = "cpu",
) -> CTTAReport:
    """Run every method over the same continual stream of `dataset` and write a run folder.

    Args:
        dataset: builtin dataset name; the source model is the shipped `ctta-source-<dataset>` unless
            `checkpoint` (a segmenter checkpoint folder trained on the clean data) is given.
        methods: registry names (noadapt, tent, cotta, vptta, mgipt) or "mgipt-reduced".
        rounds: repetitions of the centre sequence.
        centres: target centres in stream order (default B, C, D, E).
        seed: seeds the shifts, the case subsample and every tool.
        episodic: reset each tool at every centre change (comparison mode).
        json_out: also copy the results JSON here.
        run_root: parent folder of the run folder.
        severity: shift severity 1-5 (default `DEFAULT_SEVERITY[dataset]`, else 3).
        max_cases: use at most this many cases of `split` per centre (a seeded subsample; None = all).
        split: dataset split streamed.
        configs: {method: config dataclass or dict of overrides}.
        forgetting: also run the clean centre before and after the stream.
        progress: print one line per method and centre.
    Returns:
        `CTTAReport` with the run folder, the results path and the per-method summaries.
    """
    import pandas as pd

    from medagent.data.builtin import load_builtin
    from medagent.data.shifts import build_stream
    from medagent.eval.report import write_report
    from medagent.eval.results import copy_results, summarize
    from medagent.eval.runs import RunFolder

    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    if not methods:
        raise ConfigError("evaluate_ctta needs at least one method")
    centres = tuple(centres or DEFAULT_CENTRES)
    severity = float(severity if severity is not None else DEFAULT_SEVERITY.get(dataset, 3.0))
    configs = dict(configs or {})
    ds = load_builtin(dataset, seed=seed) if _seeded(dataset) else load_builtin(dataset)
    info = ds.info
    classes = [c for c in sorted(info.class_names) if c != 0]
    names = dict(info.class_names)
    cases = ds.cases(split)
    keep = set(_pick(len(cases), max_cases, seed))
    stream = [it for it in build_stream(ds, centres=centres, rounds=rounds, seed=seed, split=split, severity=severity) if it.index in keep]
    clean = [cases[i] for i in sorted(keep)] if forgetting or "noadapt" in methods else []
    run_config = {"dataset": dataset, "methods": list(methods), "rounds": rounds, "centres": list(centres), "episodic": episodic,
                  "severity": severity, "max_cases": max_cases, "split": split, "checkpoint": checkpoint,
                  "configs": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in configs.items()}}
    run = RunFolder.create("eval ctta", run_config, seed, root=run_root)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    report: dict[str, Any] = {}
    for method in methods:
        tool = build_method(method, dataset=None if checkpoint else dataset, checkpoint=checkpoint, config=_with_seed(configs.get(method), seed, method), device=device)
        before = after = None
        if forgetting:
            before = run_stream(tool, clean, classes, names, method, phase="clean_before")
            tool.reset()
        started = time.perf_counter()
        scores = run_stream(tool, stream, classes, names, method, episodic=episodic, skipped=skipped)
        if forgetting:
            after = run_stream(tool, clean, classes, names, method, phase="clean_after")
        summary = summarize_stream(scores, before, after)
        summary["wall_seconds"] = time.perf_counter() - started
        report[method] = summary
        run.log(method=method, **{k: v for k, v in summary.items() if not isinstance(v, dict)})
        if progress:
            per_c = " ".join(f"{c}={v:.3f}" for c, v in summary["per_centre"].items() if v is not None)
            print(f"[ctta] {dataset} {method}: overall {summary['overall']:.4f} | {per_c} | {summary['seconds_per_image']:.3f} s/img", flush=True)
        for s in [*(before or []), *scores, *(after or [])]:
            for cls in classes:
                rows.append({"method": method, "dataset": dataset if s.phase == "stream" else f"{dataset}@A-{s.phase}",
                             "case_id": s.case_id, "subject": s.subject, "class_index": cls, "class_name": names[cls],
                             "dice": s.dice[names[cls]], "centre": s.centre, "round": s.round + 1, "position": s.position,
                             "phase": s.phase, "seconds": s.seconds})
    base = report.get("noadapt", {}).get("seconds_per_image")
    for summary in report.values():
        summary["relative_cost"] = None if not base or summary.get("seconds_per_image") is None else summary["seconds_per_image"] / base
    if "noadapt" in report:
        na = report["noadapt"]
        clean_dice = na.get("clean_before")
        worst = min((v for v in na["per_centre"].values() if v is not None), default=None)
        report["_source"] = {"clean": clean_dice, "worst_centre": worst, "drop": None if clean_dice is None or worst is None else clean_dice - worst,
                             "severity": severity}
    df = pd.DataFrame(rows)
    summary = summarize(df, seed=seed, metrics=("dice",)) if len(df) else {}
    results = run.write_results(summary, cases=df if len(df) else None, skipped=skipped, extra={"ctta": report})
    html = write_report(run.path)
    if json_out is not None:
        copy_results(results, json_out)
    return CTTAReport(run_dir=run.path, results=results, ctta=report, report=html)


def _seeded(dataset: str) -> bool:
    from medagent.data.builtin import BUILTIN_DATASETS

    spec = BUILTIN_DATASETS.get(dataset)
    return bool(spec and spec.seeded)


def _with_seed(config: Any, seed: int, method: str) -> Any:
    """The method's config with `seed` set unless the caller set one."""
    if config is None:
        return {"seed": seed}
    if dataclasses.is_dataclass(config):
        return config
    out = dict(config)
    out.setdefault("seed", seed)
    return out
