"""User dataset folders -> `Dataset`: nnU-Net v2 / MSD, `images/` + `labels/`, Ultralytics YOLO segmentation.

In `images/` + `labels/`, a case is an image file `images/<case>.<ext>` or a DICOM series folder
`images/<case>/` (the .dcm files of one series directly inside), each paired with `labels/<case>.<ext>`
(NIfTI, NRRD, MHA, ...; on the series' world grid, see `medagent.data.io.load_label`). Label folders and
DICOM-SEG labels are not read; nnU-Net and YOLO folders hold files only.

`load_folder` checks the folder's index files, pairing and paths up front (cheap: no pixels are read;
a DICOM series' headers are, so a series mixing several, with an unreadable file or a missing slice is
refused, or skipped, here) and serves cases lazily. Bad content (NaN voxels, an image/label grid
mismatch, label values outside the classes) only shows when a case is loaded; `validate=True` (or
`validate_dataset`) loads every case once so that it raises, or with `skip_bad=True` lists, those too. Loading never writes into the folder.

Splits: an explicit split (medagent's `splits.json`, labelled `imagesTs`, YOLO's train/val/test keys,
`images/{train,val,test}`) wins; otherwise subjects are split 70/10/20 with `split_seed`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medagent.data.case import Case
from medagent.data.dataset import SPLITS, CaseList, Dataset, DatasetInfo, Skipped
from medagent.data.intensity import canonical_modality
from medagent.data.io import detect_format, load_image, load_label
from medagent.data.io.dicom import dicom_shape, is_dicom_series_folder, read_series_headers
from medagent.data.io.formats import is_image_file, stem
from medagent.errors import ConfigError, DataError, LayoutError

LAYOUTS = ("nnunet", "images-labels", "yolo")
LOOKED_FOR = ("nnU-Net v2 / MSD (dataset.json or imagesTr/), Ultralytics YOLO (data.yaml with 'names'), "
              "images/ + labels/ (or masks/) with matching file names or DICOM series folders images/<case>/")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
SPLITS_FILE = "splits.json"
_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


# -- shared pieces ---------------------------------------------------------------------------------
@dataclass
class Entry:
    """One case as the index describes it, before any pixel is read."""

    id: str
    images: list[Path]
    label: Path | None = None
    subject: str = ""
    split: str | None = None
    polygons: list[tuple[int, np.ndarray]] | None = None  # YOLO: (class index, (n, 2) normalised x, y)
    modality_tag: str | None = None  # a DICOM series' Modality tag, read with its headers


@dataclass
class _Scan:
    """What a layout scanner found: entries, classes, modality, and bad files (with skip_bad)."""

    entries: list[Entry] = field(default_factory=list)
    class_names: dict[int, str] | None = None
    modality: str | None = None
    skipped: list[Skipped] = field(default_factory=list)
    description: str = ""


class _Bad:
    """Raise for the first bad file, or record it and go on (skip_bad)."""

    def __init__(self, skip_bad: bool, scan: _Scan) -> None:
        self.skip_bad, self.scan = skip_bad, scan

    def __call__(self, path: Path | str, reason: str, error: type[DataError] = DataError) -> None:
        if not self.skip_bad:
            raise error(f"{path}: {reason}")
        self.scan.skipped.append(Skipped(str(path), reason))


def _inside(root: Path, target: Path) -> bool:
    try:
        target.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p)) if folder.is_dir() else []


def _modality_or_none(name: Any) -> str | None:
    try:
        mod = canonical_modality(str(name))
    except ConfigError:
        return None
    return None if mod == "unknown" else mod


def split_subjects(subjects: list[str], seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> dict[str, str]:
    """Assign each distinct subject to "train", "val" or "test" (seeded; sizes rounded, train >= 1).

    With two or more subjects and a test fraction > 0, test gets at least one; val gets at least one
    from five subjects on when its fraction is > 0.
    """
    unique = sorted(set(subjects))
    order = np.random.default_rng(seed).permutation(len(unique))
    n = len(unique)
    total = sum(fractions)
    n_test = int(round(fractions[2] / total * n))
    n_val = int(round(fractions[1] / total * n))
    if fractions[2] > 0 and n >= 2:
        n_test = max(n_test, 1)
    if fractions[1] > 0 and n >= 5:
        n_val = max(n_val, 1)
    while n_test + n_val >= n and n > 0:  # keep at least one training subject
        if n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    out = {}
    for rank, idx in enumerate(order):
        out[unique[idx]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return out


# -- layout detection ------------------------------------------------------------------------------
def _yolo_yaml(root: Path) -> Path | None:
    import yaml

    candidates = [root / "data.yaml", root / "data.yml"] + sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml"))
    for p in candidates:
        if p.is_file():
            try:
                doc = yaml.safe_load(p.read_text())
            except Exception:
                continue
            if isinstance(doc, dict) and "names" in doc:
                return p
    return None


def detect_layout(path: str | Path) -> str:
    """The layout of a dataset folder: "nnunet", "yolo" or "images-labels".

    Raises:
        LayoutError: the folder does not exist, is empty, or matches no known layout.
    """
    root = Path(path)
    if not root.exists():
        raise LayoutError(f"{root}: folder not found")
    if not root.is_dir():
        raise LayoutError(f"{root}: is a file, not a dataset folder (use load_image for single files)")
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise LayoutError(f"{root}: folder is empty; looked for {LOOKED_FOR}")
    if (root / "dataset.json").is_file() or (root / "imagesTr").is_dir():
        return "nnunet"
    if _yolo_yaml(root) is not None:
        return "yolo"
    if (root / "images").is_dir() and ((root / "labels").is_dir() or (root / "masks").is_dir()):
        return "images-labels"
    if is_dicom_series_folder(root):
        raise LayoutError(f"{root}: is a DICOM series folder (one image), not a dataset folder: open it with load_image "
                          "(or --image), or make it a case: images/<case>/ beside labels/<case>.nii.gz")
    raise LayoutError(f"{root}: folder is in no known dataset layout; looked for {LOOKED_FOR}")


# -- (a) nnU-Net v2 / MSD --------------------------------------------------------------------------
def _nnunet_classes(doc: dict[str, Any], json_path: Path) -> dict[int, str] | None:
    labels = doc.get("labels")
    if not labels:
        return None
    out: dict[int, str] = {}
    for k, v in labels.items():
        if str(k).isdigit():  # MSD v1: {"0": "background"}
            out[int(k)] = str(v)
        elif isinstance(v, int) or (isinstance(v, str) and v.isdigit()):  # v2: {"background": 0}
            out[int(v)] = str(k)
        else:
            raise LayoutError(f"{json_path}: label entry {k!r}: {v!r} is not a class index (region-based labels are not supported)")
    out.setdefault(0, "background")
    return dict(sorted(out.items()))


def _nnunet_modality(doc: dict[str, Any]) -> str | None:
    channels = doc.get("channel_names") or doc.get("modality") or {}
    if isinstance(channels, dict) and channels:
        first = channels.get("0", next(iter(channels.values())))
        return _modality_or_none(first)
    return None


def _channel_groups(folder: Path, ending: str | None) -> dict[str, dict[int, Path]]:
    """case id -> {channel: file} for the files of an nnU-Net images folder."""
    groups: dict[str, dict[int, Path]] = {}
    for f in _image_files(folder):
        if ending and not f.name.endswith(ending):
            continue
        s = stem(f)
        m = _CHANNEL.match(s)
        case, ch = (m["case"], int(m["ch"])) if m else (s, 0)
        groups.setdefault(case, {})[ch] = f
    return groups


def _pair_nnunet(images: Path, labels: Path, ending: str | None, n_channels: int | None, bad: _Bad, need_labels: bool) -> list[Entry]:
    entries = []
    groups = _channel_groups(images, ending)
    label_files = {stem(f): f for f in _image_files(labels) if not ending or f.name.endswith(ending)}
    for case, chans in sorted(groups.items()):
        want = n_channels or (max(chans) + 1)
        missing = [c for c in range(want) if c not in chans]
        if missing:
            bad(images / f"{case}_{missing[0]:04d}{ending or ''}", f"missing channel file {missing[0]} of case {case!r}")
            continue
        label = label_files.pop(case, None)
        if label is None and need_labels:
            bad(labels / f"{case}{ending or '.nii.gz'}", f"missing label file for image(s) {[chans[c].name for c in range(want)]}")
            continue
        entries.append(Entry(case, [chans[c] for c in range(want)], label))
    if need_labels:
        for case, f in sorted(label_files.items()):
            bad(f, f"label file has no image in {images}")
    return entries


def _scan_nnunet(root: Path, bad: _Bad, scan: _Scan) -> None:
    json_path = root / "dataset.json"
    doc: dict[str, Any] = {}
    if json_path.is_file():
        try:
            doc = json.loads(json_path.read_text())
        except Exception as exc:
            raise LayoutError(f"{json_path}: cannot parse JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise LayoutError(f"{json_path}: top level is not a JSON object")
    scan.class_names = _nnunet_classes(doc, json_path)
    scan.modality = _nnunet_modality(doc)
    scan.description = str(doc.get("description") or doc.get("name") or "")
    ending = doc.get("file_ending")
    n_channels = len(doc["channel_names"]) if isinstance(doc.get("channel_names"), dict) and doc["channel_names"] else None

    def resolve(entry_name: str, rel: Any) -> Path | None:
        target = root / str(rel)
        if not _inside(root, target):
            bad(json_path, f"entry {entry_name!r} points outside the dataset folder: {rel}", LayoutError)
            return None
        return target

    if isinstance(doc.get("training"), list):  # MSD v1: explicit image/label pairs
        for item in doc["training"]:
            if not isinstance(item, dict) or "image" not in item:
                raise LayoutError(f"{json_path}: 'training' entry {item!r} has no 'image'")
            img, lab = resolve(str(item["image"]), item["image"]), resolve(str(item.get("label")), item.get("label", ""))
            if img is None or lab is None:
                continue
            files = [img] if img.exists() else [img.parent / f"{stem(img)}_{c:04d}{img.name[len(stem(img)):]}" for c in range(n_channels or 1)]
            missing = [f for f in files if not f.exists()]
            if missing:
                bad(missing[0], f"missing image file listed in {json_path.name}")
                continue
            if not lab.is_file():
                bad(lab, f"missing label file listed in {json_path.name}")
                continue
            scan.entries.append(Entry(stem(img), files, lab))
    elif isinstance(doc.get("dataset"), dict):  # nnU-Net v2 explicit file lists
        for case, item in sorted(doc["dataset"].items()):
            imgs = [resolve(f"{case}.images", p) for p in item.get("images", [])]
            lab = resolve(f"{case}.label", item.get("label", ""))
            if any(p is None for p in imgs) or lab is None:
                continue
            missing = [p for p in imgs + [lab] if not p.is_file()]
            if missing:
                bad(missing[0], f"missing file listed for case {case!r} in {json_path.name}")
                continue
            scan.entries.append(Entry(case, imgs, lab))  # type: ignore[arg-type]
    else:
        if not (root / "imagesTr").is_dir():
            raise LayoutError(f"{root}: nnU-Net folder has no imagesTr/ and {json_path.name} lists no 'training' cases")
        scan.entries += _pair_nnunet(root / "imagesTr", root / "labelsTr", ending, n_channels, bad, need_labels=True)
    if (root / "imagesTs").is_dir() and (root / "labelsTs").is_dir():
        for e in _pair_nnunet(root / "imagesTs", root / "labelsTs", ending, n_channels, bad, need_labels=True):
            e.split = "test"
            scan.entries.append(e)
    _apply_splits_file(root, scan)


def _apply_splits_file(root: Path, scan: _Scan) -> None:
    """medagent's export records each case's split and subject in splits.json; honour it when present."""
    path = root / SPLITS_FILE
    if not path.is_file():
        return
    try:
        doc = json.loads(path.read_text())
        table = {str(c["id"]): c for c in doc["cases"]}
    except Exception as exc:
        raise LayoutError(f"{path}: cannot read split table (expects {{'cases': [{{'id', 'split', 'subject'}}]}}): {exc}") from exc
    for e in scan.entries:
        row = table.get(e.id)
        if row is not None:
            if row.get("split") not in SPLITS:
                raise LayoutError(f"{path}: case {e.id!r} has split {row.get('split')!r}; expected one of {SPLITS}")
            e.split = row["split"]
            e.subject = str(row.get("subject") or e.id)


# -- (b) images/ + labels/ -------------------------------------------------------------------------
def _reason(exc: DataError, path: Path) -> str:
    """The reason of a DataError raised as 'path: reason', without the path (bad() puts it back)."""
    text, prefix = str(exc), f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def _subfolders(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []


def _series_entries(img_dir: Path, lab_dir: Path, labels: dict[str, Path], split: str | None, bad: _Bad,
                    skip: set[str]) -> list[Entry]:
    """Cases that are DICOM series folders, `img_dir/<case>/`, each paired with `lab_dir/<case>.<ext>`.

    The series is checked from its headers now (one series, readable files, even slices), so a broken
    one is refused or skipped before any pixel is read. A sub-folder holding no DICOM file is no case;
    it is reported only when a label names it. `labels` loses the labels used.
    """
    entries = []
    label_dirs = {d.name: d for d in _subfolders(lab_dir)}
    for d in _subfolders(img_dir):
        if d.name in skip:
            continue
        if not is_dicom_series_folder(d):
            if d.name in labels:
                bad(d, f"holds no DICOM files directly, so it is no case for label {labels.pop(d.name).name} (a case "
                       "folder holds the files of one DICOM series; nested patient/study/series folders are not read)")
            continue
        label = labels.pop(d.name, None)
        if label is None:
            hint = (f"; {label_dirs[d.name]} is a folder, and label folders (DICOM series, DICOM-SEG) are not read: "
                    "export the label as NIfTI/NRRD/MHA") if d.name in label_dirs else ""
            bad(d, f"DICOM series folder has no label file {d.name}.nii.gz (or .nrrd, .mha, ...) in {lab_dir}{hint}")
            continue
        try:
            series = read_series_headers(d)
        except DataError as exc:
            bad(d, _reason(exc, d))
            continue
        entries.append(Entry(d.name, [d], label, subject=series.patient_id, split=split, modality_tag=series.modality))
    return entries


def _series_metadata(scan: _Scan) -> None:
    """What the series headers say about the whole folder.

    Series cases keep their DICOM PatientID as subject (so a patient's series share a split) only when the
    folder names two patients or more: an anonymiser that wrote one ID everywhere must not make one subject.
    When every case is a series and all share one Modality tag, that is the dataset's modality.
    """
    series = [e for e in scan.entries if e.images[0].is_dir()]
    if len({e.subject for e in series if e.subject}) < 2:
        for e in series:
            e.subject = ""
    tags = {e.modality_tag for e in series}
    if series and len(series) == len(scan.entries) and len(tags) == 1:
        scan.modality = _modality_or_none(tags.pop())


def _scan_images_labels(root: Path, bad: _Bad, scan: _Scan) -> None:
    labels_dir = root / "labels" if (root / "labels").is_dir() else root / "masks"
    split_dirs = {"valid": "val"}
    subdirs = [d for d in sorted((root / "images").iterdir()) if d.is_dir() and split_dirs.get(d.name, d.name) in SPLITS]
    groups = [(d, labels_dir / d.name, split_dirs.get(d.name, d.name)) for d in subdirs] or [(root / "images", labels_dir, None)]
    for img_dir, lab_dir, split in groups:
        labels = {stem(f): f for f in _image_files(lab_dir)}
        files = _image_files(img_dir)
        for f in files:
            lab = labels.pop(stem(f), None)
            if lab is None:
                bad(f, f"no label file with the same name in {lab_dir}")
                continue
            scan.entries.append(Entry(stem(f), [f], lab, split=split))
        taken = {stem(f) for f in files}
        for d in _subfolders(img_dir):
            if d.name in taken and is_dicom_series_folder(d):  # 'a.nii.gz' and series 'a/' would both be case 'a'
                bad(d, f"case {d.name!r} is both a series folder and an image file in {img_dir}")
        scan.entries += _series_entries(img_dir, lab_dir, labels, split, bad, skip=taken)
        for s, f in sorted(labels.items()):
            bad(f, f"label file has no image with the same name in {img_dir}")
    _series_metadata(scan)


# -- (c) Ultralytics YOLO segmentation ------------------------------------------------------------
def parse_yolo_rows(path: Path, n_classes: int) -> list[tuple[int, np.ndarray]]:
    """Rows `class x1 y1 ... xn yn` (normalised polygon, n >= 3) of one YOLO label file.

    Returns:
        (class index, (n, 2) array of normalised (x, y)) per row.

    Raises:
        DataError: naming the file and line, for a bad class index, an odd coordinate count, fewer
            than 3 points, or coordinates outside [0, 1].
    """
    rows = []
    try:
        text = path.read_text()
    except Exception as exc:
        raise DataError(f"{path}: cannot read YOLO label file: {exc}") from exc
    for no, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{no}"
        try:
            cls_f = float(tokens[0])
            coords = np.array([float(t) for t in tokens[1:]], dtype=np.float64)
        except ValueError as exc:
            raise DataError(f"{where}: not numbers: {exc}") from exc
        if cls_f != int(cls_f) or not 0 <= int(cls_f) < n_classes:
            raise DataError(f"{where}: class index {tokens[0]} is not one of the {n_classes} names in the dataset YAML")
        if coords.size % 2:
            raise DataError(f"{where}: odd number of coordinates ({coords.size}); a polygon row is 'class x1 y1 ... xn yn'")
        if coords.size < 6:
            hint = " (a detection box 'class cx cy w h' is not a polygon)" if coords.size == 4 else ""
            raise DataError(f"{where}: polygon has {coords.size // 2} points; at least 3 are needed{hint}")
        if not np.isfinite(coords).all() or coords.min() < 0.0 or coords.max() > 1.0:
            raise DataError(f"{where}: coordinates outside [0, 1] (min {coords.min():g}, max {coords.max():g}); YOLO polygons are normalised")
        rows.append((int(cls_f), coords.reshape(-1, 2)))
    return rows


def rasterize_yolo(rows: list[tuple[int, np.ndarray]], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Fill YOLO polygons on an (H, W) grid.

    A normalised x covers pixel columns [0, W) continuously, so pixel c is inside when its centre
    (c + 0.5) / W is; later rows overwrite earlier ones where they overlap.

    Returns:
        (label uint8, class index + 1, 0 = background; instances uint16, row number 1..n).
    """
    from skimage.draw import polygon

    h, w = shape
    label = np.zeros(shape, np.uint8)
    instances = np.zeros(shape, np.uint16)
    for i, (cls, pts) in enumerate(rows, start=1):
        rr, cc = polygon(pts[:, 1] * h - 0.5, pts[:, 0] * w - 0.5, shape=shape)
        label[rr, cc] = cls + 1
        instances[rr, cc] = i
    return label, instances


def _yolo_split_images(root: Path, base: Path, value: Any, key: str, yaml_path: Path, bad: _Bad) -> list[Path]:
    """Image files of one split key: a folder, a .txt list of images, or a list of those."""
    values = value if isinstance(value, list) else [value]
    files: list[Path] = []
    for v in values:
        target = base / str(v)
        if not target.exists() and str(v).startswith("../"):  # Roboflow exports write '../train/images'
            target = base / str(v)[3:]
        if not _inside(root, target):
            bad(yaml_path, f"'{key}: {v}' points outside the dataset folder", LayoutError)
            continue
        if target.is_dir():
            files += sorted(p for p in target.rglob("*") if is_image_file(p))
        elif target.is_file() and target.suffix == ".txt":
            for line in target.read_text().splitlines():
                if line.strip():
                    p = (base / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                    if not _inside(root, p):
                        bad(target, f"listed image {line.strip()} is outside the dataset folder", LayoutError)
                    elif not p.is_file():
                        bad(p, f"missing image file listed in {target}")
                    else:
                        files.append(p)
        else:
            bad(target, f"'{key}' folder of {yaml_path.name} not found")
    return files


def _scan_yolo(root: Path, bad: _Bad, scan: _Scan) -> None:
    import yaml

    yaml_path = _yolo_yaml(root)
    assert yaml_path is not None
    doc = yaml.safe_load(yaml_path.read_text())
    names = doc["names"]
    if isinstance(names, dict):
        try:
            names = [str(names[k]) for k in sorted(names, key=int)]
        except (ValueError, KeyError) as exc:
            raise LayoutError(f"{yaml_path}: 'names' keys must be 0..n-1: {exc}") from exc
    if not isinstance(names, list) or not names:
        raise LayoutError(f"{yaml_path}: 'names' must be a non-empty list or dict of class names")
    if len(names) > 254:
        raise LayoutError(f"{yaml_path}: {len(names)} classes do not fit a uint8 label map")
    scan.class_names = {0: "background", **{i + 1: str(n) for i, n in enumerate(names)}}
    base = yaml_path.parent
    if doc.get("path"):
        base = Path(doc["path"]) if Path(doc["path"]).is_absolute() else yaml_path.parent / doc["path"]
        if not _inside(root, base):
            raise LayoutError(f"{yaml_path}: 'path: {doc['path']}' points outside the dataset folder {root}")
    seen: set[str] = set()
    for key in ("train", "val", "test"):
        if not doc.get(key):
            continue
        for img in _yolo_split_images(root, base, doc[key], key, yaml_path, bad):
            parts = img.as_posix().rsplit("/images/", 1)
            if len(parts) != 2:
                bad(img, "YOLO image path has no '/images/' folder to map to '/labels/'")
                continue
            txt = Path(f"{parts[0]}/labels/{parts[1]}").with_suffix(".txt")
            try:
                rows = parse_yolo_rows(txt, len(names)) if txt.is_file() else []  # no file: background only
            except DataError as exc:
                where, _, reason = str(exc).partition(": ")  # "file:line", what is wrong
                bad(where, reason)
                continue
            case_id = stem(img) if stem(img) not in seen else f"{key}_{stem(img)}"
            seen.add(case_id)
            scan.entries.append(Entry(case_id, [img], txt if txt.is_file() else None, split=key, polygons=rows))


# -- assembling the Dataset ------------------------------------------------------------------------
def _load_entry(entry: Entry, class_names: dict[int, str], modality: str | None, layout: str, root: Path) -> Case:
    """Read one entry's pixels: stack channels, attach and check the label."""
    first = load_image(entry.images[0], modality=modality, class_names=class_names, case_id=entry.id)
    channels = [first.image]
    for f in entry.images[1:]:
        other = load_image(f, modality=first.modality, class_names=class_names)
        if other.shape != first.shape or not np.allclose(other.spacing, first.spacing, rtol=1e-3):
            raise DataError(f"{f}: channel grid {other.shape} @ {other.spacing} mm differs from {entry.images[0]} "
                            f"{first.shape} @ {first.spacing} mm")
        channels.append(other.image)
    image = np.concatenate(channels, axis=0) if len(channels) > 1 else first.image
    label = instances = None
    if entry.polygons is not None:
        if first.ndim != 2:
            raise DataError(f"{entry.images[0]}: YOLO labels need 2D images, got shape {first.shape}")
        label, instances = rasterize_yolo(entry.polygons, first.shape)  # type: ignore[arg-type]
    elif entry.label is not None:
        label = load_label(entry.label, first)
    provenance = {**first.provenance, "label_path": str(entry.label) if entry.label else None,
                  "channel_paths": [str(p) for p in entry.images], "layout": layout, "dataset": str(root)}
    return first.replace(image=image, label=label, instances=instances, subject=entry.subject or entry.id, provenance=provenance)


def _probe_ndim(path: Path) -> int:
    """Spatial dimension of an image file or DICOM series folder from its headers (2 for flat formats)."""
    low = path.name.lower()
    try:
        if path.is_dir() or detect_format(path) == "dicom":
            return 3 if dicom_shape(path)[0] > 1 else 2
        if low.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            shape = nib.load(str(path)).shape[:3]
            return 3 if len(shape) == 3 and min(shape) > 1 else 2
        if low.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
            import SimpleITK as sitk

            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            reader.ReadImageInformation()
            size = reader.GetSize()
            return 3 if len(size) == 3 and min(size) > 1 else 2
        if low.endswith(".npy"):
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return 3 if len(shape) == 4 or (len(shape) == 3 and shape[-1] not in (3, 4)) else 2
    except Exception:
        return 2  # the real error surfaces, with its message, when the case is loaded
    return 2  # PNG/JPEG/BMP; TIFF stacks and NPZ are not probed (reported as 2D here)


def load_folder(path: str | Path, *, layout: str | None = None, class_names: dict[int, str] | None = None,
                modality: str | None = None, skip_bad: bool = False, split_seed: int = 0,
                validate: bool = False) -> Dataset:
    """Open a user dataset folder as a `Dataset` of lazily loaded cases.

    Args:
        path: the dataset folder.
        layout: "nnunet", "images-labels" or "yolo"; None detects it.
        class_names: class index -> name (with 0 -> "background"), overriding what the folder says;
            when the folder names none, {0: "background", 1: "foreground"}.
        modality: used when neither file metadata nor the index (dataset.json channel names) names one.
        skip_bad: record bad files in `Dataset.skipped` and go on, instead of raising on the first.
        split_seed: seed of the 70/10/20 subject split used when the folder defines no split.
        validate: load every case once now, so bad content (NaN, grid mismatch, label values) raises
            here, or with skip_bad is listed in `skipped` and the case dropped.

    Raises:
        LayoutError: missing/empty folder, unknown layout, index paths outside the folder.
        DataError: the first bad file (missing, unreadable, mismatched) unless skip_bad.
    """
    root = Path(path)
    found = detect_layout(root)
    layout = layout or found
    if layout not in LAYOUTS:
        raise LayoutError(f"layout {layout!r} is not one of {LAYOUTS}")
    scan = _Scan()
    bad = _Bad(skip_bad, scan)
    {"nnunet": _scan_nnunet, "images-labels": _scan_images_labels, "yolo": _scan_yolo}[layout](root, bad, scan)
    if not scan.entries:
        reasons = "; ".join(f"{s.path}: {s.reason}" for s in scan.skipped[:3])
        raise LayoutError(f"{root}: no usable cases in the {layout} layout" + (f" ({reasons})" if reasons else ""))
    names = dict(class_names) if class_names else (scan.class_names or {0: "background", 1: "foreground"})
    names = {int(k): str(v) for k, v in names.items()}
    names.setdefault(0, "background")
    mod = scan.modality or (_modality_or_none(modality) if modality else None)

    for e in scan.entries:
        e.subject = e.subject or e.id
    unsplit = [e for e in scan.entries if e.split is None]
    has_test = any(e.split == "test" for e in scan.entries)
    fractions = (DEFAULT_FRACTIONS[0], DEFAULT_FRACTIONS[1], 0.0) if has_test else DEFAULT_FRACTIONS
    assignment = split_subjects([e.subject for e in unsplit], split_seed, fractions)
    for e in unsplit:
        e.split = assignment[e.subject]

    splits: dict[str, CaseList] = {}
    for split in SPLITS:
        chosen = [e for e in scan.entries if e.split == split]
        loaders: list[Callable[[], Case]] = [
            (lambda e=e: _load_entry(e, names, mod, layout, root)) for e in chosen  # type: ignore[misc]
        ]
        splits[split] = CaseList([e.id for e in chosen], loaders, [e.subject for e in chosen])
    info = DatasetInfo(
        name=str(root), description=scan.description or f"user dataset in {layout} layout", modality=mod or "unknown",
        class_names=names, label_origin="user", license="unknown", source=str(root),
        ndim=2 if layout == "yolo" else _probe_ndim(scan.entries[0].images[0]), layout=layout,
    )
    dataset = Dataset(info=info, splits=splits, skipped=list(scan.skipped))
    return validate_dataset(dataset, skip_bad=skip_bad) if validate else dataset


def validate_dataset(dataset: Dataset, skip_bad: bool = False) -> Dataset:
    """Load every case once. Raises the first content error, or with skip_bad returns a dataset
    without the bad cases and with them listed in `skipped` (path, reason)."""
    skipped = list(dataset.skipped)
    splits = {}
    for name, cases in dataset.splits.items():
        keep = []
        for i in range(len(cases)):
            try:
                cases[i]
            except DataError as exc:
                if not skip_bad:
                    raise
                msg = str(exc)
                where, _, reason = msg.partition(": ")
                skipped.append(Skipped(where if reason else cases.ids[i], reason or msg))
                continue
            keep.append(i)
        loaders = [(lambda i=i, c=cases: c[i]) for i in keep]
        splits[name] = CaseList([cases.ids[i] for i in keep], loaders, [cases.subjects[i] for i in keep])
    return Dataset(info=dataset.info, splits=splits, skipped=skipped)
