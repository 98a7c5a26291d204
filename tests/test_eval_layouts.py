"""Every evaluation command on a user folder of every layout, 2D and 3D (issue: evaluation as the field does it).

Each layout holds a bright square (2D) or box (3D) labelled 1 ("foreground", the class otsu segments; classes
are matched by name) on a dark noisy background, large enough for the
env's targets (>= 16 pixels); the commands run end to end through the CLI with the shipped tiny SAM and otsu,
and each writes results.json with its rows. NIfTI 3D folders cover nnU-Net v2; images+labels is tested with PNG
(2D) and NRRD (3D); YOLO folders are 2D by definition; DICOM series: tests/test_dicom_layout.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medagent.cli import app

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_CASES = 4


def _image_2d(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(32, 32) uint8 image and its label: a 10 x 12 bright square at a case-dependent place."""
    rng = np.random.default_rng(i)
    image = rng.integers(0, 40, (32, 32)).astype(np.uint8)
    label = np.zeros((32, 32), np.uint8)
    y, x = 6 + 2 * i, 5 + 3 * i
    label[y:y + 10, x:x + 12] = 1
    image[label == 1] = 200
    return image, label


def _volume(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, 32, 32) float32 volume and its label: the 2D square on slices 1-2."""
    image2d, label2d = _image_2d(i)
    image = np.stack([image2d] * 4).astype(np.float32)
    label = np.zeros((4, 32, 32), np.uint8)
    label[1:3] = label2d
    image[0][label2d == 1] = 20  # the square only where it is labelled
    image[3][label2d == 1] = 20
    return image, label


def _nifti(path: Path, zyx: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(zyx.transpose(2, 1, 0)), np.diag([1.0, 1.0, 2.0, 1.0])), path)


def nnunet_3d(root: Path) -> Path:
    for i in range(N_CASES):
        image, label = _volume(i)
        _nifti(root / "imagesTr" / f"case{i:02d}_0000.nii.gz", image)
        _nifti(root / "labelsTr" / f"case{i:02d}.nii.gz", label)
    doc = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "foreground": 1}, "numTraining": N_CASES,
           "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(doc))
    return root


def images_labels_2d(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(N_CASES):
        image, label = _image_2d(i)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(label).save(root / "labels" / f"s{i}.png")
    return root


def images_labels_3d(root: Path) -> Path:
    import SimpleITK as sitk

    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(N_CASES):
        image, label = _volume(i)
        sitk.WriteImage(sitk.GetImageFromArray(image), str(root / "images" / f"v{i}.nrrd"))
        sitk.WriteImage(sitk.GetImageFromArray(label), str(root / "labels" / f"v{i}.nrrd"))
    return root


def yolo_2d(root: Path) -> Path:
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(N_CASES // 2):
            image, label = _image_2d(i + (2 if split == "val" else 0))
            Image.fromarray(np.stack([image] * 3, axis=-1)).save(root / "images" / split / f"{split}{i}.png")
            ys, xs = np.nonzero(label)
            x0, x1, y0, y1 = xs.min() / 32, (xs.max() + 1) / 32, ys.min() / 32, (ys.max() + 1) / 32
            (root / "labels" / split / f"{split}{i}.txt").write_text(f"0 {x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1}\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: images/val\nnames: [foreground]\n")
    return root


LAYOUTS = {"nnunet-3d": nnunet_3d, "images-labels-2d": images_labels_2d, "images-labels-3d": images_labels_3d,
           "yolo-2d": yolo_2d}


def _run(tmp_path: Path, *args: str, run_folder: bool = True) -> dict:
    out = tmp_path / f"out-{len(list(tmp_path.glob('out-*')))}.json"
    where = ["--runs-dir", str(tmp_path / "runs")] if run_folder else []
    result = CliRunner().invoke(app, [*args, *where, "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    return json.loads(out.read_text())


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_eval_command_runs_on_the_layout(layout, tmp_path):
    root = LAYOUTS[layout](tmp_path / layout)
    volumes = layout.endswith("3d")

    tool = _run(tmp_path, "eval", "tool", "otsu", "--data", str(root), "--split", "all")
    assert tool["summary"]["otsu"] and not tool["skipped"]

    agents = ["eval", "agent", "--data", str(root), "--split", "all", "--episodes", "2", "--image-size", "32",
              "--record-turns", "1"]
    oracle = _run(tmp_path, *agents, "--agents", "oracle-box")
    mean_box = _run(tmp_path, *agents, "--agents", "mean-box")
    assert mean_box["summary"]["mean-box"]
    (cell,) = oracle["summary"]["oracle-box"].values()
    dice = cell["episode target"]["dice_3d" if volumes else "dice"]
    assert dice["n"] == 2 and dice["mean"] > 0.5  # SAM with the true box on a bright square

    clicks = _run(tmp_path, "eval", "interactive", "sam", "--data", str(root), "--split", "all", "--clicks", "1",
                  "--max-objects", "2")
    assert clicks["summary"]

    runs = sorted((tmp_path / "runs").iterdir())
    agent_runs = [r for r in runs if r.name.startswith("eval-agent")]
    compared = _run(tmp_path, "eval", "compare", str(agent_runs[0]), str(agent_runs[1]), run_folder=False)
    assert compared  # paired rows of oracle-box vs mean-box on the episodes both runs share
    assert all((r / "report.html").exists() for r in runs if (r / "results.json").exists())
