"""medagent.eval: run folders, results files, bootstrap summaries, tool evaluation with fake tools."""

from __future__ import annotations

import json
import math
import socket

import numpy as np
import pandas as pd
import pytest

from medagent.data import Case, CaseList, Dataset, DatasetInfo, Skipped
from medagent.errors import ConfigError, ToolError
from medagent.eval.results import bootstrap_ci, load_results, summarize
from medagent.eval.runs import RunFolder
from medagent.eval.table import summary_table
from medagent.eval.tool_eval import component_boxes, evaluate_tool, run_tool_eval
from medagent.tools.base import Prediction, Tool, ToolKind

NAMES = {0: "background", 1: "Liver", 2: "spleen", 3: "kidney"}


# -- fixtures: a small in-memory dataset -----------------------------------------------------------------
def _case_2d(i: int, subject: str) -> Case:
    label = np.zeros((24, 24), np.uint8)
    label[2:8, 3:9] = 1
    label[12:20, 14:22] = 2
    label[12:15, 2:5] = 2  # a second component of class 2
    if i % 2 == 0:
        label[20:23, 2:6] = 3
    image = label[None].astype(np.float32) + np.float32(0.01 * i)
    return Case(image=image, label=label, spacing=(0.8, 0.8), modality="CT", class_names=NAMES, id=f"c{i}", subject=subject)


def _case_3d() -> Case:
    label = np.zeros((4, 20, 20), np.uint8)
    label[1:3, 4:10, 4:12] = 1
    label[0:4, 12:18, 12:18] = 2
    return Case(image=label[None].astype(np.float32), label=label, spacing=(3.0, 1.0, 1.0), modality="CT",
                class_names=NAMES, id="vol", subject="vol")


@pytest.fixture
def dataset() -> Dataset:
    cases = [_case_2d(i, subject=f"s{i // 2}") for i in range(4)] + [_case_3d()]
    info = DatasetInfo(name="toy", description="toy cases", modality="CT", class_names=NAMES, label_origin="synthetic",
                       license="CC0", source="tests", ndim=2)
    return Dataset(info=info, splits={"test": CaseList.from_cases(cases)}, skipped=[Skipped("bad.nii", "truncated")])


class GTTool(Tool):
    """Automatic: returns the ground truth (Dice 1). No class names: matched by index."""

    name = "gt"

    def predict_2d(self, case: Case) -> Prediction:
        return Prediction(mask=case.label.copy())


class SwappedTool(Tool):
    """Automatic: knows liver and spleen under swapped indices, and no kidney."""

    name = "swapped"
    class_names = {0: "background", 1: "Spleen", 2: "liver"}

    def predict_2d(self, case: Case) -> Prediction:
        out = np.zeros_like(case.label)
        out[case.label == 1] = 2
        out[case.label == 2] = 1
        return Prediction(mask=out)


class BoxFillTool(Tool):
    """Promptable: fills every box it gets (the union), recording the boxes."""

    name = "boxfill"
    kind = ToolKind.PROMPTABLE
    inputs = frozenset({"boxes", "points", "point_labels", "mask_logits"})

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def predict_2d(self, case: Case, boxes: np.ndarray | None = None, **_: object) -> Prediction:
        assert boxes is not None and boxes.ndim == 2 and boxes.shape[1] == 4
        self.calls.append(boxes)
        mask = np.zeros(case.shape, np.uint8)
        for x0, y0, x1, y1 in boxes:
            mask[y0:y1 + 1, x0:x1 + 1] = 1
        return Prediction(mask=mask)


class FailsOnVolumes(GTTool):
    name = "fails3d"

    def predict(self, case: Case, axis: int | None = None, **inputs: object) -> Prediction:
        if case.ndim == 3:
            raise ToolError("this tool cannot read volumes")
        return super().predict(case, axis, **inputs)


# -- run folders ---------------------------------------------------------------------------------------------
def test_run_folder_files(tmp_path):
    a = RunFolder.create("eval tool", {"tool": "x", "path": tmp_path, "arr": np.arange(3), "nan": math.nan}, seed=7, root=tmp_path)
    b = RunFolder.create("eval tool", {"tool": "x"}, seed=7, root=tmp_path)
    assert a.path != b.path and a.path.parent == b.path.parent == tmp_path
    assert a.path.name.startswith("eval-tool-")
    config = json.loads((a.path / "config.json").read_text())
    assert config["tool"] == "x" and config["seed"] == 7 and config["arr"] == [0, 1, 2] and config["nan"] is None
    versions_text = (a.path / "versions.json").read_text()
    versions = json.loads(versions_text)
    assert versions["seed"] == 7 and versions["python"].count(".") == 2
    assert "numpy" in versions["packages"] and "medagent" in versions["packages"]
    assert versions["git"] is None or len(versions["git"]["sha"]) == 40
    host = socket.gethostname()
    assert "hostname" not in versions and (len(host) < 4 or host not in versions_text)
    a.log(step=1, loss=0.5)
    a.log(step=2, loss=np.float32(0.25))
    records = [json.loads(line) for line in (a.path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and records[1]["loss"] == 0.25
    reopened = RunFolder.open(a.path)
    assert reopened.seed == 7 and reopened.command == "eval tool" and reopened.read_log() == records


# -- bootstrap and summaries ------------------------------------------------------------------------------------
def test_bootstrap_ci_contains_mean_and_shrinks():
    rng = np.random.default_rng(0)
    small = rng.normal(0.8, 0.1, size=10)
    large = rng.normal(0.8, 0.1, size=1000)
    m_small, lo_s, hi_s = bootstrap_ci(small, seed=1)
    m_large, lo_l, hi_l = bootstrap_ci(large, seed=1)
    assert lo_s <= m_small <= hi_s and lo_l <= m_large <= hi_l
    assert m_small == pytest.approx(small.mean())
    assert (hi_l - lo_l) < 0.5 * (hi_s - lo_s)
    assert bootstrap_ci(small, seed=1) == (m_small, lo_s, hi_s)  # seeded
    assert bootstrap_ci([0.5]) == (0.5, 0.5, 0.5)
    assert bootstrap_ci([math.nan, math.nan]) == (None, None, None)
    assert bootstrap_ci([1.0, math.nan, 3.0], seed=0)[0] == 2.0  # NaN skipped


def test_bootstrap_by_subject_is_wider_for_clustered_rows():
    # 10 subjects x 20 near-identical slices: the slices are not independent evidence.
    rng = np.random.default_rng(2)
    subject_means = rng.normal(0.7, 0.15, size=10)
    values = np.repeat(subject_means, 20) + rng.normal(0, 0.005, size=200)
    groups = np.repeat(np.arange(10), 20)
    _, lo_rows, hi_rows = bootstrap_ci(values, seed=0)
    _, lo_subj, hi_subj = bootstrap_ci(values, groups=groups, seed=0)
    assert (hi_subj - lo_subj) > 2 * (hi_rows - lo_rows)


def test_summarize_nan_handling():
    df = pd.DataFrame({
        "method": ["m"] * 4, "dataset": ["d"] * 4, "case_id": list("abcd"), "subject": list("abcd"),
        "class_index": [1] * 4, "class_name": ["x"] * 4,
        "dice": [1.0, 0.5, 0.0, 0.5], "hd95": [1.0, 3.0, math.nan, 2.0],
    })
    cell = summarize(df, seed=0, n_resamples=200)["m"]["d"]["x"]
    assert cell["dice"]["mean"] == 0.5 and cell["dice"]["n"] == 4 and cell["dice"]["n_nan"] == 0
    assert cell["hd95"]["mean"] == 2.0 and cell["hd95"]["n"] == 3 and cell["hd95"]["n_nan"] == 1
    lo, hi = cell["dice"]["ci95"]
    assert lo <= 0.5 <= hi
    penal = summarize(df, seed=0, n_resamples=200, distance_penalty=50.0)["m"]["d"]["x"]["hd95"]
    assert penal["mean"] == pytest.approx((1 + 3 + 50 + 2) / 4) and penal["n"] == 4 and penal["penalty"] == 50.0


# -- evaluate_tool ---------------------------------------------------------------------------------------------------
def test_component_boxes():
    m = np.zeros((10, 12), bool)
    m[1:3, 2:5] = True
    m[6:9, 8:11] = True
    m[3, 5] = True  # touches the first component diagonally: same component (8-connectivity)
    boxes = component_boxes(m)
    assert sorted(map(tuple, boxes.tolist())) == [(2, 1, 5, 3), (8, 6, 10, 8)]
    assert component_boxes(np.zeros((4, 4))).shape == (0, 4)


def test_evaluate_gt_tool_is_perfect(dataset):
    df = evaluate_tool(GTTool(), dataset, progress=False)
    # 4 2D cases with 2 or 3 classes, plus the volume with 2 classes.
    assert len(df) == 2 + 3 + 2 + 3 + 2
    assert (df["dice"] == 1.0).all() and (df["hd95"] == 0.0).all() and (df["nsd"] == 1.0).all()
    assert set(df["class_name"]) == {"Liver", "spleen", "kidney"}
    assert df.attrs["skipped"] == []
    vol = df[df["case_id"] == "vol"]
    assert list(vol["gt_voxels"]) == [2 * 6 * 8, 4 * 6 * 6]


def test_evaluate_matches_classes_by_name(dataset):
    df = evaluate_tool(SwappedTool(), dataset, progress=False)
    assert (df["dice"] == 1.0).all()
    assert set(df["class_name"]) == {"Liver", "spleen"}  # kidney unknown to the tool
    assert set(df.loc[df["class_name"] == "Liver", "pred_class_index"]) == {2}
    skipped = df.attrs["skipped"]
    assert len(skipped) == 1 and "kidney" in skipped[0]["reason"]
    # Matching by index instead would be wrong: the GT tool's output read through the swapped names fails.
    wrong = evaluate_tool(type("Named", (GTTool,), {"name": "named", "class_names": SwappedTool.class_names})(),
                          dataset, progress=False)
    assert (wrong["dice"] == 0.0).all()
    # A restricted class list, by name or index.
    only = evaluate_tool(GTTool(), dataset, classes=["LIVER", 3], progress=False)
    assert set(only["class_index"]) == {1, 3}


def test_evaluate_box_prompts_2d_and_3d(dataset):
    tool = BoxFillTool()
    df = evaluate_tool(tool, dataset, prompt="box", progress=False)
    spleen_2d = df[(df["class_name"] == "spleen") & (df["case_id"] != "vol")]
    assert (spleen_2d["n_prompts"] == 2).all()  # two components, two boxes
    assert (df["dice"] == 1.0).all()  # rectangles are filled exactly by their boxes
    vol = df[df["case_id"] == "vol"].set_index("class_name")
    assert vol.loc["Liver", "n_slices"] == 2 and vol.loc["spleen", "n_slices"] == 4
    assert tool.calls[0].tolist() == [[3, 2, 8, 7]]  # first case, liver: x0, y0, x1, y1 inclusive
    with pytest.raises(ConfigError, match="box"):
        evaluate_tool(GTTool(), dataset, prompt="box", progress=False)
    with pytest.raises(ConfigError, match="promptable"):
        evaluate_tool(BoxFillTool(), dataset, prompt=None, progress=False)


def test_evaluate_records_failures_and_samples_cases(dataset):
    df = evaluate_tool(FailsOnVolumes(), dataset, progress=False)
    assert "vol" not in set(df["case_id"])
    assert any(s["path"] == "vol" and "volumes" in s["reason"] for s in df.attrs["skipped"])
    two = evaluate_tool(GTTool(), dataset, max_cases=2, seed=3, progress=False)
    assert two["case_id"].nunique() == 2
    again = evaluate_tool(GTTool(), dataset, max_cases=2, seed=3, progress=False)
    assert list(two["case_id"]) == list(again["case_id"])


# -- the whole run ----------------------------------------------------------------------------------------------------
def test_run_tool_eval_writes_results(dataset, tmp_path):
    out = tmp_path / "elsewhere" / "out.json"
    path = run_tool_eval(SwappedTool(), dataset, seed=1, json_out=out, run_root=tmp_path / "runs", n_resamples=300, progress=False)
    run_dir = path.parent
    for name in ("config.json", "versions.json", "metrics.jsonl", "results.json", "cases.parquet"):
        assert (run_dir / name).is_file(), name
    data = json.loads(path.read_text())
    assert set(data) >= {"run", "summary", "cases", "skipped"}
    assert data["run"]["command"] == "eval tool" and data["run"]["seed"] == 1 and "packages" in data["run"]["versions"]
    assert data["cases"] == "cases.parquet"
    cell = data["summary"]["swapped"]["toy"]["Liver"]
    assert set(cell) == {"dice", "iou", "hd95", "nsd", "assd"}
    assert cell["dice"]["mean"] == 1.0 and cell["dice"]["ci95"] == [1.0, 1.0]
    reasons = {s["path"]: s["reason"] for s in data["skipped"]}
    assert reasons["bad.nii"] == "truncated" and "toy/class/kidney" in reasons

    for results in (load_results(path), load_results(out)):  # the copy still finds the table
        assert list(results.cases.columns[:6]) == ["method", "dataset", "case_id", "subject", "class_index", "class_name"]
        assert len(results.cases) == 10 and results.summary == data["summary"]
        assert results.extra["split"] == "test"

    table = summary_table(data["summary"])
    assert table.row_count == 2
    from rich.console import Console

    console = Console(width=140, record=True)
    console.print(table)
    text = console.export_text()
    assert "Liver" in text and "1.000 [1.000, 1.000]" in text


class InterruptedTool(GTTool):
    """The GT tool, interrupted (like Ctrl-C) on case c2 while `explode` is set; counts its calls."""

    def __init__(self) -> None:
        self.explode = True
        self.seen: list[str] = []

    def predict(self, case: Case, axis: int | None = None, **inputs: object) -> Prediction:
        if self.explode and case.id == "c2":
            raise KeyboardInterrupt
        self.seen.append(case.id)
        return super().predict(case, axis, **inputs)


def test_run_tool_eval_resumes_after_interruption(dataset, tmp_path):
    tool = InterruptedTool()
    with pytest.raises(KeyboardInterrupt):
        run_tool_eval(tool, dataset, run_root=tmp_path, n_resamples=100, progress=False)
    (run_dir,) = tmp_path.iterdir()
    assert len((run_dir / "partial.jsonl").read_text().splitlines()) == 2  # c0 and c1 finished
    tool.explode, tool.seen = False, []
    with pytest.raises(ConfigError, match="split"):
        run_tool_eval(tool, dataset, split="all", resume=run_dir, progress=False)
    path = run_tool_eval(tool, dataset, resume=run_dir, n_resamples=100, progress=False)
    assert tool.seen == ["c2", "c3", "vol"]
    assert path.parent == run_dir and not (run_dir / "partial.jsonl").exists()
    cases = load_results(path).cases
    assert len(cases) == 12 and (cases["dice"] == 1.0).all()
    assert list(cases["case_id"].unique()) == ["c0", "c1", "c2", "c3", "vol"]
