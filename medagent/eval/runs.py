"""Run folders: one per command that trains or evaluates, so every number can be traced to its run.

Layout of ``<root>/<command>-<YYYYmmdd-HHMMSS>[-N]/``:
- ``config.json``: the command's configuration (what the CLI flags mapped to);
- ``versions.json``: Python and installed package versions, medagent's git SHA when it runs from a git
  checkout, the seed; no host name or user name, so the file can be shared;
- ``metrics.jsonl``: one JSON object per `RunFolder.log` call (training curves, progress);
- ``results.json`` + ``cases.parquet``: written by `RunFolder.write_results` (see `medagent.eval.results`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import re
import time
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError
from medagent.provenance import TRACKED_PACKAGES, collect_versions, git_sha, to_jsonable, write_json  # noqa: F401  (re-exported)

def _slug(command: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.]+", "-", command.strip()).strip("-.")
    if not slug:
        raise ConfigError(f"command {command!r} gives an empty run-folder name")
    return slug


@dataclasses.dataclass
class RunFolder:
    """A run folder on disk and what it was created with.

    Attributes:
        path: the folder.
        command: the command that made it ("eval tool", "train sft", ...).
        config: its configuration (as written to config.json).
        seed: the run's seed.
        versions: what was written to versions.json.
    """

    path: Path
    command: str
    config: dict[str, Any]
    seed: int
    versions: dict[str, Any]

    @classmethod
    def create(cls, command: str, config: dict[str, Any], seed: int, root: str | Path = "medagent-runs") -> "RunFolder":
        """Make ``<root>/<command>-<YYYYmmdd-HHMMSS>/`` (``-2``, ``-3``... if taken) and write config and versions."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        base = f"{_slug(command)}-{_dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"
        for n in range(1, 10_000):
            path = root / (base if n == 1 else f"{base}-{n}")
            try:
                path.mkdir()  # atomic: two runs in the same second cannot both get one name
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover
            raise ConfigError(f"cannot find a free run folder name under {root}")
        versions = collect_versions(seed)
        run = cls(path=path, command=command, config=dict(config), seed=int(seed), versions=versions)
        write_json(path / "config.json", {"command": command, "seed": int(seed), **run.config})
        write_json(path / "versions.json", versions)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """Reopen an existing run folder (e.g. to resume or add results)."""
        path = Path(path)
        try:
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            versions = json.loads((path / "versions.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path} is not a readable run folder (config.json / versions.json): {exc}") from exc
        command = config.pop("command", path.name)
        seed = int(config.pop("seed", 0) or 0)
        return cls(path=path, command=command, config=config, seed=seed, versions=versions)

    def file(self, name: str) -> Path:
        """Path of a file inside the run folder."""
        return self.path / name

    def log(self, step: int | None = None, **values: Any) -> None:
        """Append one line to metrics.jsonl: {"step", "time" (unix s), **values}."""
        record = {"step": step, "time": round(time.time(), 3), **values}
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(to_jsonable(record), allow_nan=False) + "\n")

    def read_log(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl, in order ([] if nothing was logged)."""
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def write_results(
        self,
        summary: dict[str, Any],
        cases: Any = None,
        skipped: list[Any] | None = None,
        name: str = "results.json",
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write the shared results file (and cases.parquet when `cases`, a DataFrame, is given); returns its path."""
        from medagent.eval.results import write_results

        return write_results(
            self.path / name, summary=summary, cases=cases, skipped=skipped,
            run={"command": self.command, "versions": self.versions, "seed": self.seed}, extra=extra,
        )
