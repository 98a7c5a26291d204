"""Provenance of a run: package versions, git SHA, seed, and strict JSON writing.

Low in the dependency order (numpy and medagent.errors only), so trainers, evaluators and the demo all
record runs the same way without importing each other.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

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
