"""On-disk cache for derived data (builtin datasets, shifted images).

Layout: `<cache_dir()>/datasets/<name>-v<version>/<key>/` holding `arrays.npz` and `meta.json`. The version
is the derivation version of the producer: bump it whenever the derivation changes so stale caches are
never read. Writes are atomic: everything is written into a temporary sibling folder which is renamed
into place only when complete, so an interrupted derivation never leaves a half cache behind.

`cache_dir()` is `$MEDAGENT_CACHE_DIR` when set, else platformdirs' user cache dir for "medagent".
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medagent.errors import DataError

ENV_VAR = "MEDAGENT_CACHE_DIR"

#: How many times each (name, version, key) was derived in this process; tests use it to check that a
#: second load reads the cache instead of deriving again.
DERIVE_COUNTS: Counter[str] = Counter()


def cache_dir() -> Path:
    """Root of medagent's cache: `$MEDAGENT_CACHE_DIR` or the platform user cache dir (not created)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("medagent"))


def entry_dir(name: str, version: int, key: str = "default") -> Path:
    """Folder of one cache entry: `<cache>/datasets/<name>-v<version>/<key>`."""
    for what, val in (("name", name), ("key", key)):
        if not val or "/" in val or "\\" in val or val.startswith("."):
            raise DataError(f"cache {what} {val!r} must be a non-empty plain folder name")
    return cache_dir() / "datasets" / f"{name}-v{int(version)}" / key


def _write_entry(final: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any], compress: bool) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        save = np.savez_compressed if compress else np.savez
        save(tmp / "arrays.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same entry first: theirs is complete, keep it.
            if not (final / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _read_entry(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads((folder / "meta.json").read_text())
    return arrays, meta


def load_or_derive(
    name: str,
    version: int,
    derive: Callable[[], tuple[dict[str, np.ndarray], dict[str, Any]]],
    key: str = "default",
    compress: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Arrays and JSON metadata of a derived entry, deriving and caching them on first use.

    Args:
        name: producer name, e.g. "mni-tissue".
        version: derivation version; a new version ignores older entries.
        derive: builds `(arrays, meta)`; arrays are saved to `.npz` (no pickles), meta to JSON.
        key: distinguishes variants of one producer (e.g. "seed0").
        compress: save with `np.savez_compressed`.
    """
    folder = entry_dir(name, version, key)
    if (folder / "meta.json").exists() and (folder / "arrays.npz").exists():
        try:
            return _read_entry(folder)
        except (OSError, ValueError, json.JSONDecodeError):
            shutil.rmtree(folder, ignore_errors=True)  # corrupt entry: derive again
    arrays, meta = derive()
    DERIVE_COUNTS[f"{name}-v{version}/{key}"] += 1
    _write_entry(folder, arrays, meta, compress)
    return arrays, meta
