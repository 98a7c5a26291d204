"""One entry point from a user's words to data: a builtin dataset name, a folder, or a single file."""

from __future__ import annotations

from pathlib import Path

from medagent.data.case import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.errors import DataError


def open_dataset(source: str | Path, *, class_names: dict[int, str] | None = None, modality: str | None = None,
                 skip_bad: bool = False, seed: int = 0) -> Dataset:
    """A builtin dataset by name (`medagent data list`), a dataset folder, or one image file.

    A single file becomes a one-case dataset whose only split is "test" (no label).
    """
    from medagent.data.builtin import BUILTIN_DATASETS, load_builtin

    text = str(source)
    if text in BUILTIN_DATASETS:
        return load_builtin(text, seed=seed)
    path = Path(text).expanduser()
    if path.is_dir():
        from medagent.data.layouts import load_folder

        return load_folder(path, class_names=class_names, modality=modality, skip_bad=skip_bad, split_seed=seed)
    if path.is_file():
        case = open_case(path, modality=modality)
        info = DatasetInfo(name=path.name, description=f"the single file {path}", modality=case.modality,
                           class_names=case.class_names, label_origin="none", license="user", source=str(path),
                           ndim=case.ndim, layout="file")
        return Dataset(info=info, splits={"test": CaseList.from_cases([case])})
    names = ", ".join(sorted(BUILTIN_DATASETS))
    raise DataError(f"{text!r} is neither a builtin dataset ({names}) nor an existing file or folder")


def open_case(path: str | Path, *, modality: str | None = None) -> Case:
    """Load one image file as a Case (see `medagent.data.io.load_image`)."""
    from medagent.data.io import load_image

    return load_image(path, modality=modality)
