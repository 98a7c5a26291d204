"""DICOM series folders as cases of the images/ + labels/ layout: `images/<case>/` (one series of .dcm files)
beside `labels/<case>.nii.gz`, opened with open_dataset and evaluated through the CLI (`eval tool`, `eval agent`),
plus the refusals: mixed series, unreadable files, missing labels, labels off the series' grid, DICOM-SEG.

Series are tiny (4 slices of 16 x 16) and written with pydicom (tests/io_fixtures.py); labels with nibabel, their
affines computed here from the DICOM geometry (not from medagent's reader)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from io_fixtures import write_dicom_slice
from medagent.data.io import load_image
from medagent.data.layouts import detect_layout, load_folder
from medagent.data.sources import open_dataset
from medagent.errors import DataError, LayoutError

SHAPE = (4, 16, 16)  # (slices, rows, columns)
PIXEL_SPACING = (0.8, 0.6)  # (between rows, between columns) mm
GAP = 2.5  # mm between slices
ORIGIN_LPS = (-50.0, 30.0)  # x, y of every slice's ImagePositionPatient
UID = "1.2.826.0.1.3680043.8.498"
#: case -> (PatientID, first slice's z in mm); a and c are two series of one patient
SERIES = {"a": ("P1", 10.0), "b": ("P2", -20.0), "c": ("P1", 40.0)}


def _volume(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(stored uint16 pixels, label uint8), both (z, y, x): a bright block (HU about 376) on noise (about -224),
    on every slice (otsu, run slice-wise, splits an empty slice's noise), its rectangle changing with z."""
    label = np.zeros(SHAPE, np.uint8)
    for z in range(SHAPE[0]):
        label[z, 4 + i + z % 2:12, 5:13 - i - z % 2] = 1
    rng = np.random.default_rng(i)
    stored = 400 + 300 * label.astype(np.int64) + rng.integers(0, 20, SHAPE)
    return stored.astype(np.uint16), label


def write_series(folder: Path, stored: np.ndarray, z0: float, series: str, patient: str) -> Path:
    """One series, slices written in reverse file-name order (only the positions give the order)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(stored.shape[0]):
        write_dicom_slice(folder / f"IM{stored.shape[0] - k:04d}.dcm", stored[k], position=(*ORIGIN_LPS, z0 + GAP * k),
                          pixel_spacing=PIXEL_SPACING, series_uid=series, instance=k + 1, patient_id=patient)
    return folder


def nifti_affine(z0: float, flip_rows: bool = False, shift_mm: float = 0.0) -> np.ndarray:
    """The NIfTI (x, y, z) -> RAS affine of a series' grid, from the DICOM geometry: column index along
    LPS +x (RAS -x) by 0.6 mm, row index along LPS +y (RAS -y) by 0.8 mm, slice index along +z by 2.5 mm.
    `flip_rows`: the rows stored bottom-up (as dcm2niix writes them); `shift_mm`: an origin off the grid."""
    affine = np.array([[-PIXEL_SPACING[1], 0, 0, -ORIGIN_LPS[0] + shift_mm], [0, -PIXEL_SPACING[0], 0, -ORIGIN_LPS[1]],
                       [0, 0, GAP, z0], [0, 0, 0, 1.0]])
    if flip_rows:
        affine[1, 3] -= PIXEL_SPACING[0] * (SHAPE[1] - 1)
        affine[1, 1] *= -1
    return affine


def write_label(path: Path, label: np.ndarray, affine: np.ndarray, flip_rows: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = label.transpose(2, 1, 0)  # (z, y, x) -> NIfTI (x, y, z)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data[:, ::-1] if flip_rows else data), affine), path)
    return path


def write_dicom_folder(root: Path) -> Path:
    """images/{a,b,c}/ (series) + labels/{a,b,c}.nii.gz, label c stored with flipped rows (still on the grid)."""
    for i, (case, (patient, z0)) in enumerate(SERIES.items()):
        stored, label = _volume(i)
        write_series(root / "images" / case, stored, z0, f"{UID}.{10 + i}", patient)
        flip = case == "c"
        write_label(root / "labels" / f"{case}.nii.gz", label, nifti_affine(z0, flip_rows=flip), flip_rows=flip)
    return root


def add_broken_series(root: Path) -> dict[str, str]:
    """Three bad cases beside the good ones: folder name -> what the refusal must say."""
    stored, label = _volume(0)
    mixed = write_series(root / "images" / "mixed", stored, 0.0, f"{UID}.20", "P3")
    write_dicom_slice(mixed / "IM0001.dcm", stored[3], position=(*ORIGIN_LPS, 7.5), pixel_spacing=PIXEL_SPACING,
                      series_uid=f"{UID}.21", patient_id="P3")  # slice 4 replaced by one of another series
    broken = write_series(root / "images" / "broken", stored, 0.0, f"{UID}.22", "P4")
    (broken / "IM0002.dcm").write_bytes(b"\0" * 64)  # truncated file
    write_series(root / "images" / "nolabel", stored, 0.0, f"{UID}.23", "P5")
    write_series(root / "labels" / "nolabel", label.astype(np.uint16), 0.0, f"{UID}.24", "P5")  # a label as a series
    (root / "images" / "notes").mkdir()  # no DICOM inside: no case, reported because a label names it
    (root / "images" / "notes" / "readme.txt").write_text("scanner notes")
    for case in ("mixed", "broken", "notes"):
        write_label(root / "labels" / f"{case}.nii.gz", label, nifti_affine(0.0))
    return {"broken": "IM0002.dcm is not a readable DICOM file", "mixed": "2 DICOM series",
            "nolabel": "label folders (DICOM series, DICOM-SEG) are not read", "notes": "holds no DICOM files directly"}


@pytest.fixture(scope="module")
def dicom_folder(tmp_path_factory) -> Path:
    return write_dicom_folder(tmp_path_factory.mktemp("dicom") / "data")


def test_series_folders_are_3d_cases_on_the_grid_load_image_reads(dicom_folder):
    ds = open_dataset(dicom_folder)
    assert detect_layout(dicom_folder) == "images-labels"
    assert ds.info.ndim == 3 and ds.info.modality == "CT" and ds.skipped == []
    cases = {c.id: c for c in ds.cases("all")}
    assert sorted(cases) == ["a", "b", "c"]
    for i, (case_id, (patient, z0)) in enumerate(SERIES.items()):
        case, alone = cases[case_id], load_image(dicom_folder / "images" / case_id)
        assert case.shape == alone.shape == SHAPE and case.modality == "CT" and case.subject == patient
        np.testing.assert_array_equal(case.image, alone.image)
        np.testing.assert_allclose(case.spacing, alone.spacing)
        np.testing.assert_allclose(case.spacing, (GAP, *PIXEL_SPACING))
        np.testing.assert_allclose(case.affine, alone.affine)
        stored, label = _volume(i)
        np.testing.assert_allclose(case.image[0], stored * 2.0 - 1024.0)  # the fixture's modality LUT: HU
        np.testing.assert_array_equal(case.label, label)  # c's bottom-up rows are put back on the series' grid
        # voxel (z, y, x) = (1, 2, 3) lies where the DICOM geometry says (RAS = LPS with x and y negated)
        want = [-(ORIGIN_LPS[0] + 3 * PIXEL_SPACING[1]), -(ORIGIN_LPS[1] + 2 * PIXEL_SPACING[0]), z0 + GAP, 1.0]
        np.testing.assert_allclose(case.affine @ [1, 2, 3, 1], want, atol=1e-6)
    # a patient's two series (a, c) share a split
    split_of = {cid: s for s in ("train", "val", "test") for cid in ds.cases(s).ids}
    assert split_of["a"] == split_of["c"] != split_of["b"]


def test_a_label_off_the_series_grid_names_both_files(tmp_path):
    root = write_dicom_folder(tmp_path / "d")
    _, label = _volume(0)
    z0 = SERIES["a"][1]
    off = write_label(root / "labels" / "a.nii.gz", label, nifti_affine(z0, shift_mm=5.0))
    with pytest.raises(DataError, match="not on the world grid of image") as err:
        load_folder(root, validate=True)
    assert str(off) in str(err.value) and str(root / "images" / "a") in str(err.value)
    write_label(off, label[:, :15], nifti_affine(z0))
    with pytest.raises(DataError, match=r"label shape \(4, 15, 16\) differs from image .*images/a shape \(4, 16, 16\)"):
        load_folder(root, validate=True)
    ds = load_folder(root, validate=True, skip_bad=True)
    assert sorted(ds.cases("all").ids) == ["b", "c"] and [s.path for s in ds.skipped] == [str(off)]
    off.unlink()  # a DICOM-SEG label: refused with what to do instead
    write_dicom_slice(root / "labels" / "a.dcm", label[0], modality="SEG")
    with pytest.raises(DataError, match="DICOM-SEG is not supported; export the segmentation as NIfTI"):
        load_folder(root, validate=True)


def test_broken_series_are_refused_naming_the_folder_or_skipped_and_listed(tmp_path):
    root = write_dicom_folder(tmp_path / "d")
    expected = add_broken_series(root)
    with pytest.raises(DataError, match="not a readable DICOM file") as err:
        open_dataset(root)
    assert str(root / "images" / "broken") in str(err.value)
    ds = open_dataset(root, skip_bad=True)
    assert sorted(ds.cases("all").ids) == ["a", "b", "c"]
    reasons = {Path(s.path).name: s.reason for s in ds.skipped}
    assert sorted(reasons) == sorted(expected)
    for name, want in expected.items():
        assert want in reasons[name], reasons[name]
    assert {Path(s.path).parent for s in ds.skipped} == {root / "images"}


def test_a_series_folder_alone_is_one_image_not_a_dataset(dicom_folder):
    series = dicom_folder / "images" / "b"
    ds = open_dataset(series)
    assert ds.info.layout == "file" and ds.info.ndim == 3 and ds.cases("test").ids == ["b"]
    assert ds.cases("test")[0].shape == SHAPE
    with pytest.raises(LayoutError, match="is a DICOM series folder"):
        load_folder(series)


def test_cli_tool_run_on_a_series_writes_the_mask_on_its_grid(dicom_folder, tmp_path):
    from medagent.cli import app

    out = tmp_path / "mask.nii.gz"
    result = CliRunner().invoke(app, ["tool", "run", "otsu", "--image", str(dicom_folder / "images" / "a"), "--out", str(out)])
    assert result.exit_code == 0, result.stdout
    mask = nib.load(out)
    np.testing.assert_allclose(mask.affine, nifti_affine(SERIES["a"][1]), atol=1e-5)
    _, label = _volume(0)
    assert (np.asarray(mask.dataobj).transpose(2, 1, 0) == label).mean() > 0.95


def test_cli_eval_tool_scores_series_in_3d_and_lists_skipped_series(tmp_path):
    import pandas as pd

    from medagent.cli import app

    root = write_dicom_folder(tmp_path / "d")
    expected = add_broken_series(root)
    runs, out = tmp_path / "runs", tmp_path / "tool.json"
    refused = CliRunner().invoke(app, ["eval", "tool", "otsu", "--data", str(root), "--split", "all", "--runs-dir", str(runs)])
    assert refused.exit_code == 2 and "images/broken: IM0002.dcm is not a readable DICOM file" in refused.stdout
    assert "Traceback" not in refused.stdout
    result = CliRunner().invoke(app, ["eval", "tool", "otsu", "--data", str(root), "--split", "all", "--skip-bad",
                                      "--json", str(out), "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.stdout
    results = json.loads(out.read_text())
    (cell,) = results["summary"]["otsu"].values()
    assert cell["foreground"]["dice"]["mean"] > 0.9 and cell["foreground"]["hd95"]["n"] == 3
    assert sorted(Path(s["path"]).name for s in results["skipped"]) == sorted(expected)
    (run,) = runs.iterdir()
    cases = pd.read_parquet(run / "cases.parquet")
    assert sorted(cases.case_id) == ["a", "b", "c"] and (cases.gt_voxels > 64).all()  # voxels of whole volumes
    assert {"dice", "nsd", "hd95"} <= set(cases.columns)
    assert str(root / "images" / "broken") in (run / "report.html").read_text()


def test_cli_eval_agent_plays_series_slice_wise_with_3d_metrics(dicom_folder, tmp_path):
    import pandas as pd

    from medagent.cli import app

    runs, out = tmp_path / "runs", tmp_path / "agent.json"
    result = CliRunner().invoke(app, ["eval", "agent", "--data", str(dicom_folder), "--split", "all", "--agents",
                                      "oracle-box,mean-box", "--episodes", "2", "--image-size", "32",
                                      "--record-turns", "0", "--runs-dir", str(runs), "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    results = json.loads(out.read_text())
    cell = results["summary"]["oracle-box"][str(dicom_folder)]["episode target"]
    assert {"dice_3d", "iou_3d", "nsd_3d", "hd95_3d"} <= set(cell) and cell["dice_3d"]["n"] == 2
    (run,) = runs.iterdir()
    cases = pd.read_parquet(run / "cases.parquet")
    assert set(cases.case_id) <= set(SERIES) and len(cases) == 4
    labels = {cid: _volume(i)[1] for i, cid in enumerate(SERIES)}
    for row in cases.itertuples():  # the slices holding the target, counted here from the written labels
        held = [z for z in range(SHAPE[0]) if labels[row.case_id][z].any()]
        assert json.loads(row.slice_indices) == held and row.gt_voxels == int(labels[row.case_id].sum())
    assert (run / "slices.parquet").exists() and (run / "report.html").exists()


def test_series_folders_with_dotted_uid_names_pair_with_their_labels(dicom_folder, tmp_path):
    """A folder's name is its case id whole (no extension stripped), so UID-named series pair with their labels."""
    root = tmp_path / "uids"
    shutil.copytree(dicom_folder / "images" / "a", root / "images" / "1.2.840.99")
    (root / "labels").mkdir()
    shutil.copy(dicom_folder / "labels" / "a.nii.gz", root / "labels" / "1.2.840.99.nii.gz")
    ds = load_folder(root)
    assert ds.cases("all").ids == ["1.2.840.99"] and ds.cases("all")[0].label.sum() == _volume(0)[1].sum()


def test_cli_eval_interactive_clicks_on_series(dicom_folder, tmp_path):
    from medagent.cli import app

    out = tmp_path / "interactive.json"
    result = CliRunner().invoke(app, ["eval", "interactive", "sam", "--data", str(dicom_folder), "--split", "all",
                                      "--max-objects", "2", "--clicks", "1", "--runs-dir", str(tmp_path / "runs"),
                                      "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    cell = json.loads(out.read_text())["by_dataset"][str(dicom_folder)]
    assert cell["objects"] == 2 and cell["modality"] == "CT"


def test_grid_reorientation_finds_permutations_and_flips_and_refuses_other_grids():
    from medagent.data.io.geometry import grid_reorientation

    rng = np.random.default_rng(0)
    image_affine = np.array([[0, 0, -0.6, 50], [0, -0.8, 0, -30], [2.5, 0, 0, 10], [0, 0, 0, 1.0]])  # (z, y, x) -> RAS
    volume = rng.integers(0, 3, SHAPE)
    # the same world grid stored (x, z, y) with z reversed: label index (x, D-1-z, y)
    stored = np.flip(volume.transpose(2, 0, 1), 1)
    to_image = np.zeros((4, 4))  # label index -> image index
    to_image[0, 1], to_image[0, 3] = -1, SHAPE[0] - 1
    to_image[1, 2] = to_image[2, 0] = to_image[3, 3] = 1
    label_affine = image_affine @ to_image
    perm, flips = grid_reorientation(label_affine, image_affine, stored.shape, SHAPE)
    np.testing.assert_array_equal(np.flip(np.transpose(stored, perm), [a for a in range(3) if flips[a]]), volume)
    assert grid_reorientation(image_affine, image_affine, SHAPE, SHAPE) == ((0, 1, 2), (False, False, False))
    shifted = image_affine.copy()
    shifted[0, 3] += 0.6  # one column over
    assert grid_reorientation(shifted, image_affine, SHAPE, SHAPE) is None
    assert grid_reorientation(image_affine @ np.diag([1, 1, 2, 1.0]), image_affine, SHAPE, SHAPE) is None  # other spacing


def test_cli_eval_agent_skips_broken_series_and_lists_them(tmp_path):
    from medagent.cli import app

    root = write_dicom_folder(tmp_path / "d")
    expected = add_broken_series(root)
    runs, out = tmp_path / "runs", tmp_path / "agent.json"
    args = ["eval", "agent", "--data", str(root), "--split", "all", "--agents", "oracle-box", "--episodes", "2",
            "--image-size", "32", "--record-turns", "0", "--runs-dir", str(runs)]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == 2 and "images/broken" in refused.stdout and "Traceback" not in refused.stdout
    result = CliRunner().invoke(app, [*args, "--skip-bad", "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    results = json.loads(out.read_text())
    assert sorted(Path(s["path"]).name for s in results["skipped"]) == sorted(expected)
    assert results["summary"]["oracle-box"]
