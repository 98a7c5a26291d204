"""Shared pieces of the builtin datasets: the spec type and the cached-records -> `Dataset` glue.

A builtin deriver returns `(arrays, meta)` for `medagent.data.cache.load_or_derive`:
- `meta["cases"]`: one JSON record per case: id, subject, split, spacing, optional affine (4x4 list),
  and provenance extras;
- `arrays`: `image_<i>` (C, H, W) (stored in a compact dtype, served as float32), `label_<i>` (H, W)
  uint8 and, for instance datasets, `instances_<i>`.
`build_dataset` turns that into a `Dataset` whose splits are `CaseList`s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from medagent.data.case import Case
from medagent.data.dataset import SPLITS, CaseList, Dataset, DatasetInfo


@dataclass(frozen=True)
class BuiltinSpec:
    """What a builtin dataset is and how to build it.

    Attributes:
        name: name used by `load_builtin` and `medagent data list`.
        summary: one sentence, shown to users (says how the labels were made).
        modality: modality of its images.
        label_origin: "template-derived", "synthetic", "expert", "procedural", "threshold-derived".
        license: licence of the source files.
        source: the installed package files it is derived from.
        class_names: class index -> name, 0 -> "background".
        version: derivation version (cache key); bumped when the derivation changes.
        seeded: whether `seed` changes the data (procedural/synthetic datasets).
        ndim: spatial dimension of its cases.
        builder: `builder(seed) -> (arrays, meta)`; see module docstring.
    """

    name: str
    summary: str
    modality: str
    label_origin: str
    license: str
    source: str
    class_names: dict[int, str]
    version: int
    seeded: bool
    builder: Callable[[int], tuple[dict[str, np.ndarray], dict[str, Any]]] = field(repr=False, compare=False)
    ndim: int = 2

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            description=self.summary,
            modality=self.modality,
            class_names=dict(self.class_names),
            label_origin=self.label_origin,
            license=self.license,
            source=self.source,
            ndim=self.ndim,
            layout="builtin",
        )


def case_from_record(spec: BuiltinSpec, i: int, rec: dict[str, Any], arrays: dict[str, np.ndarray]) -> Case:
    """Build case `i` from its cached record and arrays."""
    inst = arrays.get(f"instances_{i}")
    affine = rec.get("affine")
    return Case(
        image=arrays[f"image_{i}"].astype(np.float32),
        label=arrays[f"label_{i}"],
        instances=None if inst is None else inst.astype(np.uint16, copy=False),
        spacing=tuple(rec["spacing"]),
        modality=spec.modality,
        class_names=dict(spec.class_names),
        id=rec["id"],
        subject=rec["subject"],
        affine=None if affine is None else np.asarray(affine, dtype=np.float64),
        provenance={
            "dataset": spec.name,
            "label_origin": spec.label_origin,
            "source": spec.source,
            "license": spec.license,
            **rec.get("provenance", {}),
        },
    )


def build_dataset(spec: BuiltinSpec, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Dataset:
    """A `Dataset` with "train"/"val"/"test" splits from cached arrays and records."""
    splits: dict[str, CaseList] = {}
    records = meta["cases"]
    for split in SPLITS:
        idx = [i for i, r in enumerate(records) if r["split"] == split]
        splits[split] = CaseList(
            [records[i]["id"] for i in idx],
            [(lambda i=i: case_from_record(spec, i, records[i], arrays)) for i in idx],
            [records[i]["subject"] for i in idx],
        )
    return Dataset(info=spec.info(), splits=splits)


def record(
    cid: str,
    subject: str,
    split: str,
    spacing: tuple[float, ...],
    affine: np.ndarray | None = None,
    **provenance: Any,
) -> dict[str, Any]:
    """A JSON-able case record (see module docstring)."""
    return {
        "id": cid,
        "subject": subject,
        "split": split,
        "spacing": [float(s) for s in spacing],
        "affine": None if affine is None else np.asarray(affine, dtype=float).tolist(),
        "provenance": provenance,
    }
