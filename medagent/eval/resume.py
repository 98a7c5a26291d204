"""Resumable evaluations: finished units in a JSON-lines file, and reopening a run folder to continue it.

An evaluation is a sequence of independent *units* (an agent episode, a tool case, an interactive
object). Each finished unit is appended to the run folder's ``partial.jsonl`` as one JSON object
``{"unit": KEY, ...payload}`` (one line, written and closed before the next unit starts), so a killed run
loses at most the unit in progress. ``--resume RUN_FOLDER`` reopens the folder (`open_run`), checks that
the new invocation's settings are the run's (config.json), reads the finished units back (`UnitLog`)
and computes only the others; once results.json is written the file is removed (cases.parquet then
holds every row).

A unit's result must not depend on which units ran before it in the same process, or a resumed run
would differ from an uninterrupted one: every evaluator seeds each unit from (seed, unit index)
(`unit_seed`, `seed_torch`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medagent.errors import ConfigError
from medagent.eval.runs import RunFolder
from medagent.provenance import git_sha, to_jsonable

#: The file of finished units inside a run folder (removed once results.json is written).
PARTIAL_NAME = "partial.jsonl"


def _plain(value: Any) -> Any:
    """json.dumps fallback: numpy scalars and arrays, paths; anything else is a bug in the caller's record."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"a unit record holds a {type(value).__name__}, which JSON cannot store: {value!r}")


def roundtrip(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as it reads back from the unit log (plain Python values; NaN kept as NaN).

    Evaluators use this form for fresh units too, so a resumed run's table is the same, value for value
    and dtype for dtype, as an uninterrupted run's.
    """
    return json.loads(json.dumps(record, default=_plain))


class UnitLog:
    """The finished units of one evaluation, appended to a JSON-lines file as they finish.

    Attributes:
        path: the JSON-lines file (created on the first `add`).
        done: unit key -> its record (without the "unit" key), in file order.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.done: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        """Read the finished units; drop a torn last line (a kill mid-write) so later appends start clean."""
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        complete, torn = lines[:-1], lines[-1]  # text after the last newline was never finished
        kept = []
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # a torn write never ends in a newline: a bad complete line means the file was edited or damaged
                raise ConfigError(f"{self.path}: line {number} is not a JSON unit record; delete that line "
                                  "to recompute the unit") from None
            if not isinstance(record, dict) or "unit" not in record:
                raise ConfigError(f"{self.path}: line {number} has no 'unit' key")
            self.done[str(record.pop("unit"))] = record
            kept.append(line)
        if torn:
            self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def __contains__(self, key: str) -> bool:
        return key in self.done

    def __len__(self) -> int:
        return len(self.done)

    def get(self, key: str) -> dict[str, Any] | None:
        """The record of finished unit `key`, or None when it has not run."""
        return self.done.get(key)

    def add(self, key: str, record: dict[str, Any]) -> dict[str, Any]:
        """Append unit `key` (one line, closed before returning) and return the record as it reads back."""
        if key in self.done:
            raise ConfigError(f"unit {key!r} is already in {self.path}")
        line = json.dumps({"unit": key, **record}, default=_plain)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
        self.done[key] = stored = json.loads(line)
        stored.pop("unit")
        return stored

    def remove(self) -> None:
        """Delete the file (the run's results now hold every unit)."""
        self.path.unlink(missing_ok=True)


def _differences(stored: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """'key (run: A, now: B)' for every setting that differs (keys in either dict)."""
    now = to_jsonable(config)
    out = []
    for key in list(now) + [k for k in stored if k not in now]:
        if stored.get(key, "<unset>") != now.get(key, "<unset>"):
            out.append(f"{key} (run: {json.dumps(stored.get(key, '<unset>'))}, now: {json.dumps(now.get(key, '<unset>'))})")
    return out


def open_run(command: str, config: dict[str, Any], seed: int, root: str | Path = "medagent-runs",
             resume: str | Path | None = None) -> RunFolder:
    """A new run folder under `root`, or the folder `resume` reopened to continue an interrupted run.

    Resuming checks that the folder is a run of `command`, that its config.json and seed equal `config`
    and `seed` (a `ConfigError` names every differing setting with both values) and that it is not
    finished already (results.json written and no unit log left). Logs a "resumed" event in metrics.jsonl.
    """
    if resume is None:
        return RunFolder.create(command, config, seed, root=root)
    path = Path(resume)
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such run folder")
    run = RunFolder.open(path)
    if run.command != command:
        raise ConfigError(f"cannot resume {path}: it is a {run.command!r} run, not {command!r}")
    differ = _differences(to_jsonable(run.config), config)
    if run.seed != int(seed):
        differ.append(f"seed (run: {run.seed}, now: {int(seed)})")
    if differ:
        raise ConfigError(f"cannot resume {path}: this invocation differs from the run's config.json in "
                          + "; ".join(differ) + ". Rerun with the run's settings, or start a new run without --resume")
    if (path / "results.json").exists() and not (path / PARTIAL_NAME).exists():
        raise ConfigError(f"cannot resume {path}: it is finished (results.json is written); start a new run without --resume")
    finished = len(UnitLog(path / PARTIAL_NAME))
    run.log(step=None, event="resumed", finished_units=finished, git=git_sha())
    return run


def refuse_stateful(tool: Any, resume: str | Path | None) -> None:
    """A stateful tool (`Tool.stateful`: the test-time adapters) carries what it adapted from one case to the next,
    so its units are not independent and a resumed run would score the rest from the source state: refused."""
    if resume is not None and getattr(tool, "stateful", False):
        raise ConfigError(f"cannot resume {resume}: tool {getattr(tool, 'name', tool)!r} adapts from case to case "
                          "(stateful), so the cases left depend on the ones done; start a new run without --resume")


def unit_seed(seed: int, *index: int) -> int:
    """A 32-bit seed for one unit, a function of (seed, index...) only: units do not depend on each other."""
    return int(np.random.SeedSequence([int(seed), *(int(i) for i in index)]).generate_state(1)[0])


def seed_torch(seed: int, *index: int) -> None:
    """Seed torch's global generator for one unit (stochastic tools), only when torch is imported already."""
    if "torch" in sys.modules:  # importing torch for tools that do not use it would cost seconds
        sys.modules["torch"].manual_seed(unit_seed(seed, *index))

