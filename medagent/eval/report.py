"""Self-contained HTML reports of run folders: `write_report(run_folder)` writes ``<run_folder>/report.html``.

The page opens offline from the file: CSS and a few lines of JavaScript are inline, every image (matplotlib
plots, Agg; the trajectory viewer's frames) is an embedded base64 PNG, and nothing is fetched (no external
script, stylesheet, font or image). What it shows depends on what the run folder holds:

- every evaluation (results.json + cases.parquet): the run's command, seed, versions and config; the summary
  table of results.json (per method, dataset and class: Dice, IoU, HD95, NSD, ASSD where present, with the
  file's 95% bootstrap intervals); means per method and dataset and per method and modality (pooled over
  classes, bootstrap over subjects with `medagent.eval.results.bootstrap_ci`, as results.json does) with the
  wall time per case; Dice distributions per dataset and per modality; the skipped files and why;
- agent runs (`eval agent`): turns, tool calls (counts per tool), invalid-action rate ((invalid calls + format
  failures) / (calls + format failures)), episode score and wall time per episode; Dice after each turn (an
  episode that ended keeps its last mask); the trajectory viewer of the recorded episodes (episodes/, see
  `medagent.eval.recording`): per episode the image with the mask after each turn, the call, the env's
  answer, Dice/IoU and the reward terms per turn, previous/next buttons and a turn counter, and the final
  mask (prompts drawn) beside the ground truth; on volumes (`medagent.eval.agent_volumes`) a 3D table beside
  the 2D one (per agent: slices played / holding the target, 3D Dice, IoU, NSD, HD95 of the reassembled masks,
  the per-slice means, calls per volume) and the 3D Dice distributions, the viewer showing each recorded
  volume's largest slice;
- interactive runs (`eval interactive`): the protocol, the per-dataset and per-modality tables of results.json
  (Dice per step, DSC-AUC, NSD-AUC, NoC, NoF) and Dice / NSD vs click curves with their intervals;
- CTTA runs (`eval ctta`): Dice per centre and round, degradation, forgetting and cost per method, and Dice
  along the stream;
- training runs (SFT, GRPO, tool trainers; `write_training_report`): loss, reward (and reward terms),
  validation and learning-rate curves from metrics.jsonl;
- folders inside the run folder that are runs themselves (the demo's CTTA and agent evaluations, its SFT and
  GRPO runs) as sections of the same page, and an overlays/ folder as a gallery.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from medagent.errors import ConfigError, DataError

__all__ = ["REPORT_NAME", "write_report", "write_training_report", "report_html", "training_curves"]

REPORT_NAME = "report.html"
#: Metric columns of the summary tables, in this order, when present.
SUMMARY_METRICS = ("dice", "iou", "hd95", "nsd", "assd", "turns", "episode_score")
#: Metrics shown for interactive runs (plus dice_<step> per curve step).
INTERACTIVE_METRICS = ("dsc_auc", "nsd_auc", "final_dice", "final_nsd")
#: Recorded episodes shown in the viewer, at most.
MAX_VIEWER_EPISODES = 12
#: Overlay PNGs of an overlays/ folder shown, at most.
MAX_GALLERY = 24
_CURVE_KEYS = re.compile(r"(^|/)(loss|train_loss|eval_loss|val_loss|reward|mean_dice)$")


# -- small HTML helpers --------------------------------------------------------------------------------------
class _Raw(str):
    """Text that is already HTML (not escaped again)."""


def _esc(value: Any) -> str:
    return value if isinstance(value, _Raw) else html.escape(str(value))


def _num(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "-" if v is None else f"{v:.{digits}f}"


def _stat(cell: dict[str, Any] | None, digits: int = 3) -> str:
    """A results.json metric cell as "mean [lo, hi]"."""
    if not cell or _num(cell.get("mean")) is None:
        return "-"
    text = _fmt(cell["mean"], digits)
    lo, hi = (cell.get("ci95") or [None, None])[:2]
    if _num(lo) is not None and _num(hi) is not None:
        text += f" [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
    return text


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None, cls: str = "") -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_esc(c)}</td>" for c in row) + "</tr>" for row in rows)
    cap = f"<caption>{_esc(caption)}</caption>" if caption else ""
    return f'<table class="{cls}">{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _img(png: bytes, alt: str, cls: str = "plot") -> str:
    return f'<img class="{cls}" alt="{_esc(alt)}" src="{_data_uri(png)}">'


def _section(title: str, body: str, level: int = 2, ident: str | None = None) -> str:
    anchor = f' id="{_esc(ident)}"' if ident else ""
    return f"<section{anchor}><h{level}>{_esc(title)}</h{level}>{body}</section>"


# -- plots (matplotlib's object API on the Agg canvas: no pyplot, no global backend) ----------------------------
def _figure(width: float = 7.0, height: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(fig: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _box_plot(df: Any, value: str, group: str, hue: str, title: str, ylabel: str = "Dice") -> bytes | None:
    """Box plots of `value` per `group` (x axis), one box per `hue` in each group; None without finite values."""
    data = df[[group, hue, value]].copy()
    data[value] = data[value].astype(float)
    data = data[np.isfinite(data[value].to_numpy())]
    if data.empty:
        return None
    groups = list(dict.fromkeys(data[group].astype(str)))
    hues = list(dict.fromkeys(data[hue].astype(str)))
    width = 0.8 / len(hues)
    fig = _figure(max(5.0, min(14.0, 1.2 + 0.55 * len(groups) * len(hues))), 3.8)
    ax = fig.add_subplot()
    colours = _colours(len(hues))
    for h, (name, colour) in enumerate(zip(hues, colours)):
        values, positions = [], []
        for g, gname in enumerate(groups):
            part = data[(data[group].astype(str) == gname) & (data[hue].astype(str) == name)][value].to_numpy()
            if part.size:
                values.append(part)
                positions.append(g + (h - (len(hues) - 1) / 2) * width)
        if not values:
            continue
        parts = ax.boxplot(values, positions=positions, widths=width * 0.9, patch_artist=True, showmeans=True,
                           manage_ticks=False, flierprops={"markersize": 3})
        for box in parts["boxes"]:
            box.set_facecolor(colour)
            box.set_alpha(0.75)
        ax.plot([], [], color=colour, linewidth=6, label=name)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if len(hues) > 1:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def _line_plot(series: list[dict[str, Any]], title: str, xlabel: str, ylabel: str, xticks: Sequence[Any] | None = None,
               xticklabels: Sequence[str] | None = None, width: float = 7.0) -> bytes | None:
    """Lines `{"label", "x", "y", optional "lo", "hi", "style"}`; None when no series has a finite point."""
    if not any(np.isfinite(np.asarray(s["y"], dtype=float)).any() for s in series if len(s["y"])):
        return None
    fig = _figure(width, 3.6)
    ax = fig.add_subplot()
    for s, colour in zip(series, _colours(len(series))):
        x = np.asarray(s["x"], dtype=float)
        y = np.asarray(s["y"], dtype=float)
        ax.plot(x, y, s.get("style", "-o"), color=colour, label=s["label"], markersize=3, linewidth=1.4)
        if s.get("lo") is not None and s.get("hi") is not None:
            ax.fill_between(x, np.asarray(s["lo"], float), np.asarray(s["hi"], float), color=colour, alpha=0.15)
    if xticks is not None:
        ax.set_xticks(list(xticks), list(xticklabels) if xticklabels is not None else None)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1 or series[0]["label"]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _png(fig)


def _plot_block(png: bytes | None, alt: str, caption: str) -> str:
    if png is None:
        return f"<p class='note'>{_esc(caption)}: no finite values to plot.</p>"
    return f"<figure>{_img(png, alt)}<figcaption>{_esc(caption)}</figcaption></figure>"


# -- reading a run folder --------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of an interrupted run
        if isinstance(record, dict):
            out.append(record)
    return out


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        else:
            out[name] = value
    return out


def training_curves(records: list[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """{key: (steps, values)} of every numeric key of metrics.jsonl records (nested keys joined with "/"),
    without the trainers' end-of-run summary line (the one with ``train_runtime``), steps from "step" (else
    the record's position)."""
    curves: dict[str, tuple[list[float], list[float]]] = {}
    for i, record in enumerate(records):
        if "train_runtime" in record or "event" in record:
            continue
        flat = _flatten(record)
        step = _num(flat.get("step"))
        step = float(i) if step is None else step
        for key, value in flat.items():
            if key in ("step", "time", "epoch") or isinstance(value, bool):
                continue
            v = _num(value)
            if v is None:
                continue
            xs, ys = curves.setdefault(key, ([], []))
            xs.append(step)
            ys.append(v)
    return curves


def _has_training_curves(folder: Path) -> bool:
    records = _read_jsonl(folder / "metrics.jsonl")
    return any(_CURVE_KEYS.search(k) for k in training_curves(records))


def _is_run(folder: Path) -> bool:
    return (folder / "results.json").exists() or ((folder / "config.json").exists() and _has_training_curves(folder))


def _load(folder: Path) -> tuple[Any, Any]:
    """(results.json dict or None, cases DataFrame or None)."""
    path = folder / "results.json"
    if not path.exists():
        return None, None
    from medagent.eval.results import load_results

    try:
        res = load_results(path)
    except DataError:
        data = _read_json(path)
        return data, None
    data = {"run": res.run, "summary": res.summary, "skipped": res.skipped, **res.extra}
    return data, res.cases


# -- sections ------------------------------------------------------------------------------------------------
def _header(folder: Path, results: dict[str, Any] | None, level: int) -> str:
    config = _read_json(folder / "config.json") or {}
    versions = _read_json(folder / "versions.json") or (results or {}).get("run", {}).get("versions") or {}
    command = config.get("command") or (results or {}).get("run", {}).get("command") or folder.name
    seed = config.get("seed", (results or {}).get("run", {}).get("seed"))
    git = versions.get("git") or {}
    packages = versions.get("packages") or {}
    facts = [("run folder", folder.name), ("command", command), ("seed", seed),
             ("medagent", packages.get("medagent", "-")), ("python", versions.get("python", "-")),
             ("git", (git.get("sha", "")[:12] + (" (dirty)" if git.get("dirty") else "")) if git else "-")]
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    shown = {k: v for k, v in config.items() if k not in ("command", "seed")}
    details = ""
    if shown:
        details += f"<details><summary>config.json</summary><pre>{_esc(json.dumps(shown, indent=2, default=str))}</pre></details>"
    if packages:
        details += ("<details><summary>package versions</summary><pre>"
                    + _esc("\n".join(f"{k} {v}" for k, v in sorted(packages.items()))) + "</pre></details>")
    return f"<dl class='facts'>{items}</dl>{details}"


def _summary_table(summary: dict[str, Any], metrics: Sequence[str]) -> str:
    present = [m for m in metrics if any(m in cell for ds in summary.values() for cls in ds.values() for cell in cls.values())]
    rows = []
    for method, datasets in summary.items():
        for dataset, classes in datasets.items():
            for class_name, cell in classes.items():
                first = next((cell[m] for m in present if m in cell), {})
                rows.append([method, dataset, class_name, first.get("n", "-"),
                             *[_stat(cell.get(m), 1 if m.startswith("noc") else 2 if m in ("hd95", "assd", "turns") else 3)
                               + (f" ({cell[m]['n_nan']} n/a)" if cell.get(m, {}).get("n_nan") else "") for m in present]])
    headers = ["method", "dataset", "class", "n", *[_metric_label(m) for m in present]]
    return _table(headers, rows, caption="results.json summary: mean [95% bootstrap interval over subjects]; "
                                         "n/a = rows without a finite value (a distance with one empty mask)")


def _metric_label(name: str) -> str:
    labels = {"dice": "Dice", "iou": "IoU", "hd95": "HD95 mm", "nsd": "NSD", "assd": "ASSD mm", "turns": "turns",
              "episode_score": "episode score", "dsc_auc": "DSC-AUC", "nsd_auc": "NSD-AUC", "final_dice": "final Dice",
              "final_nsd": "final NSD", "noc85": "NoC@85", "noc90": "NoC@90", "nof85": "NoF@85", "nof90": "NoF@90",
              "dice_3d": "3D Dice", "iou_3d": "3D IoU", "nsd_3d": "3D NSD", "hd95_3d": "3D HD95 mm"}
    if name in labels:
        return labels[name]
    m = re.fullmatch(r"(dice|nsd|iou)_(\d+)", name)
    if m:
        return f"{labels[m.group(1)]} {'box' if m.group(2) == '0' else 'c' + m.group(2)}"
    return name


def _groups(df: Any) -> Any:
    """Bootstrap group keys: dataset/subject (subject falls back to case_id)."""
    subject = df["subject"] if "subject" in df.columns else df["case_id"]
    subject = subject.where(subject.notna(), df["case_id"]) if "case_id" in df.columns else subject
    return (df["dataset"].astype(str) + "/" + subject.astype(str)).to_numpy()


def _pooled(df: Any, value: str, seed: int) -> str:
    from medagent.eval.results import bootstrap_ci

    if value not in df.columns:
        return "-"
    values = df[value].to_numpy(dtype=np.float64)
    mean, lo, hi = bootstrap_ci(values, _groups(df), seed=seed)
    digits = 2 if value in ("hd95", "assd", "turns", "hd95_3d") else 3
    return _stat({"mean": mean, "ci95": [lo, hi]}, digits)


def _seconds_per_case(df: Any) -> float | None:
    """Mean wall time per case: an automatic tool's time once per case (its classes share one call), else the sum."""
    column = "time_s" if "time_s" in df.columns else "seconds" if "seconds" in df.columns else None
    if column is None or "case_id" not in df.columns or df.empty:
        return None
    per_case = []
    for _, part in df.groupby(["dataset", "case_id"], sort=False):
        times = part[column].to_numpy(dtype=np.float64)
        automatic = "n_prompts" in part.columns and (part["n_prompts"].fillna(0) == 0).all()
        per_case.append(np.nanmax(times) if automatic else np.nansum(times))
    values = [v for v in per_case if np.isfinite(v)]
    return float(np.mean(values)) if values else None


def _modality_of(cases: Any, config: dict[str, Any]) -> Any:
    """The cases with a modality column (from the table, else the run's config, else "unknown")."""
    df = cases.copy()
    if "modality" not in df.columns:
        df["modality"] = config.get("modality") or "unknown"
    df["modality"] = df["modality"].fillna("unknown").astype(str)
    return df


def _pooled_tables(cases: Any, metrics: Sequence[str], seed: int, config: dict[str, Any]) -> str:
    df = _modality_of(cases, config)
    present = [m for m in metrics if m in df.columns]
    out = []
    for by, label in (("dataset", "dataset"), ("modality", "modality")):
        rows = []
        for (method, key), part in df.groupby(["method", by], sort=False):
            extra = [str(part["modality"].iloc[0])] if by == "dataset" else [", ".join(dict.fromkeys(part["dataset"].astype(str)))]
            cases_n = part["case_id"].nunique() if "case_id" in part.columns else len(part)
            rows.append([method, key, *extra, len(part), cases_n, *[_pooled(part, m, seed) for m in present],
                         _fmt(_seconds_per_case(part), 3)])
        headers = ["method", label, "modality" if by == "dataset" else "datasets", "rows", "cases",
                   *[_metric_label(m) for m in present], "s / case"]
        out.append(_table(headers, rows, caption=f"per method and {label}, all classes pooled: mean [95% bootstrap "
                                                 f"interval, whole subjects resampled]; wall time per case"))
    return "".join(out)


def _distributions(df: Any, value: str, hue: str, config: dict[str, Any], what: str) -> str:
    df = _modality_of(df, config)
    df = df.assign(_dataset=df["dataset"].astype(str) + "\n(" + df["modality"] + ")")
    blocks = [_plot_block(_box_plot(df, value, "_dataset", hue, f"{what} per dataset"), f"{what} per dataset",
                          f"{what} per dataset (box: quartiles, triangle: mean), one box per {hue}")]
    pooled = df.groupby("modality")["dataset"].nunique()
    if (pooled > 1).any():
        blocks.append(_plot_block(_box_plot(df, value, "modality", hue, f"{what} per modality"), f"{what} per modality",
                                  f"{what} per modality (datasets of one modality pooled)"))
    return "".join(blocks)


def _skipped(results: dict[str, Any]) -> str:
    skipped = results.get("skipped") or []
    if not skipped:
        return "<p class='note'>No file or case was skipped.</p>"
    rows = [[s.get("path", ""), s.get("reason", "")] for s in skipped[:500]]
    more = f" (first 500 of {len(skipped)})" if len(skipped) > 500 else ""
    return _table(["path", "reason"], rows, caption=f"{len(skipped)} skipped{more}")


def _tool_sections(results: dict[str, Any], cases: Any, seed: int, config: dict[str, Any], level: int) -> list[str]:
    out = [_section("Summary", _summary_table(results.get("summary") or {}, SUMMARY_METRICS), level + 1)]
    if cases is not None and len(cases) and "dice" in cases.columns:
        out.append(_section("By dataset and modality", _pooled_tables(cases, ("dice", "iou", "hd95", "nsd", "assd"), seed, config), level + 1))
        out.append(_section("Dice distributions", _distributions(cases, "dice", "method", config, "Dice"), level + 1))
    return out


# -- agent runs ------------------------------------------------------------------------------------------------
def _tool_counts(part: Any) -> str:
    total: dict[str, int] = {}
    for text in part.get("tool_counts", []):
        try:
            counts = json.loads(text) if isinstance(text, str) else {}
        except json.JSONDecodeError:
            counts = {}
        for name, n in counts.items():
            total[name] = total.get(name, 0) + int(n)
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items(), key=lambda kv: -kv[1])) or "-"


def _invalid_rate(part: Any) -> float | None:
    if "calls" not in part.columns:
        return None
    invalid = part["invalid"].sum() if "invalid" in part.columns else 0
    failed_format = part["format_failed"].astype(int).sum() if "format_failed" in part.columns else 0
    attempts = part["calls"].sum() + failed_format
    return float((invalid + failed_format) / attempts) if attempts else None


def _agent_table(cases: Any, summary: dict[str, Any], seed: int, by: str) -> str:
    rows = []
    for (method, key), part in cases.groupby(["method", by], sort=False):
        cell = next(iter(summary.get(str(method), {}).get(str(key), {}).values()), None) if by == "dataset" else None

        def stat(metric: str, digits: int = 3) -> str:
            if cell is not None and metric in cell:
                return _stat(cell[metric], digits)
            return _pooled(part, metric, seed)

        rows.append([method, key, len(part), stat("dice"), stat("iou"), stat("turns", 2), stat("episode_score"),
                     _fmt(part["calls"].mean(), 2) if "calls" in part.columns else "-", _tool_counts(part),
                     _fmt(_invalid_rate(part), 3), _fmt(part["seconds"].mean(), 3) if "seconds" in part.columns else "-",
                     "yes" if "oracle" in part.columns and bool(part["oracle"].iloc[0]) else "no"])
    headers = ["agent", by, "episodes", "Dice", "IoU", "turns", "episode score", "calls / episode", "tool calls",
               "invalid-action rate", "s / episode", "reads GT"]
    source = "results.json" if by == "dataset" else "bootstrap over subjects"
    return _table(headers, rows, caption=f"per agent and {by}: mean [95% interval, {source}]; invalid-action rate = "
                                         f"(invalid calls + format failures) / (calls + format failures)")


def _volume_table(cases: Any, summary: dict[str, Any], seed: int, by: str) -> str:
    """Volume episodes: per agent and `by`, the 3D scores of the reassembled masks beside the per-slice means."""
    rows = []
    for (method, key), part in cases.groupby(["method", by], sort=False):
        cell = next(iter(summary.get(str(method), {}).get(str(key), {}).values()), None) if by == "dataset" else None

        def stat(metric: str, digits: int = 3) -> str:
            if cell is not None and metric in cell:
                return _stat(cell[metric], digits) + (f" ({cell[metric]['n_nan']} n/a)" if cell[metric].get("n_nan") else "")
            return _pooled(part, metric, seed)

        slices = f"{_fmt(part['slices'].mean(), 1)} / {_fmt(part['slices_total'].mean(), 1)}"
        rows.append([method, key, len(part), slices, stat("dice_3d"), stat("iou_3d"), stat("nsd_3d"), stat("hd95_3d", 2),
                     stat("dice"), stat("iou"), _fmt(part["calls"].mean(), 1), stat("turns", 2),
                     "yes" if "oracle" in part.columns and bool(part["oracle"].iloc[0]) else "no"])
    headers = ["agent", by, "volumes", "slices played / holding", "3D Dice", "3D IoU", "3D NSD", "3D HD95 mm",
               "slice Dice", "slice IoU", "calls / volume", "turns / slice", "reads GT"]
    source = "results.json" if by == "dataset" else "bootstrap over subjects"
    return _table(headers, rows, caption=f"volume episodes per agent and {by}: mean [95% interval, {source}]; 3D = the "
                                         "slice episodes' final masks reassembled on the volume's grid, scored with its "
                                         "spacing; slice Dice / IoU = the mean over a volume's slice episodes")


def _dice_per_turn(cases: Any) -> str:
    if "dice_per_turn" not in cases.columns:
        return ""
    series = []
    for method, part in cases.groupby("method", sort=False):
        lists = []
        for text in part["dice_per_turn"]:
            try:
                lists.append([float(v) for v in json.loads(text)])
            except (TypeError, ValueError):
                continue
        if not lists:
            continue
        longest = max(len(v) for v in lists)
        grid = np.zeros((len(lists), longest + 1))
        for i, values in enumerate(lists):  # turn 0: the empty mask; an episode that ended keeps its last mask
            row = [0.0, *values]
            grid[i, : len(row)] = row
            grid[i, len(row):] = row[-1]
        series.append({"label": str(method), "x": list(range(longest + 1)), "y": grid.mean(axis=0)})
    if not series:
        return ""
    longest = max(len(s["x"]) for s in series)
    png = _line_plot(series, "Dice after each turn (mean over episodes)", "turn", "Dice",
                     xticks=range(longest), width=7.0)
    return _plot_block(png, "Dice vs turn", "Mean Dice after each call (turn 0 = the empty mask; an episode that "
                                            "stopped keeps its last Dice)")


def _viewer(records: list[dict[str, Any]]) -> str:
    if not records:
        return "<p class='note'>No episode was recorded turn by turn (record_turns=0).</p>"
    blocks = []
    shown = records[:MAX_VIEWER_EPISODES]
    for n, rec in enumerate(shown):
        turns = rec.get("turns", [])
        total = len(turns)
        frames = [{"src": _data_uri(rec["start"]), "label": f"turn 0 of {total}",
                   "html": "<p>Start: the image before any call (no mask).</p>"}]
        for t, turn in enumerate(turns, start=1):
            terms = turn.get("terms") or {}
            term_rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_fmt(v, 4)}</td></tr>" for k, v in terms.items())
            message = turn.get("message") or ""
            info = (f"<p><b>call</b> <code>{_esc(turn.get('call', ''))}</code> &rarr; <i>{_esc(turn.get('outcome', ''))}</i></p>"
                    f"<p><b>answer</b> {_esc(turn.get('answer', ''))}</p>"
                    f"<p><b>Dice</b> {_fmt(turn.get('dice'))} &nbsp; <b>IoU</b> {_fmt(turn.get('iou'))} &nbsp; "
                    f"<b>reward</b> {_fmt(turn.get('reward'), 4)}</p>"
                    + (f"<details><summary>message</summary><pre>{_esc(message)}</pre></details>" if message else "")
                    + f"<table class='terms'><thead><tr><th>reward term</th><th>value</th></tr></thead><tbody>{term_rows}</tbody></table>")
            frames.append({"src": _data_uri(turn["image"]), "label": f"turn {t} of {total}", "html": info})
        data = json.dumps(frames).replace("<", "\\u003c")  # no "</script>" or "<!--" can end the data block
        title = (f"{rec.get('agent')} - episode {rec.get('episode')}: {rec.get('dataset')} {rec.get('case_id')}, "
                 f"target {rec.get('class_name')} (final Dice {_fmt(rec.get('dice'))}, score {_fmt(rec.get('score'))})")
        end = "stopped" if rec.get("terminated") else "truncated at the turn limit" if rec.get("truncated") else "ended"
        blocks.append(
            f"<div class='viewer' id='episode-{n}'><h4>{_esc(title)}</h4>"
            f"<p class='note'>Instruction: {_esc(rec.get('instruction', ''))} &middot; {total} turns, {end}</p>"
            f"<div class='panes'><div class='pane'><img class='turn-image' alt='image after the turn' src='{frames[0]['src']}'>"
            f"<div class='controls'><button type='button' class='prev'>&larr; previous</button>"
            f"<span class='turn-counter'>{_esc(frames[0]['label'])}</span>"
            f"<button type='button' class='next'>next &rarr;</button></div></div>"
            f"<div class='pane turn-info'>{frames[0]['html']}</div>"
            f"<div class='pane'><div class='pair'><figure>{_img(rec['final'], 'final mask', 'mask')}<figcaption>final mask "
            f"(green; box yellow, clicks blue + / red -)</figcaption></figure><figure>{_img(rec['truth'], 'ground truth', 'mask')}"
            f"<figcaption>ground truth (magenta)</figcaption></figure></div></div></div>"
            f"<script type='application/json' class='frames'>{data}</script></div>")
    more = f"<p class='note'>{len(records) - len(shown)} more recorded episodes are in episodes/.</p>" if len(records) > len(shown) else ""
    return "".join(blocks) + more


_VIEWER_JS = """
document.querySelectorAll('.viewer').forEach(function (v) {
  var frames = JSON.parse(v.querySelector('script.frames').textContent), i = 0;
  var img = v.querySelector('.turn-image'), counter = v.querySelector('.turn-counter'), info = v.querySelector('.turn-info');
  var prev = v.querySelector('.prev'), next = v.querySelector('.next');
  function show(k) {
    i = Math.max(0, Math.min(frames.length - 1, k));
    img.src = frames[i].src; counter.textContent = frames[i].label; info.innerHTML = frames[i].html;
    prev.disabled = i === 0; next.disabled = i === frames.length - 1;
  }
  prev.addEventListener('click', function () { show(i - 1); });
  next.addEventListener('click', function () { show(i + 1); });
  show(0);
});
"""


def _agent_sections(folder: Path, results: dict[str, Any], cases: Any, seed: int, config: dict[str, Any], level: int) -> list[str]:
    from medagent.eval.recording import read_recordings

    df = _modality_of(cases, config)
    summary = results.get("summary") or {}
    tables = _agent_table(df, summary, seed, "dataset") + _agent_table(df, summary, seed, "modality")
    out = [_section("Agents", tables, level + 1)]
    if "dice_3d" in df.columns:  # volume episodes: the 3D table beside the 2D one
        volumes = (_volume_table(df, summary, seed, "dataset") + _volume_table(df, summary, seed, "modality")
                   + _distributions(df, "dice_3d", "method", config, "3D Dice"))
        out.append(_section("Volumes (3D)", volumes, level + 1))
    plots = _dice_per_turn(df) + _distributions(df, "dice", "method", config, "Final Dice")
    out.append(_section("Dice per episode and per turn", plots, level + 1))
    errors = _error_table(df)
    if errors:
        out.append(_section("Invalid and failed calls", errors, level + 1))
    out.append(_section("Trajectories", _viewer(read_recordings(folder)), level + 1, ident="trajectories"))
    return out


def _error_table(df: Any) -> str:
    if "errors" not in df.columns:
        return ""
    counts: dict[tuple[str, str], int] = {}
    for method, text in zip(df["method"], df["errors"]):
        try:
            messages = json.loads(text) if isinstance(text, str) else []
        except json.JSONDecodeError:
            continue
        for message in messages:
            key = (str(method), str(message)[:160])
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return ""
    rows = [[m, msg, n] for (m, msg), n in sorted(counts.items(), key=lambda kv: -kv[1])[:50]]
    return _table(["agent", "env's answer", "times"], rows, caption="the most frequent answers to invalid and failed calls")


# -- interactive runs ------------------------------------------------------------------------------------------
def _interactive_sections(folder: Path, results: dict[str, Any], cases: Any, config: dict[str, Any], level: int) -> list[str]:
    protocol = results.get("protocol") or {}
    steps = list(protocol.get("curve_steps") or [])
    thresholds = protocol.get("noc_thresholds") or []
    nocs = [f"noc{round(float(t) * 100)}" for t in thresholds]
    metrics = [f"dice_{s}" for s in steps] + list(INTERACTIVE_METRICS) + nocs + ["nof" + n[3:] for n in nocs]
    facts = [("protocol", protocol.get("name", "-")), ("clicks", protocol.get("clicks", "-")),
             ("previous logits sent", protocol.get("use_previous_logits", "-")), ("NSD tolerance mm", protocol.get("tolerance_mm", "-")),
             ("NoC budget", protocol.get("noc_max_clicks", "-")), ("split", protocol.get("split", "-"))]
    body = "<dl class='facts'>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts) + "</dl>"
    for key, label in (("by_dataset", "dataset"), ("by_modality", "modality")):
        groups = results.get(key) or {}
        rows = []
        for name, cell in groups.items():
            extra = cell.get("modality") if key == "by_dataset" else ", ".join(cell.get("datasets", []))
            rows.append([name, extra, f"{cell.get('objects', '-')} / {cell.get('subjects', '-')}",
                         *[_stat(cell.get("metrics", {}).get(m), 1 if m.startswith("noc") else 3) for m in metrics]])
        body += _table([label, "modality" if key == "by_dataset" else "datasets", "objects / subjects",
                        *[_metric_label(m) for m in metrics]], rows,
                       caption=f"per {label}: mean [95% bootstrap interval over subjects] (results.json)")
    out = [_section("Interactive protocol", body, level + 1)]
    plots = ""
    for key, label in (("by_dataset", "dataset"), ("by_modality", "modality")):
        groups = results.get(key) or {}
        if key == "by_modality" and not any(len(c.get("datasets", [])) > 1 for c in groups.values()):
            continue
        for metric, name in (("dice", "Dice"), ("nsd", "NSD")):
            series = []
            for gname, cell in groups.items():
                m = cell.get("metrics", {})
                y = [_num(m.get(f"{metric}_{s}", {}).get("mean")) for s in steps]
                ci = [m.get(f"{metric}_{s}", {}).get("ci95") or [None, None] for s in steps]
                series.append({"label": gname, "x": steps, "y": [np.nan if v is None else v for v in y],
                               "lo": [np.nan if _num(c[0]) is None else c[0] for c in ci],
                               "hi": [np.nan if _num(c[1]) is None else c[1] for c in ci]})
            if series:
                labels = ["box" if s == 0 else f"click {s}" for s in steps]
                png = _line_plot(series, f"{name} vs click, per {label}", "step", name, xticks=steps, xticklabels=labels)
                plots += _plot_block(png, f"{name} vs click per {label}", f"Mean {name} after the box and each click, "
                                                                           f"per {label}, with the 95% interval (band)")
    out.append(_section("Dice vs click", plots or "<p class='note'>No curve.</p>", level + 1))
    objects_name = results.get("objects")
    if objects_name and (folder / str(objects_name)).exists():
        import pandas as pd

        objects = pd.read_parquet(folder / str(objects_name))
        if len(objects) and "final_dice" in objects.columns:
            out.append(_section("Final Dice distributions", _distributions(objects, "final_dice", "method", config, "Final Dice"), level + 1))
    out.append(_section("Summary per class", _summary_table(results.get("summary") or {}, [f"dice_{s}" for s in steps[:1]]
                                                             + list(INTERACTIVE_METRICS) + nocs), level + 1))
    return out


# -- CTTA runs ------------------------------------------------------------------------------------------------
def _ctta_sections(results: dict[str, Any], cases: Any, config: dict[str, Any], level: int) -> list[str]:
    ctta = {k: v for k, v in (results.get("ctta") or {}).items() if not k.startswith("_")}
    if not ctta:
        return []
    first = next(iter(ctta.values()))
    centres, rounds = list(first.get("per_centre", {})), list(first.get("per_round", {}))
    rows = []
    for method, row in ctta.items():
        rows.append([method, _fmt(row.get("overall")), *[_fmt(row.get("per_centre", {}).get(c)) for c in centres],
                     *[_fmt(row.get("per_round", {}).get(r)) for r in rounds], _fmt(row.get("degradation")),
                     _fmt(row.get("forgetting")), _fmt(row.get("relative_cost"), 1), _fmt(row.get("seconds_per_image"), 3),
                     row.get("images", "-")])
    headers = ["method", "overall Dice", *[f"centre {c}" for c in centres], *[f"round {r}" for r in rounds],
               "degradation", "forgetting", "cost x noadapt", "s / image", "images"]
    body = _table(headers, rows, caption="mean Dice over classes then images; degradation = round 1 - last round; "
                                         "forgetting = clean Dice after the stream - before")
    source = (results.get("ctta") or {}).get("_source")
    if source:
        body += (f"<p class='note'>Unadapted source: clean Dice {_fmt(source.get('clean'))}, worst centre "
                 f"{_fmt(source.get('worst_centre'))}, drop {_fmt(source.get('drop'))} (severity {_esc(source.get('severity'))}).</p>")
    out = [_section("Continual test-time adaptation", body, level + 1)]
    series, ticks = [], []
    for method, row in ctta.items():
        per = row.get("per_round_centre", {})
        points = [(f"r{r} {c}", per.get(r, {}).get(c)) for r in per for c in per[r]]
        ticks = [p[0] for p in points] if len(points) > len(ticks) else ticks
        series.append({"label": method, "x": list(range(len(points))), "y": [np.nan if _num(v) is None else v for _, v in points]})
    if series:
        png = _line_plot(series, "Dice along the stream (per round and centre)", "round, centre", "Dice",
                         xticks=range(len(ticks)), xticklabels=ticks, width=max(6.0, 0.5 * len(ticks) + 3))
        out.append(_section("Dice along the stream", _plot_block(png, "Dice along the stream", "Mean Dice per round and centre"), level + 1))
    if cases is not None and len(cases) and "phase" in cases.columns:
        stream = cases[cases["phase"] == "stream"]
        if len(stream):
            out.append(_section("Dice distributions", _plot_block(_box_plot(stream, "dice", "centre", "method", "Dice per centre (stream)"),
                                                                  "Dice per centre", "Dice per image and class on the stream, per centre"), level + 1))
    out.append(_section("Summary per class", _summary_table(results.get("summary") or {}, ("dice",)), level + 1))
    return out


# -- training runs --------------------------------------------------------------------------------------------
def _training_sections(folder: Path, level: int) -> list[str]:
    records = _read_jsonl(folder / "metrics.jsonl")
    curves = training_curves(records)
    panels = [  # (title, y label, keys)
        ("Loss", "loss", [k for k in curves if re.search(r"(^|/)(loss|train_loss|eval_loss|val_loss)$", k)]),
        ("Reward", "mean reward", [k for k in curves if k == "reward"]),
        ("Reward terms", "mean over the group", [k for k in curves if re.fullmatch(r"rewards/[^/]+/mean", k)]),
        ("Validation", "value", [k for k in curves if (k.startswith("val/") or k.startswith("eval_") or k == "best") and "loss" not in k]),
        ("Token accuracy", "accuracy", [k for k in curves if k == "mean_token_accuracy"]),
        ("Learning rate", "learning rate", [k for k in curves if k in ("learning_rate", "lr")]),
        ("Gradient norm", "norm", [k for k in curves if k == "grad_norm"]),
    ]
    body = ""
    for title, ylabel, keys in panels:
        if not keys:
            continue
        series = []
        for key in keys[:12]:
            xs, ys = curves[key]
            item = {"label": key, "x": xs, "y": ys, "style": "-o" if len(xs) < 40 else "-"}
            if key == "reward" and "reward_std" in curves and len(curves["reward_std"][1]) == len(ys):
                std = np.asarray(curves["reward_std"][1])
                item["lo"], item["hi"] = np.asarray(ys) - std, np.asarray(ys) + std
            series.append(item)
        png = _line_plot(series, title, "step", ylabel, width=6.0)
        caption = f"{title} per step (metrics.jsonl)" + ("; band: reward +- its std over the group" if title == "Reward" else "")
        body += _plot_block(png, title, caption)
    if not body:
        return []
    rows = [[k, len(v[0]), *(f"{x:.4g}" for x in (v[1][0], v[1][-1], min(v[1]), max(v[1])))]
            for k, v in curves.items() if any(k in keys for _, _, keys in panels)]
    body += _table(["value", "points", "first", "last", "min", "max"], rows, caption="the curves' numbers")
    return [_section("Training curves", body, level + 1, ident=f"training-{folder.name}")]


# -- the page --------------------------------------------------------------------------------------------------
def _gallery(folder: Path) -> str:
    files = sorted((folder / "overlays").glob("*.png"))[:MAX_GALLERY] if (folder / "overlays").is_dir() else []
    if not files:
        return ""
    items = "".join(f"<figure>{_img(f.read_bytes(), f.stem, 'thumb')}<figcaption>{_esc(f.stem)}</figcaption></figure>" for f in files)
    return _section("Overlays", f"<div class='gallery'>{items}</div>", 3)


def _run_sections(folder: Path, level: int, nested: bool) -> list[str]:
    results, cases = _load(folder)
    config = _read_json(folder / "config.json") or {}
    seed = int(config.get("seed", (results or {}).get("run", {}).get("seed", 0)) or 0)
    out = [_header(folder, results, level)]
    if results is not None:
        if results.get("protocol") is not None and results.get("curves") is not None:
            out += _interactive_sections(folder, results, cases, config, level)
        elif results.get("ctta") is not None:
            out += _ctta_sections(results, cases, config, level)
        elif cases is not None and "episode_score" in cases.columns:
            out += _agent_sections(folder, results, cases, seed, config, level)
        else:
            out += _tool_sections(results, cases, seed, config, level)
        out.append(_section("Skipped", _skipped(results), level + 1))
    out += _training_sections(folder, level)
    out.append(_gallery(folder))
    if nested:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            if _is_run(sub):
                command = (_read_json(sub / "config.json") or {}).get("command") or sub.name
                out.append(_section(f"{sub.name} ({command})", "".join(_run_sections(sub, level + 1, nested=False)), level,
                                    ident=f"run-{sub.name}"))
    return out


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .5em; text-align: right; white-space: nowrap; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-size: .9em; color: #555; padding: .3em 0; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: .1em 1em; font-size: .9em; }
dl.facts dt { color: #666; } dl.facts dd { margin: 0; }
img.plot { max-width: 100%; } figure { margin: .6em 0; display: inline-block; vertical-align: top; }
figcaption { font-size: .8em; color: #555; max-width: 640px; }
.note { color: #666; font-size: .9em; } pre { background: #f7f7f7; padding: .5em; overflow: auto; max-height: 24em; }
.viewer { border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; margin: 1em 0; }
.panes { display: flex; flex-wrap: wrap; gap: 1em; } .pane { flex: 0 1 auto; }
.turn-info { min-width: 260px; max-width: 360px; font-size: .9em; }
img.turn-image, img.mask { width: 288px; height: 288px; image-rendering: pixelated; border: 1px solid #999; }
img.mask { width: 160px; height: 160px; } .pair { display: flex; gap: .5em; }
.controls { display: flex; align-items: center; gap: .8em; margin-top: .4em; } .turn-counter { font-weight: bold; }
.gallery { display: flex; flex-wrap: wrap; gap: .5em; } img.thumb { width: 160px; image-rendering: pixelated; }
table.terms td, table.terms th { font-size: .95em; }
"""


def report_html(run_folder: str | Path, nested: bool = True) -> str:
    """The report page of a run folder as one HTML string (see the module docstring)."""
    folder = Path(run_folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a run folder")
    body = "".join(_run_sections(folder, 2, nested))
    config = _read_json(folder / "config.json") or {}
    title = f"medagent report: {config.get('command') or folder.name}"
    made = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f"<p class='note'>{_esc(folder.name)} &middot; written {made} &middot; self-contained: opens offline, "
            f"every image embedded</p>{body}<script>{_VIEWER_JS}</script></body></html>")


def write_report(run_folder: str | Path, out: str | Path | None = None, nested: bool = True) -> Path:
    """Write the self-contained report of a run folder (evaluation or training) and return its path.

    Args:
        run_folder: a run folder (results.json and/or metrics.jsonl, config.json, versions.json).
        out: where to write it (default ``<run_folder>/report.html``).
        nested: also show the runs in sub-folders (the demo's CTTA / agent evaluations, SFT and GRPO runs).
    """
    text = report_html(run_folder, nested=nested)
    path = Path(out) if out is not None else Path(run_folder) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_training_report(run_folder: str | Path, out: str | Path | None = None) -> Path:
    """The report of a training run folder (SFT, GRPO, a tool trainer): its loss / reward / validation curves
    from metrics.jsonl, with the config and versions. Raises `ConfigError` when metrics.jsonl has no curve."""
    folder = Path(run_folder)
    if not _has_training_curves(folder):
        raise ConfigError(f"{folder} has no training curves in metrics.jsonl (loss, reward or validation Dice)")
    return write_report(folder, out=out)
