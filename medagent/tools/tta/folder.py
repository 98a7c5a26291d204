"""Adapt a test-time adaptation method over a folder of images and write their masks.

    adapt_folder("mgipt", "mni-tissue", "scans/", "masks/")   # shipped source, any readable image format
    build_method("mgipt-reduced", dataset="mni-tissue")       # an adaptive tool by name

The scored streams of the benchmark protocol live in `medagent.eval.ctta`.
"""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

from medagent.data.case import Case
from medagent.errors import DataError

#: Method names and how `build_method` builds them; "mgipt-reduced" is MGIPT's reduced-step config.
METHOD_ALIASES = {"mgipt-reduced": ("mgipt", "reduced")}


def build_method(method: str, dataset: str | None = None, checkpoint: str | None = None,
                 config: Any = None, device: str = "cpu") -> Any:
    """An adaptive tool by registry name (or "mgipt-reduced"), with an optional config (dataclass or dict)."""
    from medagent.tools.registry import load_tool

    name, variant = METHOD_ALIASES.get(method, (method, None))
    if variant == "reduced":
        from medagent.tools.tta.mgipt import MGIPTConfig

        overrides = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config or {})
        config = MGIPTConfig.reduced(**overrides)
    return load_tool(name, checkpoint=checkpoint, dataset=dataset, device=device, config=config)


_MASK_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".tif", ".tiff", ".npy")


def _mask_name(path: Path, case: Case) -> str:
    from medagent.data.io import stem

    low = path.name.lower()
    for ext in _MASK_EXTS:
        if low.endswith(ext) and not (ext == ".png" and case.ndim != 2):
            return stem(path) + ext
    return stem(path) + (".png" if case.ndim == 2 else ".nii.gz")


def adapt_folder(method: str, source: str | Path, stream_dir: str | Path, out_dir: str | Path, config: Any = None,
                 modality: str | None = None, state_dir: str | Path | None = None, device: str = "cpu") -> list[Path]:
    """Adapt `method` over the images of `stream_dir` in sorted file-name order and write their masks.

    Args:
        method: noadapt, tent, cotta, vptta, mgipt (or mgipt-reduced).
        source: a shipped source dataset name (e.g. "mni-tissue") or a segmenter checkpoint folder.
        stream_dir: folder of images (any format `medagent.data.io.load_image` reads; sub-folders that
            are DICOM series count as one image). Files it cannot read are skipped with a warning.
        out_dir: masks are written here under the input's name (same format where masks can be
            written in it, else PNG for 2D / NIfTI for 3D), on the input's grid.
        config: the method's config (dataclass or dict of overrides).
        modality: the modality of the images when their files do not say.
        state_dir: resume the tool from this folder when it holds a saved state, and save the final
            state there (so a stream split over several folders continues).
    Returns:
        The written mask paths, in stream order.
    """
    from medagent.data.io import load_image, save_mask

    stream_dir, out_dir = Path(stream_dir), Path(out_dir)
    if not stream_dir.is_dir():
        raise DataError(f"{stream_dir}: the stream folder does not exist")
    src = Path(str(source))
    checkpoint = str(src) if src.is_dir() else None
    tool = build_method(method, dataset=None if checkpoint else str(source), checkpoint=checkpoint, config=config, device=device)
    if state_dir is not None and (Path(state_dir) / "state.json").exists():
        tool.load_state(state_dir)
    paths = sorted(p for p in stream_dir.iterdir() if not p.name.startswith("."))
    if not paths:
        raise DataError(f"{stream_dir}: no images in the stream folder")
    written: list[Path] = []
    for path in paths:
        try:
            case = load_image(path, modality=modality, class_names=tool.source.class_names)
        except DataError as exc:
            warnings.warn(f"adapt_folder: skipped {path}: {exc}", RuntimeWarning, stacklevel=2)
            continue
        pred = tool.predict(case)
        if pred.extras.get("skipped"):
            continue
        written.append(save_mask(pred.mask, case, out_dir / _mask_name(path, case)))
    if state_dir is not None:
        tool.save_state(state_dir)
    return written
