"""The evaluators' progress bar: units done / total, elapsed, ETA and the running mean of the key figure.

    with UnitProgress("eval auto on mni-lesion/test", total=40, figure="Dice") as bar:
        for case in cases:
            bar.advance(dice)          # None: a unit without a value (a skipped case)

Shown only when `enabled` and stdout is a terminal (captured or piped output, tests included, gets
nothing, not even a blank line); transient, so the tables printed afterwards stand alone. Units read
back from a resumed run (`restored`) count as done but not in the speed, so the ETA is the remaining work's.
"""

from __future__ import annotations

import math
from typing import Any


class UnitProgress:
    """A rich bar over `total` units showing ``<figure> <running mean>`` (`medagent.train.progress.progress_bar`).

    Args:
        title: the bar's description.
        total: units in the whole run (finished ones included).
        figure: the name of the key figure shown beside the bar ("Dice").
        enabled: False gives a silent object with the same methods.
    """

    def __init__(self, title: str, total: int, figure: str = "Dice", enabled: bool = True) -> None:
        self.title, self.total, self.figure = title, int(total), figure
        self.enabled = bool(enabled) and _is_terminal()
        self.sum, self.count = 0.0, 0
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> "UnitProgress":
        if self.enabled:
            from medagent.train.progress import progress_bar

            self.bar = progress_bar(transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.title, total=self.total, values="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def _add(self, value: float | None) -> None:
        if value is not None and math.isfinite(float(value)):
            self.sum += float(value)
            self.count += 1

    def _text(self) -> str:
        return f"{self.figure} {self.sum / self.count:.3f}" if self.count else ""

    def reset_mean(self, title: str | None = None) -> None:
        """Start a new running mean (e.g. the next agent), optionally with a new description."""
        self.sum, self.count = 0.0, 0
        if self.bar is not None:
            self.bar.update(self.task, values="", **({"description": title} if title else {}))

    def restored(self, value: float | None) -> None:
        """Count a unit read back from the run's unit log: done and in the mean, but not in the ETA's speed."""
        self._add(value)
        if self.bar is not None:
            # set on rich's live Task directly: `update(advance=1)` would record a speed sample, and the burst
            # of restored units would make the ETA of the work still to do far too short
            self.bar.tasks[0].completed += 1
            self.bar.update(self.task, values=self._text())

    def advance(self, value: float | None = None) -> None:
        """One unit finished now, with its key figure (None or NaN: counted as done, not in the mean)."""
        self._add(value)
        if self.bar is not None:
            self.bar.update(self.task, advance=1, values=self._text())


def _is_terminal() -> bool:
    """Whether stdout is an interactive terminal (rich's own test, so FORCE_TERMINAL etc. are honoured)."""
    from rich.console import Console

    return bool(Console().is_terminal)
