"""The README's tool and agent commands, end to end with the shipped weights (through typer's CliRunner)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from medagent.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def lesion_pngs(tmp_path_factory):
    """Two mni-lesion test slices as 8-bit PNGs with their lesion masks (0/255), plus a coarse mask."""
    from medagent.data import load_builtin
    from medagent.data.intensity import to_display_rgb

    root = tmp_path_factory.mktemp("pngs")
    cases = [c for c in load_builtin("mni-lesion").cases("test") if (c.label > 0).sum() > 150][:2]
    paths = []
    for i, case in enumerate(cases):
        Image.fromarray(to_display_rgb(case.image, case.modality)[..., 0]).save(root / f"img{i}.png")
        Image.fromarray(((case.label > 0) * 255).astype(np.uint8)).save(root / f"mask{i}.png")
        paths.append((root / f"img{i}.png", root / f"mask{i}.png", case))
    return paths


def _dice(a, b):
    a, b = a > 0, b > 0
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_tool_run_automatic_on_a_builtin_case(tmp_path):
    out = tmp_path / "m.nii.gz"
    result = invoke("tool", "run", "ifunet", "--dataset", "mni-tissue", "--index", "3", "--out", out, "--overlay", tmp_path / "o.png")
    assert result.exit_code == 0, result.stdout
    mask = np.asarray(nib.load(out).dataobj)
    assert set(np.unique(mask)) <= {0, 1, 2, 3} and (mask > 0).mean() > 0.1
    assert (tmp_path / "o.png").exists()


def test_tool_run_sam_with_box_and_clicks(tmp_path, lesion_pngs):
    from scipy import ndimage

    image, mask_path, case = lesion_pngs[0]
    components, n = ndimage.label(np.asarray(Image.open(mask_path)) > 0)
    sizes = ndimage.sum(components > 0, components, range(1, n + 1))
    gt = components == 1 + int(np.argmax(sizes))  # one lesion: a box around several would be ambiguous
    ys, xs = np.nonzero(gt)
    box = [xs.min(), ys.min(), xs.max(), ys.max()]
    cy, cx = int(np.median(ys)), int(np.median(xs))
    out = tmp_path / "sam.png"
    result = invoke("tool", "run", "sam", "--image", image, "--box", *box, "--point", cx, cy, "--neg-point", 0, 0, "--out", out)
    assert result.exit_code == 0, result.stdout
    assert _dice(np.asarray(Image.open(out)), gt) > 0.5
    result = invoke("tool", "run", "sam", "--image", image, "--box", 5, 5, 5, 5, "--point", 1, "--out", out)
    assert result.exit_code == 2 and "--point needs two integer" in result.stdout


def test_tool_run_cps_and_refine(tmp_path, lesion_pngs):
    (ref, ref_mask, _), (image, mask_path, _) = lesion_pngs
    out = tmp_path / "cps.png"
    result = invoke("tool", "run", "cps", "--image", image, "--ref", ref, "--ref-mask", ref_mask, "--out", out)
    assert result.exit_code == 0, result.stdout
    assert np.asarray(Image.open(out)).shape == np.asarray(Image.open(image)).shape
    result = invoke("tool", "run", "cps", "--image", image, "--ref", ref, "--out", out)
    assert result.exit_code == 2 and "--ref-mask" in result.stdout

    gt = np.asarray(Image.open(mask_path)) > 0
    from scipy import ndimage

    coarse = ndimage.binary_dilation(gt, iterations=2)
    Image.fromarray((coarse * 255).astype(np.uint8)).save(tmp_path / "coarse.png")
    out = tmp_path / "refined.nii.gz"
    result = invoke("tool", "run", "refine", "--image", image, "--mask", tmp_path / "coarse.png", "--out", out)
    assert result.exit_code == 0, result.stdout
    refined = np.asarray(nib.load(out).dataobj).squeeze().T  # NIfTI stores (x, y)
    assert refined.shape == gt.shape and _dice(refined, gt) > 0.5


def test_eval_tool_sam_with_box_prompts(tmp_path):
    result = invoke("eval", "tool", "sam", "--dataset", "nuclei", "--prompt", "box", "--max-cases", "3",
                    "--json", tmp_path / "r.json", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stdout
    summary = json.loads((tmp_path / "r.json").read_text())["summary"]["sam"]["nuclei"]["nucleus"]
    assert summary["dice"]["mean"] > 0.5


def test_env_play_and_eval_agent(tmp_path):
    result = invoke("env", "play", "--dataset", "mni-lesion", "--agent", "expert", "--episodes", "2",
                    "--image-size", "128", "--out", tmp_path / "frames")
    assert result.exit_code == 0, result.stdout
    rows = json.loads((tmp_path / "frames" / "episodes.json").read_text())
    assert len(rows) == 2 and all(r["actions"][-1].count("stop_action") == 1 for r in rows)
    assert (tmp_path / "frames" / "episode-00" / "final.png").exists()
    result = invoke("eval", "agent", "--dataset", "mni-lesion", "--agents", "oracle-box,mean-box", "--episodes", "3",
                    "--image-size", "128", "--json", tmp_path / "a.json", "--runs-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stdout
    summary = json.loads((tmp_path / "a.json").read_text())["summary"]
    assert summary["oracle-box"]["mni-lesion"]["episode target"]["dice"]["mean"] > summary["mean-box"]["mni-lesion"]["episode target"]["dice"]["mean"]


def test_tool_run_sam_rejects_an_unknown_checkpoint_type(tmp_path, lesion_pngs):
    image = lesion_pngs[0][0]
    result = invoke("tool", "run", "sam", "--image", image, "--box", 10, 10, 40, 40, "--checkpoint-type", "bogus",
                    "--out", tmp_path / "m.png")
    assert result.exit_code == 2 and "checkpoint_type" in result.stdout
