"""A readable table of a continual test-time adaptation run (`medagent.eval.ctta.evaluate_ctta`)."""

from __future__ import annotations

from typing import Any

from rich.table import Table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def ctta_table(ctta: dict[str, Any], methods: list[str], title: str | None = None) -> Table:
    """One row per method: overall Dice, Dice per centre and per round, degradation (round 1 - last),
    forgetting (clean Dice after the stream - before) and cost per image relative to noadapt."""
    table = Table(title=title)
    first = ctta[methods[0]]
    columns = ["method", "overall", *[f"centre {c}" for c in first["per_centre"]],
               *[f"round {r}" for r in first["per_round"]], "degradation", "forgetting", "cost x noadapt"]
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right")
    for name in methods:
        row = ctta[name]
        cost = row.get("relative_cost")
        table.add_row(name, _fmt(row["overall"]), *[_fmt(v) for v in row["per_centre"].values()],
                      *[_fmt(v) for v in row["per_round"].values()], _fmt(row.get("degradation")),
                      _fmt(row.get("forgetting")), "-" if cost is None else f"{cost:.1f}")
    return table
