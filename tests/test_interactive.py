"""The click simulator (medagent.tools.clicker) and the interactive protocol (medagent.eval.interactive)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fake_tools import SquareClicks
from medagent.data import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.errors import ConfigError, DataError
from medagent.eval.interactive import (
    evaluate_interactive, normalised_auc, number_of_clicks, object_metrics,
)
from medagent.tools.clicker import next_click
from medagent.tools.sam.prompts import corrective_click

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the clicker ----------------------------------------------------------------------------------------
def test_positive_click_at_the_centre_of_a_missed_region():
    gt = np.zeros((40, 50), bool)
    gt[5:20, 10:41] = True                 # 15 x 31 target
    pred = gt.copy()
    pred[5:20, 10:25] = False               # misses its left part: columns 10..24, rows 5..19 (15 x 15)
    click = next_click(pred, gt, rng=0)
    assert click is not None and click.label == 1 and click.positive
    assert click.region_area == 15 * 15
    assert click.index == (12, 17) and (click.y, click.x) == (12, 17) and click.xy == (17, 12)  # its EDT centre
    assert gt[click.index] and not pred[click.index]


def test_negative_click_on_a_false_positive_blob():
    gt = np.zeros((40, 40), bool)
    gt[5:15, 5:15] = True
    pred = gt.copy()
    yy, xx = np.mgrid[:40, :40]
    pred |= (yy - 28) ** 2 + (xx - 27) ** 2 <= 36  # a disk of radius 6 that is not the target
    pred[5:7, 5:15] = False                          # plus a smaller miss (2 x 10)
    click = next_click(pred, gt, rng=0)
    assert click.label == 0 and not click.positive
    assert click.index == (28, 27)                   # the disk's centre: the deepest error pixel
    assert pred[click.index] and not gt[click.index]


def test_no_click_when_perfect_and_first_click_on_an_empty_mask():
    gt = np.zeros((20, 20), bool)
    gt[4:11, 6:13] = True  # 7 x 7: one centre pixel
    assert next_click(gt, gt) is None
    assert next_click(gt.astype(np.uint8) * 3, gt) is None  # any non-zero value is the mask
    first = next_click(np.zeros_like(gt), gt)
    assert first.index == (7, 9) and first.positive and first.region_area == 49


def test_largest_component_wins_and_the_image_border_counts_as_border():
    gt = np.zeros((30, 30), bool)
    gt[:, :10] = True          # touches the left border: a 30 x 10 miss
    gt[10:25, 15:30] = True    # a 15 x 15 miss, touching the right border (smaller)
    click = next_click(np.zeros_like(gt), gt, rng=0)
    assert click.region_area == 300 and click.x in (4, 5)  # centre of columns 0..9, not column 0 or 9
    with pytest.raises(DataError):
        next_click(np.zeros((3, 3)), np.zeros((3, 4)))


def test_ties_are_drawn_with_the_seed_and_deterministic():
    gt = np.zeros((20, 40), bool)
    gt[5:9, 5:35] = True  # a 4 x 30 band: its EDT maximum (2) is a long ridge of tied pixels
    pred = np.zeros_like(gt)
    clicks = {seed: next_click(pred, gt, rng=seed) for seed in range(8)}
    for seed, click in clicks.items():
        assert next_click(pred, gt, rng=seed) == click                  # same seed, same click
        assert next_click(pred, gt, rng=np.random.default_rng(seed)) == click
        assert click.y in (6, 7) and 6 <= click.x <= 33
    assert len({c.index for c in clicks.values()}) > 1                  # seeds do break the tie differently
    # corrective_click (the SAM prompts' name) is the same rule
    c = corrective_click(pred, gt, rng=3)
    assert (c.x, c.y, c.positive) == (clicks[3].x, clicks[3].y, True)


def test_clicker_in_3d():
    gt = np.zeros((9, 20, 20), bool)
    gt[1:8, 3:10, 4:11] = True
    click = next_click(np.zeros_like(gt), gt)
    assert click.index == (4, 6, 7) and click.positive


# -- the protocol's numbers -----------------------------------------------------------------------------
def test_number_of_clicks_counts_failures_as_the_budget():
    ious = [0.5, 0.7, 0.86, 0.88, 0.95]
    assert number_of_clicks(ious, 0.85) == (2, False)                 # with a box: ious[0] is the box alone
    assert number_of_clicks(ious, 0.90) == (4, False)
    assert number_of_clicks(ious, 0.85, first_click=1) == (3, False)  # click-only: the first value is click 1
    assert number_of_clicks([0.9], 0.85) == (0, False)                # the box alone suffices
    assert number_of_clicks([0.5] * 21, 0.85) == (20, True)           # never reached: 20, a failure
    assert number_of_clicks([0.5] * 25 + [0.99], 0.85) == (20, True)  # reached after the budget: still a failure
    assert number_of_clicks([0.5, 0.6, 0.9], 0.85, max_clicks=1) == (1, True)


def test_auc_of_known_curves():
    assert normalised_auc([0.5, 0.7, 0.9]) == pytest.approx(0.7)       # (0.6 + 0.8) / 2 steps
    assert normalised_auc([0.2, 0.2, 0.2, 0.2, 0.2]) == pytest.approx(0.2)
    assert normalised_auc([0.0, 1.0]) == pytest.approx(0.5)
    assert normalised_auc([0.8]) == pytest.approx(0.8)
    assert np.isnan(normalised_auc([]))
    # the challenge's unnormalised value is ours times (k - 1)
    from scipy import integrate

    curve = np.array([0.61, 0.7, 0.72, 0.8, 0.79])
    challenge = integrate.cumulative_trapezoid(curve, np.arange(5))[-1]
    assert normalised_auc(curve) * 4 == pytest.approx(challenge)


def test_object_metrics_from_step_records():
    dice = [0.6, 0.7, 0.8, 0.9]
    iou = [0.5, 0.6, 0.86, 0.95]
    records = [{"step": s, "dice": d, "iou": i, "nsd": d + 0.05} for s, (d, i) in enumerate(zip(dice, iou))]
    m = object_metrics(records, clicks=3, box=True)
    assert m["dice_0"] == 0.6 and m["final_dice"] == 0.9 and m["final_nsd"] == pytest.approx(0.95)
    assert m["dsc_auc"] == pytest.approx(normalised_auc([0.7, 0.8, 0.9]))  # clicks 1..3, not the box
    assert (m["noc85"], m["nof85"], m["noc90"], m["nof90"]) == (2.0, 0.0, 3.0, 0.0)
    click_only = object_metrics(records[1:], clicks=3, box=False)
    assert "dice_0" not in click_only and click_only["noc85"] == 2.0 and click_only["dsc_auc"] == m["dsc_auc"]


# -- end to end -----------------------------------------------------------------------------------------
def test_evaluate_interactive_sam_on_a_builtin_dataset(tmp_path):
    import pandas as pd

    from medagent.eval.results import load_results

    report = evaluate_interactive("sam", dataset="nuclei", clicks=2, max_objects=3, run_root=tmp_path, progress=False,
                                  n_resamples=200, json_out=tmp_path / "copy" / "out.json")
    folder = report.run_dir
    for name in ("config.json", "versions.json", "metrics.jsonl", "results.json", "cases.parquet", "objects.parquet"):
        assert (folder / name).exists(), name
    assert len(report.objects) == 3 and report.objects["object_id"].is_unique
    steps = report.steps
    assert set(steps.groupby("object_id")["step"].min()) == {0}
    curve = steps[steps["in_curve"]]
    assert len(curve) == 3 * 3 and curve["nsd"].notna().all()  # box + 2 clicks per object, NSD on each
    assert (steps.groupby("object_id")["step"].max() <= 20).all()
    for _, obj in report.objects.iterrows():  # NoC is decided: reached within the steps run, or 20 (failure)
        ious = steps[steps["object_id"] == obj["object_id"]].sort_values("step")["iou"].to_numpy()
        assert (obj["noc85"], bool(obj["nof85"])) == number_of_clicks(ious, 0.85)
    cell = report.by_dataset["nuclei"]
    assert cell["modality"] == "microscopy" and cell["objects"] == 3
    for name in ("dice_0", "dice_1", "dice_2", "dsc_auc", "nsd_auc", "final_dice", "final_nsd", "noc85", "noc90"):
        value = cell["metrics"][name]
        assert value["n"] == 3 and value["ci95"][0] <= value["mean"] <= value["ci95"][1]
    assert cell["metrics"]["dsc_auc"]["mean"] == pytest.approx(report.objects["dsc_auc"].mean())
    assert 0 <= cell["metrics"]["noc90"]["mean"] <= 20
    assert report.by_modality["microscopy"]["datasets"] == ["nuclei"]
    results = load_results(report.results)
    assert results.extra["protocol"]["curve_steps"] == [0, 1, 2] and len(results.cases) == len(steps)
    assert results.extra["curves"]["nuclei"]["dice"][0] == pytest.approx(cell["metrics"]["dice_0"]["mean"])
    assert "nucleus" in results.summary["sam"]["nuclei"]
    copied = json.loads((tmp_path / "copy" / "out.json").read_text())
    assert len(pd.read_parquet(tmp_path / "copy" / copied["objects"])) == 3
    # the same seed gives the same objects, clicks and scores
    again = evaluate_interactive("sam", dataset="nuclei", clicks=2, max_objects=3, run_root=tmp_path, progress=False,
                                 n_resamples=200)
    pd.testing.assert_frame_equal(again.steps.drop(columns="time_s"), steps.drop(columns="time_s"))


def _volume_dataset() -> Dataset:
    zz, yy, xx = np.mgrid[:6, :24, :24]
    label = (((yy - 12) ** 2 + (xx - 12) ** 2 <= 36) & (zz >= 1) & (zz <= 4)).astype(np.uint8)  # a disk on 4 slices
    image = label[None].astype(np.float32)
    case = Case(image=image, label=label, spacing=(3.0, 1.0, 1.0), modality="CT", class_names={0: "background", 1: "disk"},
                id="vol0", subject="p0")
    info = DatasetInfo(name="volumes", description="one test volume", modality="CT", class_names=case.class_names,
                       label_origin="synthetic", license="test", source="tests", ndim=3)
    return Dataset(info=info, splits={"test": CaseList.from_cases([case])})


@pytest.mark.parametrize("box", [True, False])
def test_volumes_go_slice_wise_with_any_promptable_tool(tmp_path, box):
    report = evaluate_interactive(SquareClicks(), dataset=_volume_dataset(), clicks=3, box=box, run_root=tmp_path,
                                  progress=False, n_resamples=50)
    (obj,) = report.objects.to_dict("records")
    assert obj["n_slices"] == 4 and obj["class_name"] == "disk"
    steps = report.steps.sort_values("step")
    first = steps.iloc[0]
    assert first["step"] == (0 if box else 1)
    placed = json.loads(steps.iloc[1]["clicks"])
    assert len(placed) == 4 and all(len(c) == 4 for c in placed)      # one click (z, y, x, label) per slice
    assert sorted(c[0] for c in placed) == [1, 2, 3, 4]
    if box:  # the filled box over-segments the disk's corners: negative clicks
        assert all(c[-1] == 0 for c in placed)
        assert steps.iloc[0]["dice"] > 0.75  # box 13 x 13 around a 113-pixel disk
    else:    # click-only: the first clicks are positive, at each slice's centre
        assert all(c[-1] == 1 and c[1:3] == [12, 12] for c in json.loads(first["clicks"]))
    assert np.isfinite(obj["dsc_auc"]) and 0 <= obj["noc85"] <= 20


def test_protocol_refuses_tools_and_settings_it_cannot_run(tmp_path):
    with pytest.raises(ConfigError, match="clicks"):
        evaluate_interactive("otsu", dataset="nuclei", run_root=tmp_path, progress=False)
    with pytest.raises(ConfigError):
        evaluate_interactive(SquareClicks(), dataset="nuclei", clicks=0, run_root=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="exactly one"):
        evaluate_interactive(SquareClicks(), run_root=tmp_path, progress=False)


def test_cli_eval_interactive(tmp_path):
    from medagent.cli import app

    runner = CliRunner()
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["eval", "interactive", "sam", "--dataset", "nuclei", "--max-objects", "3", "--clicks", "2",
                                 "--runs-dir", str(tmp_path / "runs"), "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    for text in ("Dice box", "Dice c2", "DSC-AUC", "NSD-AUC", "NoC@85", "NoC@90", "nuclei", "results:"):
        assert text in result.stdout
    data = json.loads(out.read_text())
    assert data["by_dataset"]["nuclei"]["objects"] == 3 and data["protocol"]["clicks"] == 2
    result = runner.invoke(app, ["eval", "interactive", "sam", "--dataset", "nuclei", "--no-box", "--max-objects", "2",
                                 "--clicks", "1", "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.stdout
    assert "click-only" in result.stdout and "Dice box" not in result.stdout
    result = runner.invoke(app, ["eval", "interactive", "sam"])
    assert result.exit_code == 2 and "exactly one" in result.stdout
