"""Shipped tiny checkpoints and their manifest.

Each checkpoint lives in `medagent/weights/<name>/` (safetensors + config.json + a README.md model card)
and has one entry in `manifest.json`:

    {"<name>": {"version": "1", "files": {"model.safetensors": "<sha256>", ...},
                "dataset_derivation": "<dataset>-v<k>"}}

`verify_weights()` checks every hash and the size caps (<= 8 MB a file, <= 40 MB in all); the test
suite runs it, so a re-trained checkpoint cannot land without a manifest (and version) update.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from medagent.errors import CheckpointError

WEIGHTS_DIR = Path(__file__).resolve().parent
MANIFEST = WEIGHTS_DIR / "manifest.json"
MAX_FILE_BYTES = 8 * 1024 * 1024
MAX_TOTAL_BYTES = 40 * 1024 * 1024


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest() -> dict[str, dict]:
    if not MANIFEST.exists():
        return {}
    try:
        return json.loads(MANIFEST.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{MANIFEST}: not valid JSON: {exc}") from exc


def weights_path(name: str) -> Path:
    """Folder of shipped checkpoint `name`; CheckpointError if it is not shipped."""
    manifest = read_manifest()
    folder = WEIGHTS_DIR / name
    if name not in manifest or not folder.is_dir():
        shipped = ", ".join(sorted(manifest)) or "none"
        raise CheckpointError(f"no shipped weights named {name!r} (shipped: {shipped})")
    return folder


def record_weights(name: str, dataset_derivation: str, version: str = "1") -> dict:
    """Write (or update) the manifest entry of `medagent/weights/<name>/` from the files now in it."""
    folder = WEIGHTS_DIR / name
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: no such weights folder")
    files = {p.name: sha256(p) for p in sorted(folder.iterdir()) if p.is_file() and p.name != "README.md"}
    manifest = read_manifest()
    manifest[name] = {"version": str(version), "files": files, "dataset_derivation": dataset_derivation}
    MANIFEST.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    return manifest[name]


def verify_weights() -> list[str]:
    """Problems with the shipped weights (hash mismatches, missing files, size caps); empty when all is well."""
    problems: list[str] = []
    total = 0
    manifest = read_manifest()
    for name, entry in manifest.items():
        folder = WEIGHTS_DIR / name
        for field in ("version", "files", "dataset_derivation"):
            if field not in entry:
                problems.append(f"manifest entry {name!r} lacks {field!r}")
        if not (folder / "README.md").exists():
            problems.append(f"{name}: no model card README.md")
        for fname, digest in entry.get("files", {}).items():
            path = folder / fname
            if not path.exists():
                problems.append(f"{name}/{fname}: listed in the manifest but missing")
                continue
            size = path.stat().st_size
            total += size
            if size > MAX_FILE_BYTES:
                problems.append(f"{name}/{fname}: {size / 2**20:.1f} MB is over the 8 MB cap")
            if sha256(path) != digest:
                problems.append(f"{name}/{fname}: sha256 differs from the manifest (bump the version and re-record)")
    for folder in WEIGHTS_DIR.iterdir():
        if folder.is_dir() and not folder.name.startswith("__") and folder.name not in manifest:
            problems.append(f"{folder.name}: weights folder without a manifest entry")
    if total > MAX_TOTAL_BYTES:
        problems.append(f"shipped weights total {total / 2**20:.1f} MB, over the 40 MB cap")
    return problems
