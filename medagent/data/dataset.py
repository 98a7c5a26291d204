"""`Dataset`: named splits of lazily loaded `Case`s, shared by builtin datasets and user folders.

A dataset knows its classes, modality and how its labels were made (`DatasetInfo.label_origin`), and
serves each split as a `CaseList`: a sequence that loads a case only when indexed, so pointing medagent
at a large folder costs nothing until cases are used. Files that failed to load with `skip_bad=True`
are listed in `Dataset.skipped`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Iterator, overload

from medagent.data.case import Case
from medagent.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is.

    Attributes:
        name: short name (`medagent data list`), or the folder path for user data.
        description: one sentence.
        modality: the modality of its images (see `medagent.data.case.MODALITIES`).
        class_names: class index -> name, 0 -> "background".
        label_origin: honest name for how the labels were made: "expert", "template-derived",
            "synthetic", "threshold-derived", "procedural", "user".
        license: licence of the source files.
        source: where the files come from (package and path, or the user's folder).
        ndim: 2 or 3, the spatial dimension of the cases it serves.
        layout: folder layout for user data ("nnunet", "images-labels", "yolo"), or "builtin".
    """

    name: str
    description: str
    modality: str
    class_names: dict[int, str]
    label_origin: str
    license: str
    source: str
    ndim: int = 2
    layout: str = "builtin"


@dataclass(frozen=True)
class Skipped:
    """A file that could not be loaded with skip_bad=True, and why."""

    path: str
    reason: str


class CaseList(Sequence[Case]):
    """A sequence of cases loaded on access. `ids` are known up front; `loaders[i]()` builds case i."""

    def __init__(self, ids: list[str], loaders: list[Callable[[], Case]], subjects: list[str] | None = None) -> None:
        if len(ids) != len(loaders):
            raise ValueError("ids and loaders differ in length")
        self.ids = list(ids)
        self._loaders = list(loaders)
        self.subjects = list(subjects) if subjects is not None else list(ids)

    @classmethod
    def from_cases(cls, cases: list[Case]) -> "CaseList":
        return cls([c.id for c in cases], [(lambda c=c: c) for c in cases], [c.subject for c in cases])

    def __len__(self) -> int:
        return len(self._loaders)

    @overload
    def __getitem__(self, index: int) -> Case: ...
    @overload
    def __getitem__(self, index: slice) -> "CaseList": ...
    def __getitem__(self, index):  # type: ignore[no-untyped-def]
        if isinstance(index, slice):
            return CaseList(self.ids[index], self._loaders[index], self.subjects[index])
        if not -len(self) <= index < len(self):
            raise IndexError(f"case index {index} outside 0..{len(self) - 1}")
        return self._loaders[index]()

    def __iter__(self) -> Iterator[Case]:
        for loader in self._loaders:
            yield loader()


@dataclass
class Dataset:
    """Named splits of cases plus what they are."""

    info: DatasetInfo
    splits: dict[str, CaseList]
    skipped: list[Skipped] = field(default_factory=list)

    def cases(self, split: str = "test") -> CaseList:
        """The cases of one split ("train", "val", "test", or "all" for every split in order)."""
        if split == "all":
            ids, loaders, subjects = [], [], []
            for name in self.splits:
                part = self.splits[name]
                ids += part.ids
                loaders += part._loaders
                subjects += part.subjects
            return CaseList(ids, loaders, subjects)
        if split not in self.splits:
            raise DataError(f"dataset {self.info.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]

    def counts(self) -> dict[str, int]:
        return {name: len(cases) for name, cases in self.splits.items()}
