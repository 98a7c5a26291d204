"""Every kind of bad input gives one clear DataError/LayoutError naming the file and what is wrong,
raised with skip_bad=False and recorded in `Dataset.skipped` (the rest still loading) with skip_bad=True."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from io_fixtures import write_dicom_slice
from medagent.data import load_folder, load_image
from medagent.data.io import load_label
from medagent.errors import DataError, LayoutError


def one_line(exc: pytest.ExceptionInfo, *needles: str) -> None:
    """The message is one line and names every needle (file name, what is wrong)."""
    msg = str(exc.value)
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, (n, msg)


def nifti(path: Path, data: np.ndarray, zooms=(1.0, 1.0, 1.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag(list(zooms) + [1.0])), path)
    return path


def good_pair(root: Path, name: str) -> None:
    nifti(root / "images" / f"{name}.nii.gz", np.ones((4, 5, 3), np.float32))
    nifti(root / "labels" / f"{name}.nii.gz", np.zeros((4, 5, 3), np.uint8))


def check_folder(root: Path, needles: tuple[str, ...], validate: bool, error=DataError, good: int = 2) -> None:
    """skip_bad=False raises one clear error; skip_bad=True lists the file and serves the good cases."""
    with pytest.raises(error) as exc:
        load_folder(root, validate=validate)
    one_line(exc, *needles)
    ds = load_folder(root, skip_bad=True, validate=validate)
    assert len(ds.skipped) == 1, ds.skipped
    assert needles[0] in ds.skipped[0].path and ds.skipped[0].reason
    assert sum(ds.counts().values()) == good
    assert all(c.image is not None for c in ds.cases("all"))


# -- single files ------------------------------------------------------------------------------------
def test_missing_file(tmp_path):
    with pytest.raises(DataError) as exc:
        load_image(tmp_path / "nope.nii.gz")
    one_line(exc, "nope.nii.gz", "not found")


def test_missing_label_in_folder(tmp_path):
    for n in ("a", "b"):
        good_pair(tmp_path, n)
    nifti(tmp_path / "images" / "lonely.nii.gz", np.ones((4, 5, 3), np.float32))
    check_folder(tmp_path, ("lonely.nii.gz", "no label file"), validate=False)


def test_truncated_nifti(tmp_path):
    src = nifti(tmp_path / "full.nii.gz", np.random.default_rng(0).random((20, 20, 20)).astype(np.float32))
    blob = src.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as exc:
        load_image(tmp_path / "cut.nii.gz")
    one_line(exc, "cut.nii.gz", "cannot read NIfTI")
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8, 8), np.int16)), str(tmp_path / "full.nrrd"))
    blob = (tmp_path / "full.nrrd").read_bytes()
    (tmp_path / "cut.nrrd").write_bytes(blob[: len(blob) - 300])
    with pytest.raises(DataError) as exc:
        load_image(tmp_path / "cut.nrrd")
    one_line(exc, "cut.nrrd", "cannot read")

    root = tmp_path / "ds"
    for n in ("a", "b"):
        good_pair(root, n)
    (root / "images" / "c.nii.gz").write_bytes(gzip.compress(b"garbage" * 10)[:30])
    nifti(root / "labels" / "c.nii.gz", np.zeros((4, 5, 3), np.uint8))
    assert sum(load_folder(root).counts().values()) == 3  # lazy: nothing read yet
    check_folder(root, ("c.nii.gz", "cannot read"), validate=True)


def test_unsupported_file(tmp_path):
    (tmp_path / "notes.xyz").write_text("hello")
    with pytest.raises(DataError) as exc:
        load_image(tmp_path / "notes.xyz")
    one_line(exc, "notes.xyz", "unsupported file format")


@pytest.mark.parametrize("what", ["shape", "spacing"])
def test_image_label_grid_mismatch(tmp_path, what):
    root = tmp_path / "ds"
    for n in ("a", "b"):
        good_pair(root, n)
    nifti(root / "images" / "m.nii.gz", np.ones((4, 5, 3), np.float32))
    if what == "shape":
        nifti(root / "labels" / "m.nii.gz", np.zeros((4, 5, 2), np.uint8))
    else:
        nifti(root / "labels" / "m.nii.gz", np.zeros((4, 5, 3), np.uint8), zooms=(1.0, 1.0, 2.5))
    image = load_image(root / "images" / "m.nii.gz")
    with pytest.raises(DataError) as exc:
        load_label(root / "labels" / "m.nii.gz", image)
    one_line(exc, "m.nii.gz", f"label {what}", "differs")
    check_folder(root, ("m.nii.gz", f"label {what}"), validate=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_inf_image(tmp_path, bad):
    root = tmp_path / "ds"
    for n in ("a", "b"):
        good_pair(root, n)
    img = np.ones((4, 5, 3), np.float32)
    img[1, 2, 0] = bad
    nifti(root / "images" / "n.nii.gz", img)
    nifti(root / "labels" / "n.nii.gz", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(DataError) as exc:
        load_image(root / "images" / "n.nii.gz")
    one_line(exc, "n.nii.gz", "NaN/Inf")
    check_folder(root, ("n.nii.gz", "NaN/Inf"), validate=True)


def test_label_values_outside_classes(tmp_path):
    root = tmp_path / "ds"
    for n in ("a", "b"):
        good_pair(root, n)
    nifti(root / "images" / "v.nii.gz", np.ones((4, 5, 3), np.float32))
    lab = np.zeros((4, 5, 3), np.uint8)
    lab[0, 0, 0] = 3
    nifti(root / "labels" / "v.nii.gz", lab)
    check_folder(root, ("v.nii.gz", "label values [3]", "declared classes"), validate=True)
    # declaring the class makes the same folder load
    ds = load_folder(root, class_names={0: "background", 1: "a", 2: "b", 3: "c"}, validate=True)
    assert not ds.skipped


# -- folders -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("skip_bad", [False, True])
def test_empty_and_unknown_folders(tmp_path, skip_bad):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LayoutError) as exc:
        load_folder(empty, skip_bad=skip_bad)
    one_line(exc, "empty", "folder is empty", "nnU-Net", "YOLO", "images/")
    odd = tmp_path / "odd"
    (odd / "scans").mkdir(parents=True)
    (odd / "readme.txt").write_text("x")
    with pytest.raises(LayoutError) as exc:
        load_folder(odd, skip_bad=skip_bad)
    one_line(exc, "odd", "no known dataset layout", "nnU-Net", "YOLO", "images/")
    with pytest.raises(LayoutError) as exc:
        load_folder(tmp_path / "missing", skip_bad=skip_bad)
    one_line(exc, "missing", "not found")


def yolo_folder(root: Path, bad_row: str) -> None:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    for name, split in (("g1", "train"), ("g2", "val"), ("bad", "train")):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "images" / split / f"{name}.png")
        row = bad_row if name == "bad" else "0 0.1 0.1 0.9 0.1 0.5 0.9"
        (root / "labels" / split / f"{name}.txt").write_text(f"0 0.2 0.2 0.8 0.2 0.5 0.8\n{row}\n")
    (root / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [cell]\n")


@pytest.mark.parametrize("row,needle", [
    ("0 0.1 0.1 0.9 0.9", "2 points"),
    ("0 0.1 0.1 0.9", "odd number"),
    ("0 0.1 0.1 1.2 0.1 0.5 0.9", "outside [0, 1]"),
    ("0 -0.1 0.1 0.9 0.1 0.5 0.9", "outside [0, 1]"),
    ("3 0.1 0.1 0.9 0.1 0.5 0.9", "class index 3"),
])
def test_yolo_bad_rows(tmp_path, row, needle):
    yolo_folder(tmp_path, row)
    check_folder(tmp_path, ("bad.txt", needle), validate=False)
    with pytest.raises(DataError) as exc:
        load_folder(tmp_path)
    one_line(exc, "bad.txt:2")  # file and line


def test_dicom_series_mixed_sizes(tmp_path):
    write_dicom_slice(tmp_path / "1.dcm", np.zeros((4, 4), np.uint16), position=(0, 0, 0))
    write_dicom_slice(tmp_path / "2.dcm", np.zeros((4, 5), np.uint16), position=(0, 0, 1))
    with pytest.raises(DataError) as exc:
        load_image(tmp_path)
    one_line(exc, str(tmp_path), "different sizes")


def test_dataset_json_path_outside_folder(tmp_path):
    root = tmp_path / "Task"
    training = []
    for n in ("a", "b"):
        nifti(root / "imagesTr" / f"{n}.nii.gz", np.ones((3, 3, 3), np.float32))
        nifti(root / "labelsTr" / f"{n}.nii.gz", np.zeros((3, 3, 3), np.uint8))
        training.append({"image": f"./imagesTr/{n}.nii.gz", "label": f"./labelsTr/{n}.nii.gz"})
    nifti(tmp_path / "secret.nii.gz", np.ones((3, 3, 3), np.float32))
    training.append({"image": "../secret.nii.gz", "label": "./labelsTr/a.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "x"}, "training": training}))
    check_folder(root, ("dataset.json", "../secret.nii.gz", "outside the dataset folder"), validate=False, error=LayoutError)


def test_data_yaml_path_outside_folder(tmp_path):
    root = tmp_path / "y"
    yolo_folder(root, "0 0.1 0.1 0.9 0.1 0.5 0.9")
    (tmp_path / "elsewhere" / "images").mkdir(parents=True)
    (root / "data.yaml").write_text("train: images/train\nval: images/val\ntest: /etc\nnames: [cell]\n")
    check_folder(root, ("data.yaml", "test: /etc", "outside the dataset folder"), validate=False, error=LayoutError, good=3)
    (root / "data.yaml").write_text("path: ../elsewhere\ntrain: images\nnames: [cell]\n")
    for skip_bad in (False, True):
        with pytest.raises(LayoutError) as exc:
            load_folder(root, skip_bad=skip_bad)
        one_line(exc, "data.yaml", "path: ../elsewhere", "outside")
