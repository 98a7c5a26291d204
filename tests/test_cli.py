"""The `medagent` command through typer's CliRunner (a subprocess would pay a cold import)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medagent.cli import app

runner = CliRunner()


def invoke(*args: str):
    result = runner.invoke(app, list(args))
    return result


def _write_pair_folder(root, n=4, volume=False):
    """images/ + labels/ folder of NIfTI files: a bright square (label 1) on a dark background."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = (24, 24, 6) if volume else (24, 24, 1)
        img = rng.normal(10, 1, size=shape).astype(np.float32)
        lab = np.zeros(shape, np.uint8)
        lab[6 + i:16 + i, 5:15] = 1
        img[lab > 0] += 50
        affine = np.diag([0.8, 0.8, 2.5, 1.0])
        nib.save(nib.Nifti1Image(img, affine), root / "images" / f"case{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "labels" / f"case{i}.nii.gz")
    return root


def test_version_and_help():
    result = invoke("--version")
    assert result.exit_code == 0 and "medagent" in result.stdout
    result = invoke("--help")
    for group in ("data", "tool", "eval", "demo"):
        assert group in result.stdout


def test_tool_list_shows_baseline():
    result = invoke("tool", "list")
    assert result.exit_code == 0 and "otsu" in result.stdout


def test_data_list_shows_builtin_datasets():
    result = invoke("data", "list")
    assert result.exit_code == 0, result.stdout
    for name in ("mni-tissue", "mni-lesion", "nuclei", "ct-phantom", "phantom"):
        assert name in result.stdout


def test_data_show_writes_overlay(tmp_path):
    out = tmp_path / "x.png"
    result = invoke("data", "show", "phantom", "--index", "0", "--out", str(out))
    assert result.exit_code == 0, result.stdout
    assert out.exists() and out.stat().st_size > 100


@pytest.mark.parametrize("volume", [False, True])
def test_tool_run_otsu_on_nifti_writes_mask_on_input_grid(tmp_path, volume):
    folder = _write_pair_folder(tmp_path / "d", n=1, volume=volume)
    out = tmp_path / "mask.nii.gz"
    result = invoke("tool", "run", "otsu", "--image", str(folder / "images" / "case0.nii.gz"), "--out", str(out))
    assert result.exit_code == 0, result.stdout
    src = nib.load(folder / "images" / "case0.nii.gz")
    got = nib.load(out)
    assert got.shape == src.shape
    np.testing.assert_allclose(got.affine, src.affine)
    gt = np.asarray(nib.load(folder / "labels" / "case0.nii.gz").dataobj)
    assert (np.asarray(got.dataobj) == gt).mean() > 0.95


def test_tool_run_bad_input_is_one_clear_line(tmp_path):
    result = invoke("tool", "run", "otsu", "--image", str(tmp_path / "missing.nii.gz"), "--out", str(tmp_path / "m.nii.gz"))
    assert result.exit_code == 2
    assert "missing.nii.gz" in result.stdout and "Traceback" not in result.stdout
    result = invoke("tool", "run", "otsu", "--out", str(tmp_path / "m.nii.gz"))
    assert result.exit_code == 2 and "exactly one" in result.stdout


@pytest.mark.parametrize("volume", [False, True])
def test_eval_tool_on_folder_writes_results(tmp_path, volume):
    folder = _write_pair_folder(tmp_path / "d", n=4, volume=volume)
    out = tmp_path / "out.json"
    result = invoke("eval", "tool", "otsu", "--data", str(folder), "--split", "all", "--json", str(out),
                    "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.stdout
    results = json.loads(out.read_text())
    assert set(results) >= {"run", "summary", "cases", "skipped"}
    dice = results["summary"]["otsu"]
    (dataset_summary,) = dice.values()
    assert dataset_summary["foreground"]["dice"]["mean"] > 0.9


def test_data_export_round_trip(tmp_path):
    out = tmp_path / "nnunet"
    result = invoke("data", "export", "phantom", "--to", str(out))
    assert result.exit_code == 0, result.stdout
    assert (out / "dataset.json").exists()
    from medagent.data import load_builtin, load_folder

    again = load_folder(out)
    original = load_builtin("phantom")
    assert again.counts() == original.counts()
    a, b = original.cases("test")[0], again.cases("test")[0]
    np.testing.assert_array_equal(a.label, b.label)
    np.testing.assert_allclose(a.image, b.image, atol=1e-5)


def test_demo_quick_writes_a_run_folder(tmp_path):
    result = invoke("demo", "--quick", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stdout
    (run,) = list(tmp_path.iterdir())
    results = json.loads((run / "results.json").read_text())
    assert "otsu" in results["summary"] and (run / "cases.parquet").exists()
    assert any(p.suffix == ".png" for p in (run / "overlays").iterdir())
    report = (run / "report.html").read_text()
    assert "report.html" in result.stdout and "<img" in report and "http://" not in report and "https://" not in report


def test_train_tool_cli_runs_and_rejects_unknown_fields(tmp_path):
    result = invoke("train", "tool", "unet", "--dataset", "nuclei", "--steps", "2", "--out", str(tmp_path / "run"),
                    "--set", "batch_size=2", "--set", "crop_size=32", "--set", "val_every=2", "--set", "max_val_cases=2",
                    "--set", 'model_config={"width": 4, "depth": 2}', "--set", "progress=false")
    assert result.exit_code == 0, result.stdout
    assert (tmp_path / "run" / "best" / "model.safetensors").exists()
    result = invoke("train", "tool", "unet", "--set", "no_such_field=1")
    assert result.exit_code == 2 and "no_such_field" in result.stdout
    result = invoke("train", "tool", "nope")
    assert result.exit_code == 2 and "trainable tools" in result.stdout


def test_train_sft_cli_on_an_export_then_play_the_policy(tmp_path):
    import functools

    from medagent.envs.testing import make_env
    from medagent.trajectories import GenerateConfig, export_trl, generate

    trajectories = generate(functools.partial(make_env), tmp_path / "t", GenerateConfig(episodes=4, shard_size=4, seed=1))
    export_trl(trajectories, tmp_path / "sft-data", val_fraction=0.0)
    result = invoke("train", "sft", "--data", str(tmp_path / "sft-data"), "--steps", "2", "--out", str(tmp_path / "run"),
                    "--set", "num_threads=1")
    assert result.exit_code == 0, result.stdout
    assert (tmp_path / "run" / "model").is_dir()
    result = invoke("env", "play", "--agent", "vlm", "--episodes", "1")
    assert result.exit_code == 2 and "--model" in result.stdout
    result = invoke("env", "play", "--agent", "vlm", "--model", str(tmp_path / "run" / "model"), "--dataset", "phantom",
                    "--episodes", "1", "--image-size", "64", "--max-turns", "2")
    assert result.exit_code == 0, result.stdout
    assert "mean Dice" in result.stdout


def test_eval_ctta_and_stream_adaptation(tmp_path):
    out = tmp_path / "ctta.json"
    result = invoke("eval", "ctta", "--dataset", "nuclei", "--methods", "noadapt,tent", "--rounds", "1",
                    "--max-cases", "1", "--centres", "B,E", "--json", str(out), "--runs-dir", str(tmp_path / "runs"))
    assert result.exit_code == 0, result.stdout
    results = json.loads(out.read_text())
    assert set(results["ctta"]) >= {"noadapt", "tent"}
    assert "centre E" in result.stdout

    stream = tmp_path / "stream"
    stream.mkdir()
    from medagent.data import load_builtin

    for i, case in enumerate(load_builtin("nuclei").cases("test")[:2]):
        np.save(stream / f"img{i}.npy", case.image[0])
    result = invoke("tool", "run", "mgipt", "--source", "nuclei", "--stream", str(stream), "--out", str(tmp_path / "masks"))
    assert result.exit_code == 0, result.stdout
    assert len(list((tmp_path / "masks").iterdir())) == 2


def test_data_show_on_a_folder_and_a_file(tmp_path):
    folder = _write_pair_folder(tmp_path / "d", n=2, volume=True)
    for source in (folder, folder / "images" / "case0.nii.gz"):
        out = tmp_path / f"{source.name}.png"
        result = invoke("data", "show", str(source), "--index", "0", "--split", "all", "--out", str(out))
        assert result.exit_code == 0, result.stdout
        assert out.exists() and out.stat().st_size > 100
    result = invoke("data", "show", str(tmp_path / "nowhere"))
    assert result.exit_code == 2 and "neither a builtin dataset" in result.stdout
