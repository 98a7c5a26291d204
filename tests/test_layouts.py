"""Folder layouts (nnU-Net v2 / MSD, images+labels, YOLO), the YOLO rasteriser, and the nnU-Net export round trip."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medagent.data import Case, CaseList, Dataset, DatasetInfo, export_nnunet, load_folder
from medagent.data.layouts import detect_layout, parse_yolo_rows, rasterize_yolo, split_subjects


def nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 2.0, 1.0]) if affine is None else affine), path)
    return path


def listing(root: Path) -> list[tuple[str, float]]:
    return sorted((str(p), p.stat().st_mtime) for p in root.rglob("*"))


def make_nnunet_v2(root: Path, n: int = 6, channels: int = 2, test: int = 0) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("Tr", n), ("Ts", test)):
        for i in range(count):
            for c in range(channels):
                nifti(root / f"images{split}" / f"case{split}{i:02d}_{c:04d}.nii.gz", rng.random((5, 4, 3)).astype(np.float32) + c)
            lab = np.zeros((5, 4, 3), np.uint8)
            lab[i % 5, :2, :2] = 1 + i % 2
            nifti(root / f"labels{split}" / f"case{split}{i:02d}.nii.gz", lab)
    doc = {"channel_names": {str(c): ["T2", "ADC"][c] for c in range(channels)}, "labels": {"background": 0, "prostate": 1, "lesion": 2},
           "numTraining": n, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(doc))


def test_nnunet_v2_channels_classes_seeded_split(tmp_path):
    root = tmp_path / "Dataset001"
    make_nnunet_v2(root, n=10)
    before = listing(root)
    ds = load_folder(root)
    assert ds.info.layout == "nnunet" and ds.info.modality == "MR" and ds.info.ndim == 3
    assert ds.info.class_names == {0: "background", 1: "prostate", 2: "lesion"}
    assert ds.counts() == {"train": 7, "val": 1, "test": 2}
    assert load_folder(root, split_seed=0).cases("test").ids == ds.cases("test").ids
    case = ds.cases("train")[0]
    assert case.image.shape == (2, 3, 4, 5) and case.modality == "MR"
    assert case.image[1].min() >= 1.0  # channel 1 is the _0001 file
    assert case.label.max() >= 1 and case.provenance["layout"] == "nnunet"
    assert listing(root) == before  # loading writes nothing into the folder


def test_nnunet_labelled_imagesTs_is_the_test_split(tmp_path):
    root = tmp_path / "ds"
    make_nnunet_v2(root, n=8, channels=1, test=3)
    ds = load_folder(root)
    assert ds.cases("test").ids == ["caseTs00", "caseTs01", "caseTs02"]
    assert len(ds.cases("train")) + len(ds.cases("val")) == 8 and len(ds.cases("val")) == 1


def test_msd_v1_dataset_json(tmp_path):
    root = tmp_path / "Task02_Heart"
    training = []
    for i in range(3):
        nifti(root / "imagesTr" / f"la_{i:03d}.nii.gz", np.full((4, 4, 3), -800.0 if i else 500.0, np.float32))
        nifti(root / "labelsTr" / f"la_{i:03d}.nii.gz", np.ones((4, 4, 3), np.uint8))
        training.append({"image": f"./imagesTr/la_{i:03d}.nii.gz", "label": f"./labelsTr/la_{i:03d}.nii.gz"})
    doc = {"name": "LeftAtrium", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "left atrium"}, "training": training}
    (root / "dataset.json").write_text(json.dumps(doc))
    ds = load_folder(root, modality="MR")
    assert ds.info.class_names == {0: "background", 1: "left atrium"}
    assert sorted(ds.cases("all").ids) == ["la_000", "la_001", "la_002"]
    assert all(c.modality == "CT" for c in ds.cases("all"))  # dataset.json metadata beats the argument


@pytest.mark.parametrize("fmt", ["png", "nii.gz"])
def test_images_labels_layout(tmp_path, fmt):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(5):
        img = np.full((6, 8), 20 * i + 10, np.uint8)
        lab = np.zeros((6, 8), np.uint8)
        lab[1:3, 2:5] = 1
        if fmt == "png":
            Image.fromarray(img).save(root / "images" / f"s{i}.png")
            Image.fromarray(lab * 255).save(root / "labels" / f"s{i}.png")
        else:
            nifti(root / "images" / f"s{i}.nii.gz", img.T[..., None].astype(np.float32))
            nifti(root / "labels" / f"s{i}.nii.gz", lab.T[..., None])
    ds = load_folder(root, modality="microscopy")
    assert detect_layout(root) == "images-labels" and ds.info.ndim == 2
    assert ds.info.class_names == {0: "background", 1: "foreground"}
    assert sum(ds.counts().values()) == 5 and ds.counts()["test"] == 1
    case = ds.cases("all")[0]
    assert case.shape == (6, 8) and case.label.sum() == 6 and case.modality == "microscopy"
    named = load_folder(root, class_names={0: "background", 1: "nucleus"})
    assert named.cases("all")[0].class_names[1] == "nucleus"


def test_images_labels_split_subfolders(tmp_path):
    root = tmp_path / "d"
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(n):
            for sub in ("images", "masks"):
                (root / sub / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / sub / split / f"{split}{i}.png")
    assert load_folder(root).counts() == {"train": 2, "val": 1, "test": 1}


def test_yolo_rasterisation_of_a_known_polygon():
    # a square covering x, y in [0.25, 0.75] of an 8 x 8 image: exactly pixels 2..5 in both axes
    rows = [(0, np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])),
            (1, np.array([[0.0, 0.0], [0.25, 0.0], [0.0, 0.25]]))]
    label, inst = rasterize_yolo(rows, (8, 12))
    want = np.zeros((8, 12), np.uint8)
    want[2:6, 3:9] = 1
    np.testing.assert_array_equal(label == 1, want == 1)
    assert label[0, 0] == 2 and inst[0, 0] == 2 and inst[3, 4] == 1
    assert set(np.unique(label)) == {0, 1, 2}


def write_yolo(root: Path, style: str, names) -> None:
    """A 2-class YOLO dataset in `images/{split}` (style "split-inside") or `{split}/images` (Roboflow) form."""
    for split in ("train", "val"):
        img_dir = root / ("images" if style == "split-inside" else split) / (split if style == "split-inside" else "images")
        lab_dir = Path(str(img_dir).replace("images", "labels"))
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for i in range(2):
            Image.fromarray(np.full((10, 20, 3), 100, np.uint8)).save(img_dir / f"{split}{i}.jpg")
            (lab_dir / f"{split}{i}.txt").write_text("0 0.1 0.1 0.5 0.1 0.5 0.9\n1 0.6 0.2 0.9 0.2 0.9 0.8 0.6 0.8\n")
    if style == "split-inside":
        text = f"path: .\ntrain: images/train\nval: images/val\nnames: {json.dumps(names)}\n"
    else:
        text = f"train: ../train/images\nval: ../val/images\nnames: {json.dumps(names)}\n"
    (root / "data.yaml").write_text(text)


@pytest.mark.parametrize("style,names", [("split-inside", ["tool", "vein"]), ("roboflow", {0: "tool", 1: "vein"})])
def test_yolo_layouts(tmp_path, style, names):
    root = tmp_path / "yolo"
    write_yolo(root, style, names)
    ds = load_folder(root)
    assert ds.info.layout == "yolo"
    assert ds.info.class_names == {0: "background", 1: "tool", 2: "vein"}
    assert ds.counts() == {"train": 2, "val": 2, "test": 0}
    case = ds.cases("val")[1]
    assert case.image.shape == (3, 10, 20) and case.modality == "photo"
    assert set(np.unique(case.label)) == {0, 1, 2}
    assert set(np.unique(case.instances)) == {0, 1, 2}
    assert case.label[7, 15] == 2 and case.label[1, 1] == 0


def test_yolo_rows_parse_and_hint(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n1 0 0 1 0 1 1\n")
    rows = parse_yolo_rows(f, 2)
    assert rows[0][0] == 1 and rows[0][1].shape == (3, 2)


def test_split_subjects_keeps_subjects_together():
    subjects = [f"p{i // 3}" for i in range(30)]  # 10 subjects, 3 cases each
    a = split_subjects(subjects, seed=1)
    assert sorted(a.values()).count("test") == 2 and sorted(a.values()).count("val") == 1
    assert a == split_subjects(subjects, seed=1)
    assert split_subjects(["only"], seed=0) == {"only": "train"}


# -- export ------------------------------------------------------------------------------------------
def _dataset(cases: dict[str, list[Case]], names) -> Dataset:
    info = DatasetInfo(name="t", description="d", modality=cases["train"][0].modality, class_names=names,
                       label_origin="synthetic", license="CC0", source="test")
    return Dataset(info, {k: CaseList.from_cases(v) for k, v in cases.items()})


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert a.info.class_names == b.info.class_names
    for split in ("train", "val", "test"):
        ca, cb = a.cases(split), b.cases(split)
        assert sorted(ca.ids) == sorted(cb.ids), split
        by_id = {c.id: c for c in cb}
        for x in ca:
            y = by_id[x.id]
            np.testing.assert_array_equal(x.image, y.image)
            np.testing.assert_array_equal(x.label, y.label)
            np.testing.assert_allclose(x.spacing, y.spacing, rtol=1e-6)
            assert x.subject == y.subject and x.modality == y.modality and x.class_names == y.class_names


def test_export_nnunet_round_trip_3d(tmp_path):
    rng = np.random.default_rng(7)
    aff = np.array([[0, 0, -2.0, 10], [0, 0.9, 0, -5], [0.7, 0, 0, 3], [0, 0, 0, 1]])  # permuted + flipped
    names = {0: "background", 1: "liver", 2: "tumour"}

    def case(i: int, subject: str) -> Case:
        lab = rng.integers(0, 3, (4, 5, 6)).astype(np.uint8)
        return Case(image=rng.normal(size=(2, 4, 5, 6)).astype(np.float32) * 100, label=lab, spacing=(0.7, 0.9, 2.0),
                    modality="CT", class_names=names, id=f"c{i}", subject=subject, affine=aff)

    ds = _dataset({"train": [case(0, "A"), case(1, "A")], "val": [case(2, "B")], "test": [case(3, "C")]}, names)
    out = export_nnunet(ds, tmp_path / "Dataset500_x")
    assert sorted(p.name for p in (out / "imagesTr").iterdir())[:2] == ["c0_0000.nii.gz", "c0_0001.nii.gz"]
    back = load_folder(out)
    _assert_same(ds, back)
    np.testing.assert_allclose(back.cases("test")[0].affine, aff, atol=1e-6)
    assert json.loads((out / "dataset.json").read_text())["labels"] == {"background": 0, "liver": 1, "tumour": 2}


def test_export_nnunet_round_trip_2d_rgb(tmp_path):
    rng = np.random.default_rng(8)
    names = {0: "background", 1: "polyp"}
    cases = {s: [Case(image=rng.integers(0, 255, (3, 6, 7)).astype(np.float32), label=rng.integers(0, 2, (6, 7)).astype(np.uint8),
                      spacing=(0.5, 0.25), modality="endoscopy", class_names=names, id=f"{s}_{i}") for i in range(2)]
             for s in ("train", "val", "test")}
    ds = _dataset(cases, names)
    out = export_nnunet(ds, tmp_path / "exp")
    assert nib.load(out / "imagesTs" / "test_0_0002.nii.gz").shape == (7, 6, 1)
    back = load_folder(out)
    assert back.info.ndim == 2
    _assert_same(ds, back)
