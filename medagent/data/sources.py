"""One entry point from a user's words to data: a builtin dataset name, a folder, or a single file."""

from __future__ import annotations

from pathlib import Path

from medagent.data.case import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.errors import DataError


def open_dataset(source: str | Path, *, class_names: dict[int, str] | None = None, modality: str | None = None,
                 skip_bad: bool = False, seed: int = 0) -> Dataset:
    """A builtin dataset by name (`medagent data list`), a dataset folder, or one image (file or DICOM series folder).

    A single image becomes a one-case dataset whose only split is "test" (no label). A folder is a
    dataset when it is in a known layout, else one image when it holds DICOM files directly.
    """
    from medagent.data.builtin import BUILTIN_DATASETS, load_builtin

    text = str(source)
    if text in BUILTIN_DATASETS:
        return load_builtin(text, seed=seed)
    path = Path(text).expanduser()
    if path.is_dir() and not _is_single_series(path):
        from medagent.data.layouts import load_folder

        return load_folder(path, class_names=class_names, modality=modality, skip_bad=skip_bad, split_seed=seed)
    if path.exists():
        case = open_case(path, modality=modality)
        what = "DICOM series folder" if path.is_dir() else "file"
        info = DatasetInfo(name=path.name, description=f"the single {what} {path}", modality=case.modality,
                           class_names=case.class_names, label_origin="none", license="user", source=str(path),
                           ndim=case.ndim, layout="file")
        return Dataset(info=info, splits={"test": CaseList.from_cases([case])})
    names = ", ".join(sorted(BUILTIN_DATASETS))
    raise DataError(f"{text!r} is neither a builtin dataset ({names}) nor an existing file or folder")


def _is_single_series(folder: Path) -> bool:
    """A folder in no dataset layout that holds DICOM files directly: one image, not a dataset."""
    from medagent.data.io.dicom import is_dicom_series_folder
    from medagent.data.layouts import detect_layout
    from medagent.errors import LayoutError

    try:
        detect_layout(folder)
    except LayoutError:
        return is_dicom_series_folder(folder)
    return False


def open_case(path: str | Path, *, modality: str | None = None) -> Case:
    """Load one image file or DICOM series folder as a Case (see `medagent.data.io.load_image`)."""
    from medagent.data.io import load_image

    return load_image(path, modality=modality)
