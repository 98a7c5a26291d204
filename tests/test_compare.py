"""`compare_runs` / `medagent eval compare`: paired per-case differences of two runs on their shared cases."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from medagent.errors import ConfigError, DataError
from medagent.eval.compare import compare_runs
from medagent.eval.results import summarize, write_results


def _run(folder, method, dice, datasets=("d1",), subjects=None):
    """A run folder whose case table has one row per case, `dice[i]` for case i of every dataset."""
    rows = [{"method": method, "dataset": ds, "case_id": f"c{i}", "subject": (subjects or {}).get(i, f"s{i}"),
             "class_index": 1, "class_name": "lesion", "dice": d, "iou": d / (2 - d)}
            for ds in datasets for i, d in enumerate(dice)]
    table = pd.DataFrame(rows)
    folder.mkdir(parents=True)
    return write_results(folder / "results.json", summarize(table, metrics=("dice", "iou")),
                         run={"command": "test", "versions": {}, "seed": 0}, cases=table)


def test_paired_difference_and_interval_on_shared_cases(tmp_path):
    a = _run(tmp_path / "a", "unet", [0.5, 0.6, 0.7, 0.8])
    b = _run(tmp_path / "b", "ifunet", [0.6, 0.7, 0.8])          # one case fewer: 3 shared
    df = compare_runs(tmp_path / "a", b, metrics=("dice",))
    row = df[(df.dataset == "d1") & (df.metric == "dice")].iloc[0]
    assert (row.method_a, row.method_b, row.n) == ("unet", "ifunet", 3)
    assert row["diff"] == pytest.approx(0.1) and row.lo == pytest.approx(0.1) and row.hi == pytest.approx(0.1)
    assert row.mean_a == pytest.approx(0.6) and a.exists()
    assert set(df.dataset) == {"d1", "all"}


def test_same_method_names_pair_by_name_and_errors_are_clear(tmp_path):
    _run(tmp_path / "a", "otsu", [0.1, 0.2])
    _run(tmp_path / "b", "otsu", [0.3, 0.1])
    df = compare_runs(tmp_path / "a", tmp_path / "b", metrics=("dice",))
    assert df[df.dataset == "all"].iloc[0]["diff"] == pytest.approx(0.05)
    _run(tmp_path / "c", "otsu", [0.3], datasets=("other",))
    with pytest.raises(DataError, match="share no case"):
        compare_runs(tmp_path / "a", tmp_path / "c")
    with pytest.raises(DataError, match="no results.json"):
        compare_runs(tmp_path / "a", tmp_path / "missing")
    with pytest.raises(ConfigError, match="not in run B"):
        compare_runs(tmp_path / "a", tmp_path / "b", method_a="otsu", method_b="unet")
    with pytest.raises(ConfigError, match="not in both"):
        compare_runs(tmp_path / "a", tmp_path / "b", metrics=("nsd",))


def test_cli_compare_prints_and_writes_json(tmp_path):
    from typer.testing import CliRunner

    from medagent.cli import app

    _run(tmp_path / "a", "unet", [0.5, 0.6])
    _run(tmp_path / "b", "unet", [0.7, 0.9])
    out = tmp_path / "cmp.json"
    result = CliRunner().invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(out)])
    assert result.exit_code == 0, result.stdout
    assert "+0.250" in result.stdout
    rows = json.loads(out.read_text())
    assert {r["metric"] for r in rows} == {"dice", "iou"}
    bad = CliRunner().invoke(app, ["eval", "compare", str(tmp_path / "a"), str(tmp_path / "nope")])
    assert bad.exit_code == 2 and "no results.json" in bad.stdout
