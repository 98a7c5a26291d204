"""Human-readable tables of a results summary (rich)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary_table(summary: dict[str, Any], title: str | None = None) -> Table:
    """One row per method x dataset x class: cases, Dice mean [95% CI], NSD mean, HD95 mean (mm).

    `summary` is the "summary" block of a results file (`medagent.eval.results.summarize`). Missing
    metrics and means with no finite value show "-"; "n" counts the rows behind the Dice mean.
    """
    table = Table(title=title)
    for name, justify in (("Method", "left"), ("Dataset", "left"), ("Class", "left"), ("N", "right"),
                          ("Dice [95% CI]", "right"), ("NSD", "right"), ("HD95 mm", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for method, datasets in summary.items():
        for dataset, classes in datasets.items():
            for class_name, cell in classes.items():
                d = cell.get("dice", {})
                lo, hi = (d.get("ci95") or [None, None])[:2]
                dice_text = _fmt(d.get("mean"), 3)
                if lo is not None and hi is not None:
                    dice_text += f" [{lo:.3f}, {hi:.3f}]"
                hd = cell.get("hd95", {})
                hd_text = _fmt(hd.get("mean"), 2)
                if hd.get("n_nan"):
                    hd_text += f" ({hd['n_nan']} n/a)"
                table.add_row(str(method), str(dataset), str(class_name), str(d.get("n", "-")), dice_text,
                              _fmt(cell.get("nsd", {}).get("mean"), 3), hd_text)
    return table
