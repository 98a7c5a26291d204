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
import enum
import json
import math
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from medagent.errors import ConfigError

#: Distributions recorded in versions.json when installed (names as on PyPI).
TRACKED_PACKAGES = (
    "medagent", "numpy", "scipy", "scikit-image", "pandas", "pyarrow", "torch", "torchvision", "monai",
    "torchio", "segment-anything", "transformers", "trl", "peft", "accelerate", "datasets", "gymnasium",
    "nibabel", "SimpleITK", "pydicom", "vllm", "flwr",
)


def to_jsonable(value: Any) -> Any:
    """Convert configs and results to plain JSON values (paths, numpy, enums, dataclasses; NaN -> None)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN/inf; readers treat null as "no value"
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def write_json(path: Path, data: Any) -> None:
    """Write strict JSON (no NaN), atomically: a half-written file never replaces a good one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(to_jsonable(data), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(path)


def git_sha(directory: Path | None = None) -> dict[str, Any] | None:
    """{"sha", "dirty"} of the git checkout holding `directory` (default: medagent's source), or None."""
    directory = Path(directory) if directory is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"sha": sha.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def collect_versions(seed: int | None = None) -> dict[str, Any]:
    """Versions of Python and the tracked packages that are installed, medagent's git SHA, the seed."""
    packages = {}
    for name in TRACKED_PACKAGES:
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.system().lower(),  # "linux", "darwin": no host name
        "packages": packages,
        "git": git_sha(),
        "seed": seed,
    }


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
