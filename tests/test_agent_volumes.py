"""Agent evaluation on volumes (medagent.eval.agent_volumes): one env episode per slice holding the target, the
masks reassembled on the volume's grid, 3D metrics beside the per-slice means. Tiny synthetic volume folders
(NIfTI through nibabel in the nnU-Net layout, NRRD and MetaImage through SimpleITK in images/ + labels/) and the fake tools of
medagent.envs.testing, so no SAM runs except in the CLI test (the shipped tiny SAM on 32 x 40 slices)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medagent.data.case import Case
from medagent.data.layouts import load_folder
from medagent.envs import InteractiveSegEnv
from medagent.envs.targets import volume_targets
from medagent.envs.testing import fake_tools
from medagent.errors import ConfigError, DataError
from medagent.eval.agent_eval import evaluate_agents
from medagent.eval.agent_volumes import VOLUME_METRICS, cap_slices, draw_volume_target, play_volume
from medagent.metrics import binary_metrics, dice

#: (z, y, x) grid of every synthetic volume; z is the coarsest axis (2.5 mm vs 0.7 mm), so slices are axial.
SHAPE = (7, 20, 24)
SPACING = (2.5, 0.7, 0.7)


def _volume(i: int) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) (z, y, x): a bright cuboid of class 1 over slices 1 + i % 2 .. 4 + i % 2 (a box per slice, so a
    box prompt filled by FakeSam is exact), on noise."""
    label = np.zeros(SHAPE, np.uint8)
    z0 = 1 + i % 2
    label[z0:z0 + 4, 4 + i:12 + i, 6:17 - i] = 1
    rng = np.random.default_rng(i)
    image = label.astype(np.float32) * 100 + rng.normal(0, 5, SHAPE).astype(np.float32)
    return image, label


def _write_nifti(path: Path, array: np.ndarray) -> None:
    import nibabel as nib

    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])  # NIfTI axes are (x, y, z)
    nib.save(nib.Nifti1Image(np.transpose(array, (2, 1, 0)), affine), str(path))


def _write_itk(path: Path, array: np.ndarray) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)  # numpy (z, y, x) -> ITK (x, y, z)
    image.SetSpacing((SPACING[2], SPACING[1], SPACING[0]))
    sitk.WriteImage(image, str(path))


def write_nnunet_nifti(root: Path, n: int = 4) -> Path:
    """An nnU-Net v2 folder of NIfTI volumes: class 1 "organ", CT; the last volume in imagesTs/labelsTs."""
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        image, label = _volume(i)
        split = "Ts" if i == n - 1 else "Tr"
        _write_nifti(root / f"images{split}" / f"vol_{i:03d}_0000.nii.gz", image)
        _write_nifti(root / f"labels{split}" / f"vol_{i:03d}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1}, "channel_names": {"0": "CT"},
                                                   "file_ending": ".nii.gz", "numTraining": n - 1}))
    return root


def write_images_labels_itk(root: Path, ending: str = ".nrrd", n: int = 3) -> Path:
    """An images/ + labels/ folder of ITK volumes (NRRD or MetaImage by `ending`), written with SimpleITK."""
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(n):
        image, label = _volume(i)
        _write_itk(root / "images" / f"vol_{i:03d}{ending}", image)
        _write_itk(root / "labels" / f"vol_{i:03d}{ending}", label)
    return root


@pytest.fixture
def nifti_folder(tmp_path):
    return write_nnunet_nifti(tmp_path / "nnunet")


def _settings(folder: Path) -> dict:
    return {"data_dir": str(folder), "split": "all", "image_size": 32, "load_tools": False, "min_area": 4}


def _held(label: np.ndarray) -> list[int]:
    """Axial slices holding the target (class 1), computed here independently of the code under test."""
    return [z for z in range(label.shape[0]) if (label[z] == 1).any()]


def test_slices_played_are_those_holding_the_target_and_the_perfect_agent_scores_1(nifti_folder):
    df = evaluate_agents(_settings(nifti_folder), ["oracle-box", "mean-box"], episodes=4, seed=0, tools=fake_tools(),
                         progress=False)
    cases = {c.id: c for c in load_folder(nifti_folder).cases("all")}
    assert set(VOLUME_METRICS) <= set(df.columns)
    for row in df.itertuples():
        label = cases[row.case_id].label
        assert json.loads(row.slice_indices) == _held(label)
        assert row.slices == row.slices_total == len(_held(label)) and row.slice_axis == 0
        assert row.gt_voxels == int((label == 1).sum()) and row.target_class == "organ"
    oracle, mean_box = df[df.agent == "oracle-box"], df[df.agent == "mean-box"]
    # the same volumes and slices for both agents (paired), and FakeSam fills the exact box: a perfect agent
    assert list(oracle.case_id) == list(mean_box.case_id)
    assert list(oracle.slice_indices) == list(mean_box.slice_indices)
    assert np.allclose(oracle.dice_3d, 1.0) and np.allclose(oracle.nsd_3d, 1.0) and np.allclose(oracle.hd95_3d, 0.0)
    assert np.allclose(oracle.dice, 1.0)
    assert mean_box.dice_3d.mean() < 1.0
    # per volume: calls summed over its slice episodes (box + stop on each slice), turns the mean per slice
    assert (oracle.calls == 2 * oracle.slices).all() and np.allclose(oracle.turns, 2.0)
    slices = df.attrs["slices"]
    assert len(slices) == int(df.slices.sum())
    assert {s["slice_case_id"] for s in slices if s["agent"] == "oracle-box" and s["episode"] == 0} == {
        f"{df.case_id.iloc[0]}_ax0_{z:04d}" for z in json.loads(df.slice_indices.iloc[0])}


def test_reassembled_mask_is_on_the_volume_grid_and_3d_metrics_are_its_metrics(nifti_folder):
    from medagent.agents import make_agent

    env = InteractiveSegEnv(tools=fake_tools(), **_settings(nifti_folder))
    case_index, target = draw_volume_target(env, 123)
    case = env.load_case(case_index)
    for name in ("mean-box", "oracle-box"):
        vol = play_volume(env, make_agent(name), name, 0, case_index, target, 123)
        gt = case.label == 1
        assert vol.mask.shape == case.shape == SHAPE and vol.mask.dtype == bool
        assert vol.played == _held(case.label)
        assert not vol.mask[[z for z in range(SHAPE[0]) if z not in vol.played]].any()  # unplayed slices stay empty
        assert vol.metrics["dice_3d"] == pytest.approx(dice(vol.mask, gt))
        again = binary_metrics(vol.mask, gt, SPACING, ("iou", "nsd", "hd95"), tolerance_mm=1.0)
        assert vol.metrics["iou_3d"] == pytest.approx(again["iou"])
        assert vol.metrics["nsd_3d"] == pytest.approx(again["nsd"])
        assert vol.metrics["hd95_3d"] == pytest.approx(again["hd95"], nan_ok=True)
    assert vol.metrics["dice_3d"] == 1.0  # oracle-box, last


@pytest.mark.parametrize("ending", [".nrrd", ".mha"])
def test_an_itk_images_labels_folder_runs_the_volume_path_too(tmp_path, ending):
    folder = write_images_labels_itk(tmp_path / "itk", ending)
    df = evaluate_agents(_settings(folder), ["oracle-box"], episodes=2, tools=fake_tools(), progress=False)
    assert np.allclose(df.dice_3d, 1.0) and (df.slices == 4).all()
    # volumes=False keeps the old behaviour: one random labelled slice per episode, no 3D columns
    flat = evaluate_agents(_settings(folder), ["oracle-box"], episodes=2, tools=fake_tools(), progress=False, volumes=False)
    assert "dice_3d" not in flat.columns and flat.case_id.str.contains("_ax0_").all()


def test_max_slices_plays_a_contiguous_run_around_the_largest_slice(nifti_folder):
    assert cap_slices(np.array([2, 3, 4, 5, 6]), np.array([1, 5, 9, 5, 1]), 3) == [3, 4, 5]
    assert cap_slices(np.array([2, 3, 4, 5, 6]), np.array([9, 5, 1, 1, 1]), 2) == [2, 3]  # shifted to stay inside
    assert cap_slices(np.array([2, 3]), np.array([1, 1]), None) == [2, 3]
    with pytest.raises(ConfigError, match="max_slices"):
        cap_slices(np.array([1]), np.array([1]), 0)
    df = evaluate_agents(_settings(nifti_folder), ["oracle-box"], episodes=2, tools=fake_tools(), progress=False,
                         max_slices=2)
    assert (df.slices == 2).all() and (df.slices_total == 4).all()
    assert np.allclose(df.dice_3d, 1.0)  # scored over the slab played
    with pytest.raises(ConfigError, match="max_slices"):
        evaluate_agents(_settings(nifti_folder), ["oracle-box"], episodes=1, tools=fake_tools(), max_slices=0)


def test_resumed_volume_episodes_are_read_back_and_equal_a_fresh_run(nifti_folder, tmp_path):
    partial = tmp_path / "partial.jsonl"
    args = dict(seed=3, tools=fake_tools(), progress=False)
    first = evaluate_agents(_settings(nifti_folder), ["mean-box"], episodes=2, partial=partial, **args)
    assert len(partial.read_text().splitlines()) == 2  # one unit per volume episode
    resumed = evaluate_agents(_settings(nifti_folder), ["mean-box"], episodes=3, partial=partial, **args)
    fresh = evaluate_agents(_settings(nifti_folder), ["mean-box"], episodes=3, **args)
    drop = ["seconds"]
    assert resumed.drop(columns=drop).equals(fresh.drop(columns=drop))
    assert resumed.drop(columns=drop).iloc[:2].equals(first.drop(columns=drop))
    assert len(resumed.attrs["slices"]) == len(fresh.attrs["slices"])


def test_volume_targets_and_the_env_reset_options():
    label = np.zeros((4, 10, 12), np.uint8)
    label[1:3, 1:4, 1:4] = 1
    label[0:2, 6:9, 6:10] = 2
    instances = np.zeros(label.shape, np.uint16)
    instances[label == 2] = 7
    case = Case(image=label[None].astype(np.float32), label=label, instances=instances, spacing=(3.0, 1.0, 1.0),
                class_names={0: "background", 1: "organ", 2: "lesion"}, id="v")
    targets = volume_targets(case, min_area=4)
    assert [(t.class_index, t.instance, t.area) for t in targets] == [(2, 7, 24), (1, 0, 18)]
    assert volume_targets(case, min_area=20) == [targets[0]]
    assert volume_targets(case.slice(1), min_area=1) == []  # 2D: list_targets' job
    from medagent.data.dataset import CaseList, Dataset, DatasetInfo

    info = DatasetInfo(name="vol", description="", modality="MR", class_names=case.class_names, label_origin="test",
                       license="CC0", source="tests", ndim=3)
    env = InteractiveSegEnv(dataset=Dataset(info, {"train": CaseList.from_cases([case])}), tools=fake_tools(),
                            image_size=16, load_tools=False)
    _, info_ = env.reset(seed=0, options={"case_index": 0, "slice_index": 1, "target": (2, 7)})
    assert info_["case_id"] == "v_ax0_0001" and info_["instance"] == 7
    assert env.episode.gt.sum() == 12
    with pytest.raises(ConfigError, match="slice_index=9"):
        env.reset(options={"case_index": 0, "slice_index": 9, "target": (1, 0)})
    with pytest.raises(DataError, match="no target class 1"):
        env.reset(options={"case_index": 0, "slice_index": 0, "target": (1, 0)})  # slice 0 holds only the lesion
    with pytest.raises(ConfigError, match="target must be"):
        env.reset(options={"case_index": 0, "slice_index": 0, "target": "organ"})


def test_cli_eval_agent_on_a_volume_folder_writes_the_3d_columns(nifti_folder, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from medagent.cli import app

    runs, out = tmp_path / "runs", tmp_path / "a.json"
    result = CliRunner().invoke(app, ["eval", "agent", "--data", str(nifti_folder), "--split", "all", "--agents",
                                      "oracle-box,mean-box", "--episodes", "2", "--image-size", "32", "--max-slices", "3",
                                      "--record-turns", "1", "--runs-dir", str(runs), "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    results = json.loads(out.read_text())
    cell = results["summary"]["oracle-box"][str(nifti_folder)]["episode target"]
    assert set(VOLUME_METRICS) <= set(cell) and cell["dice_3d"]["n"] == 2
    assert results["volume"]["max_slices"] == 3
    (run,) = runs.iterdir()
    cases = pd.read_parquet(run / "cases.parquet")
    assert set(VOLUME_METRICS) <= set(cases.columns) and (cases.slices == 3).all() and (cases.slices_total == 4).all()
    slices = pd.read_parquet(run / "slices.parquet")
    assert len(slices) == int(cases.slices.sum())
    report = (run / "report.html").read_text()
    assert "Volumes (3D)" in report and "3D Dice" in report
    assert "3D Dice" in result.stdout


def test_a_volume_run_folder_records_its_slice_cap_and_refuses_a_resume_without_it(nifti_folder, tmp_path):
    from medagent.eval.agent_eval import run_agent_eval

    settings = _settings(nifti_folder)
    path, _ = run_agent_eval(settings, ["oracle-box"], episodes=1, run_root=tmp_path / "runs", record_turns=0,
                             tools=fake_tools(), progress=False, max_slices=2)
    config = json.loads((path.parent / "config.json").read_text())
    assert config["max_slices"] == 2 and "volumes" not in config  # only the settings given
    with pytest.raises(ConfigError, match=r"max_slices \(run: 2, now: \"<unset>\"\)"):
        run_agent_eval(settings, ["oracle-box"], episodes=1, run_root=tmp_path / "runs", record_turns=0,
                       tools=fake_tools(), progress=False, resume=path.parent)


def test_2d_cases_in_a_volume_run_are_one_slice_scored_on_their_grid():
    from medagent.envs.testing import make_dataset

    settings = {"dataset": make_dataset(), "split": "train", "image_size": 32, "load_tools": False, "min_area": 9}
    df = evaluate_agents(settings, ["oracle-box"], episodes=3, tools=fake_tools(), progress=False, volumes=True)
    assert (df.slices == 1).all() and (df.slice_axis == -1).all()
    assert np.allclose(df.dice_3d, df.dice) and np.allclose(df.iou_3d, df.iou)
    plain = evaluate_agents(settings, ["oracle-box"], episodes=3, tools=fake_tools(), progress=False)
    assert "dice_3d" not in plain.columns  # builtin-like 2D data: the 2D path, unchanged
