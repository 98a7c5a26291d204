"""The one checkpoint mechanism of every tool: where a checkpoint is, reading it, checking it, writing it.

A tool checkpoint is a folder holding a JSON config (`config.json` unless a tool names another) and, for
tools with weights, a safetensors file (`model.safetensors` unless named otherwise). Every tool's
`from_pretrained` / `save_pretrained` (and the CTTA stream state) goes through these few functions:

- `resolve_checkpoint(reference, needs=..., kind=...)`: a local folder, a local `.safetensors` / `.json`
  file of a checkpoint (its folder), or a Hugging Face Hub id `hf://owner/name[@revision]` (downloaded by
  `huggingface_hub.snapshot_download`, safetensors, JSON and model cards only) -> the local folder, checked
  to hold the files the tool `needs`. Pickles (.pt/.pth/.bin/.ckpt/...) are refused: only safetensors are
  loaded (SAM's official `.pth` importer, `SamTool.from_official`, is the one explicit exception).
- `read_config(path, kind=..., expect=...)`: the JSON object of a config file, with its format/tool tag checked.
- `read_weights(path)`: the tensors of a safetensors file.
- `load_state_strict(module, state, source, what=...)`: strict `load_state_dict` naming every missing,
  unexpected or mis-shaped key and the file.
- `write_checkpoint(folder, config, weights, ...)`: weights (optional dtype cast and metadata) + config
  JSON (indent 2 and a trailing newline unless told otherwise).

Every error is a `CheckpointError` naming the file (or Hub id) and what to do about it.

Why our own and not `huggingface_hub.PyTorchModelHubMixin`: the mixin treats the `nn.Module`'s `__init__`
keyword arguments as the config and the module's state dict as the weights. Our tools are not
`nn.Module`s: a tool wraps a network plus its preprocessing (intensity scaling, SAM's resize/normalise)
plus runtime options, and its config.json holds all of that under keys chosen per tool (a flat
`SegmenterConfig`, SAM's `format`/`arch`/`preprocessing`, the refiner's `tool`/`net`/`refiner` plus
training provenance, a CTTA stream's `state.json`). The shipped folders under `medagent/weights/` (sha256
per file in the manifest) must keep loading byte for byte, so the format stays each tool's own and only
the mechanics are shared here. The Hub is still reached through `huggingface_hub` (`snapshot_download`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch

from medagent.errors import CheckpointError

#: How a Hugging Face Hub id is written wherever a checkpoint is accepted: hf://owner/name[@revision].
HUB_PREFIX = "hf://"
#: Files of a checkpoint folder that are worth downloading from the Hub (pickles are never fetched).
HUB_PATTERNS = ("*.safetensors", "*.json", "*.md")
#: Suffixes of pickle-based weight files, which are never loaded.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
#: Files that point at their checkpoint folder when given instead of it.
FOLDER_FILE_SUFFIXES = (".safetensors", ".json")


def is_hub_id(reference: str | Path) -> bool:
    """True when `reference` is a Hugging Face Hub id written `hf://owner/name[@revision]`."""
    return isinstance(reference, str) and reference.startswith(HUB_PREFIX)


def parse_hub_id(reference: str) -> tuple[str, str | None]:
    """`hf://owner/name[@revision]` -> ("owner/name", revision or None); CheckpointError when malformed."""
    body = reference[len(HUB_PREFIX):] if is_hub_id(reference) else reference
    repo_id, at, revision = body.partition("@")
    parts = repo_id.split("/")
    if len(parts) != 2 or not all(parts) or (at and not revision):
        raise CheckpointError(
            f"{reference!r} is not a Hugging Face Hub checkpoint id; write it hf://owner/name or hf://owner/name@revision"
        )
    return repo_id, revision or None


def resolve_checkpoint(reference: str | Path, needs: tuple[str, ...] = (), kind: str = "medagent",
                       patterns: tuple[str, ...] = HUB_PATTERNS) -> Path:
    """The local folder of a checkpoint reference, checked to hold the files in `needs`.

    Args:
        reference: a checkpoint folder; a `.safetensors` or `.json` file in one (its folder is used); or a
            Hugging Face Hub id `hf://owner/name[@revision]`, downloaded (or taken from the local Hub cache)
            with `huggingface_hub.snapshot_download`.
        needs: file names the folder must hold (e.g. ("config.json", "model.safetensors")).
        kind: what the checkpoint is for, used in error messages (e.g. "unet", "SAM", "refine").
        patterns: the files of a Hub repository to download (default `HUB_PATTERNS`; never pickles).

    Raises:
        CheckpointError: a pickle file (only safetensors are loaded), a path that does not exist, a Hub id
            that cannot be downloaded (offline, no such repository or revision), or a folder that lacks a
            needed file.
    """
    if is_hub_id(reference):
        label = str(reference)
        folder = _download(str(reference), patterns)
    else:
        path = Path(reference)
        label = str(path)
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{path}: only .safetensors weights are loaded (never pickles such as {'/'.join(PICKLE_SUFFIXES[:4])}); "
                "convert the weights with safetensors.torch.save_file, or pass a checkpoint folder"
            )
        if path.is_file():
            if path.suffix.lower() not in FOLDER_FILE_SUFFIXES:
                raise CheckpointError(
                    f"{path}: not a checkpoint; pass its folder, its .safetensors weights or its .json config, "
                    f"or a Hub id {HUB_PREFIX}owner/name[@revision]"
                )
            path = path.parent
        elif not path.is_dir():
            raise CheckpointError(
                f"{path}: no such checkpoint folder or file (it does not exist); a checkpoint is a local folder, "
                f"a .safetensors file in one, or a Hub id {HUB_PREFIX}owner/name[@revision]"
            )
        folder = path
    missing = [name for name in needs if not (folder / name).is_file()]
    if missing:
        where = label if label == str(folder) else f"{label} (in {folder})"
        raise CheckpointError(
            f"{where}: not {_a(kind)} checkpoint folder: missing {', '.join(missing)} "
            f"({_a(kind)} checkpoint folder holds {' and '.join(needs)})"
        )
    return folder


def _download(reference: str, patterns: tuple[str, ...] = HUB_PATTERNS) -> Path:
    """Download (or find in the local Hub cache) the Hub checkpoint `reference`; CheckpointError on failure."""
    repo_id, revision = parse_hub_id(reference)
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise CheckpointError(f"{reference}: loading a Hub checkpoint needs the package 'huggingface_hub' ({exc})") from exc
    try:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(patterns)))
    except Exception as exc:  # noqa: BLE001 - every Hub failure becomes one clear CheckpointError
        raise CheckpointError(f"{reference}: cannot load this Hugging Face Hub checkpoint: "
                              f"{_hub_advice(exc, repo_id, revision)} ({type(exc).__name__}: {exc})") from exc


#: huggingface_hub / httpx errors that mean "the Hub cannot be reached and the local cache does not have it".
_OFFLINE_ERRORS = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "IncompleteSnapshotError", "ConnectError",
                   "ConnectTimeout", "TimeoutException", "ReadTimeout"}


def _hub_advice(exc: Exception, repo_id: str, revision: str | None) -> str:
    """What went wrong with a Hub download and what to do, from the exception's class (and its bases)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "GatedRepoError" in names:
        return "the repository is gated: accept its terms on the Hub and log in (`hf auth login`) or set HF_TOKEN"
    if "RepositoryNotFoundError" in names:
        return (f"no repository {repo_id!r} on the Hub (or it is private: log in with `hf auth login` or set "
                "HF_TOKEN); check the id")
    if "RevisionNotFoundError" in names:
        return f"repository {repo_id!r} has no revision {revision!r}; check the branch, tag or commit after '@'"
    if names & _OFFLINE_ERRORS or isinstance(exc, (ConnectionError, TimeoutError)):
        return ("the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1) and the checkpoint is not in the local Hub "
                f"cache; download it once while online (`hf download {repo_id}`) or pass a local folder")
    return "the download failed; check the id and your network, or pass a local folder"


def read_config(path: Path, kind: str = "medagent", expect: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON object in the config file `path`, its tag fields checked.

    Args:
        path: the config file (e.g. `folder / "config.json"`).
        kind: what the checkpoint is for, used in error messages.
        expect: fields that must hold these values (e.g. {"format": "medagent-sam"} or {"tool": "refine"}).

    Raises:
        CheckpointError naming the file: missing or unreadable, not valid JSON, not a JSON object, or a tag
        field with another value ("not a <kind> config: field 'tool' is 'unet', expected 'refine'").
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the {kind} checkpoint's config file)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from exc
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the {kind} config: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    for field, value in (expect or {}).items():
        if data.get(field) != value:
            raise CheckpointError(
                f"{path}: not {_a(kind)} config: field {field!r} is {data.get(field)!r}, expected {value!r}"
            )
    return data


def _a(kind: str) -> str:
    """"a unet" / "an otsu": `kind` with its indefinite article, for messages."""
    return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path` (on the CPU); CheckpointError naming the file when it is
    missing, corrupt or not a safetensors file."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (the checkpoint's safetensors weights)")
    try:
        return load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError / OSError variants
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from exc


def load_state_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str | Path,
                      what: str = "this network") -> None:
    """`module.load_state_dict(state, strict=True)`, each tensor cast to the module's dtype.

    Raises:
        CheckpointError "<source> does not fit <what>; missing keys: ...; unexpected keys: ...; shape
        mismatches: key: file (a, b) vs model (c, d)" (first six of each) when the keys or shapes differ.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or mismatched:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:6]) + (f" ... (+{len(keys) - 6})" if len(keys) > 6 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {show(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            parts.append("shape mismatches: " + show(
                [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]))
        raise CheckpointError(f"{source} does not fit {what}; " + "; ".join(parts))
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


def write_checkpoint(
    folder: str | Path,
    config: Mapping[str, Any],
    weights: Mapping[str, torch.Tensor] | None = None,
    *,
    config_name: str = "config.json",
    weights_name: str = "model.safetensors",
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
    indent: int = 2,
) -> Path:
    """Write a checkpoint folder (created): `weights_name` (tensors detached, on the CPU, contiguous, cast to
    `dtype` when given, safetensors `metadata` when given), then `config_name` (JSON, `indent`, trailing
    newline). Returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if weights is not None:
        tensors = {k: (v.detach().cpu() if dtype is None else v.detach().to("cpu", dtype)).contiguous()
                   for k, v in weights.items()}
        save_file(tensors, str(folder / weights_name), metadata=dict(metadata) if metadata is not None else None)
    (folder / config_name).write_text(json.dumps(dict(config), indent=indent) + "\n")
    return folder
