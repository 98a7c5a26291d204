"""`export_nnunet`: write a `Dataset` as an nnU-Net v2 folder that `load_folder` reads back identically.

Train and val cases go to imagesTr/labelsTr, test cases to imagesTs/labelsTs, one `{id}_{c:04d}.nii.gz`
per channel, on each case's grid (its affine, or a diagonal one from its spacing; 2D cases get a
singleton axis). `dataset.json` carries labels and channel_names (the cases' modality), `splits.json`
each case's split and subject, so the split, subjects and classes survive the round trip.
Instance maps and provenance are not part of the nnU-Net format and are not written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from medagent.data.dataset import Dataset
from medagent.data.io.writers import write_nifti
from medagent.data.layouts import SPLITS_FILE
from medagent.errors import DataError

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _label_names(class_names: dict[int, str]) -> dict[str, int]:
    """nnU-Net v2 "labels" (name -> index); duplicate names get the index appended so none is lost."""
    out: dict[str, int] = {}
    for idx, name in sorted(class_names.items()):
        key = name if name not in out else f"{name}_{idx}"
        out[key] = int(idx)
    return out


def export_nnunet(dataset: Dataset, out_dir: str | Path, splits: tuple[str, ...] = ("train", "val", "test"),
                  overwrite: bool = False) -> Path:
    """Write `dataset`'s `splits` as an nnU-Net v2 folder at `out_dir`; returns `out_dir`.

    Raises:
        DataError: `out_dir` already holds a dataset (without overwrite), a train/val case has no
            label, two case ids clash after making them file-name safe, cases differ in channel count.
    """
    out = Path(out_dir)
    if (out / "dataset.json").exists() and not overwrite:
        raise DataError(f"{out}: already holds a dataset.json; pass overwrite=True or choose another folder")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    modalities: set[str] = set()
    n_channels: int | None = None
    n_train = 0
    for split in splits:
        tr = split != "test"
        for case in dataset.cases(split):
            cid = _SAFE.sub("_", case.id)
            if cid in seen:
                raise DataError(f"{out}: case ids {seen[cid]!r} and {case.id!r} both become file name {cid!r}")
            seen[cid] = case.id
            if case.label is None and tr:
                raise DataError(f"case {case.id!r} ({case.provenance.get('path', 'no path')}) has no label; nnU-Net training cases need one")
            if n_channels is not None and case.channels != n_channels:
                raise DataError(f"case {case.id!r} has {case.channels} channels, earlier cases {n_channels}")
            n_channels = case.channels
            modalities.add(case.modality)
            img_dir, lab_dir = (out / "imagesTr", out / "labelsTr") if tr else (out / "imagesTs", out / "labelsTs")
            for c in range(case.channels):
                write_nifti(case.image[c], case, img_dir / f"{cid}_{c:04d}.nii.gz")
            if case.label is not None:
                write_nifti(case.label, case, lab_dir / f"{cid}.nii.gz")
            rows.append({"id": cid, "split": split, "subject": case.subject})
            n_train += int(tr)
    modality = modalities.pop() if len(modalities) == 1 else dataset.info.modality
    doc = {
        "name": dataset.info.name,
        "description": dataset.info.description,
        "channel_names": {str(c): modality for c in range(n_channels or 1)},
        "labels": _label_names(dataset.info.class_names),
        "numTraining": n_train,
        "file_ending": ".nii.gz",
        "medagent": {"label_origin": dataset.info.label_origin, "license": dataset.info.license, "source": dataset.info.source},
    }
    (out / "dataset.json").write_text(json.dumps(doc, indent=2))
    (out / SPLITS_FILE).write_text(json.dumps({"cases": rows}, indent=2))
    return out
