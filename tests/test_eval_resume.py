"""`--resume`: an evaluation killed part-way continues from its run folder and ends with the results of an
uninterrupted run (wall-clock columns aside), without recomputing the finished units."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from medagent.cli import app
from medagent.errors import ConfigError
from medagent.eval.resume import PARTIAL_NAME, UnitLog

runner = CliRunner()

#: A small agent evaluation: 2 cheap agents x 8 episodes = 16 units (about 3 s to the first, then ~30 ms each).
AGENT_ARGS = ["eval", "agent", "--dataset", "mni-lesion", "--agents", "mean-box,auto", "--episodes", "8",
              "--image-size", "64", "--record-turns", "1", "--seed", "3"]


def _lines(path: Path) -> int:
    """Complete lines of a unit log (0 while it does not exist)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_part_way(args: list[str], runs: Path, total: int, timeout: float = 120.0) -> Path:
    """Start `medagent ARGS --runs-dir RUNS` in a subprocess, SIGKILL it once its unit log holds >= 1 unit; the run folder."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = runs.parent / "killed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", "from medagent.cli import app; app()", *args, "--runs-dir", str(runs)],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                folders = list(runs.glob("*/config.json"))
                if folders and _lines(folders[0].parent / PARTIAL_NAME) >= 1:
                    proc.send_signal(signal.SIGKILL)
                    break
                if proc.poll() is not None:
                    pytest.fail(f"the run ended before it could be killed:\n{log.read_text()}")
                time.sleep(0.005)
            else:
                pytest.fail(f"no unit finished in {timeout} s:\n{log.read_text()}")
        finally:
            proc.kill()
            proc.wait()
    (folder,) = [p.parent for p in runs.glob("*/config.json")]
    done = _lines(folder / PARTIAL_NAME)
    assert 1 <= done < total, f"killed after {done} of {total} units"
    assert not (folder / "results.json").exists()
    return folder


def _same_results(a: Path, b: Path, clock: str) -> None:
    """Two run folders hold the same numbers: results.json summaries and case tables but the `clock` column."""
    ra, rb = (json.loads((p / "results.json").read_text()) for p in (a, b))
    assert ra["summary"] == rb["summary"]
    assert ra["skipped"] == rb["skipped"]
    assert {k: v for k, v in ra.items() if k not in ("run", "summary")} == {k: v for k, v in rb.items() if k not in ("run", "summary")}
    ca, cb = (pd.read_parquet(p / "cases.parquet").drop(columns=clock) for p in (a, b))
    pd.testing.assert_frame_equal(ca, cb)
    for folder in (a, b):
        assert (folder / "report.html").exists() and not (folder / PARTIAL_NAME).exists()


def test_eval_agent_killed_then_resumed_equals_an_uninterrupted_run(tmp_path):
    killed = _kill_part_way(AGENT_ARGS, tmp_path / "killed", total=16)
    done_before = UnitLog(killed / PARTIAL_NAME).done  # a torn last line (killed mid-write) is dropped here

    # another setting than the run's: refused, naming the setting and both values
    result = runner.invoke(app, [*AGENT_ARGS[:-2], "--seed", "4", "--resume", str(killed)])
    assert result.exit_code == 2 and "seed (run: 3, now: 4)" in " ".join(result.stdout.split())
    result = runner.invoke(app, [*AGENT_ARGS, "--episodes", "6", "--resume", str(killed)])
    assert result.exit_code == 2 and "episodes (run: 8, now: 6)" in " ".join(result.stdout.split())

    result = runner.invoke(app, [*AGENT_ARGS, "--resume", str(killed)])
    assert result.exit_code == 0, result.stdout
    assert f"{len(done_before)} finished episodes read back" in " ".join(result.stdout.split())
    cases = pd.read_parquet(killed / "cases.parquet")
    for key, record in done_before.items():  # finished episodes were read back, not played again
        agent, index = key.split("/")
        row = cases[(cases["method"] == agent) & (cases["episode"] == int(index))].iloc[0]
        assert row["seconds"] == record["row"]["seconds"]

    result = runner.invoke(app, [*AGENT_ARGS, "--runs-dir", str(tmp_path / "full")])
    assert result.exit_code == 0, result.stdout
    (full,) = (tmp_path / "full").iterdir()
    _same_results(killed, full, clock="seconds")
    index_a, index_b = (json.loads((p / "episodes" / "episodes.json").read_text()) for p in (killed, full))
    assert index_a == index_b and len(index_a) == 2  # the recorded episodes too (one per agent)

    result = runner.invoke(app, [*AGENT_ARGS, "--resume", str(killed)])
    assert result.exit_code == 2 and "finished" in result.stdout


class Interrupt(Exception):
    """Stands for a kill: not a medagent error, so the evaluator does not catch it."""


def test_eval_tool_resumes_after_an_interruption(tmp_path):
    from medagent.data import load_builtin
    from medagent.eval.tool_eval import run_tool_eval
    from medagent.tools.registry import load_tool

    dataset = load_builtin("mni-tissue")
    tool = load_tool("otsu")
    real, seen = tool.predict, []

    def predict(case, **inputs):
        if len(seen) == 3 and not resumed:
            raise Interrupt
        seen.append(case.id)
        return real(case, **inputs)

    tool.predict = predict  # type: ignore[method-assign]
    resumed = False
    with pytest.raises(Interrupt):
        run_tool_eval(tool, dataset, max_cases=6, seed=1, run_root=tmp_path / "cut", n_resamples=100, progress=False)
    (cut,) = (tmp_path / "cut").iterdir()
    assert len(UnitLog(cut / PARTIAL_NAME)) == 3
    with open(cut / PARTIAL_NAME, "a") as fh:  # a kill in the middle of a write leaves a torn last line
        fh.write('{"unit": "half-writ')
    with pytest.raises(ConfigError, match=r"max_cases \(run: 6, now: 5\)"):
        run_tool_eval(tool, dataset, max_cases=5, seed=1, resume=cut, n_resamples=100, progress=False)
    tool.stateful = True  # a test-time adapter's cases depend on the ones before: never resumed
    with pytest.raises(ConfigError, match="stateful"):
        run_tool_eval(tool, dataset, max_cases=6, seed=1, resume=cut, n_resamples=100, progress=False)
    tool.stateful = False
    resumed, first = True, list(seen)
    path = run_tool_eval(tool, dataset, max_cases=6, seed=1, resume=cut, n_resamples=100, progress=False)
    assert path.parent == cut and len(seen) == 6 and not set(seen[3:]) & set(first)  # the rest only, once each
    run_tool_eval(tool, dataset, max_cases=6, seed=1, run_root=tmp_path / "full", n_resamples=100, progress=False)
    (full,) = (tmp_path / "full").iterdir()
    _same_results(cut, full, clock="time_s")


def test_eval_interactive_resumes_after_an_interruption(tmp_path):
    from medagent.eval.interactive import evaluate_interactive
    from medagent.tools.registry import load_tool

    tool = load_tool("sam")
    real, objects = tool.session, []

    def session(case, **kwargs):  # one session per object on a 2D dataset
        if len(objects) == 2 and not resumed:
            raise Interrupt
        objects.append(case.id)
        return real(case, **kwargs)

    tool.session = session  # type: ignore[method-assign]
    resumed = False
    settings = dict(dataset="nuclei", clicks=2, max_objects=4, seed=2, n_resamples=100, progress=False)
    with pytest.raises(Interrupt):
        evaluate_interactive(tool, run_root=tmp_path / "cut", **settings)
    (cut,) = (tmp_path / "cut").iterdir()
    assert len(UnitLog(cut / PARTIAL_NAME)) == 2
    with pytest.raises(ConfigError, match="clicks"):
        evaluate_interactive(tool, resume=cut, **{**settings, "clicks": 3})
    with pytest.raises(ConfigError, match="not 'eval interactive'"):
        evaluate_interactive(tool, resume=_other_run(tmp_path), **settings)
    resumed = True
    report = evaluate_interactive(tool, resume=cut, **settings)
    assert report.run_dir == cut and len(objects) == 4 and len(report.objects) == 4
    evaluate_interactive(tool, run_root=tmp_path / "full", **settings)
    (full,) = (tmp_path / "full").iterdir()
    _same_results(cut, full, clock="time_s")
    pd.testing.assert_frame_equal(*(pd.read_parquet(p / "objects.parquet").drop(columns="time_s") for p in (cut, full)))


def _other_run(tmp_path: Path) -> Path:
    """A run folder of another command."""
    from medagent.eval.runs import RunFolder

    return RunFolder.create("eval tool", {}, seed=0, root=tmp_path / "other").path


def test_unit_log_keeps_values_and_refuses_a_damaged_file(tmp_path):
    path = tmp_path / PARTIAL_NAME
    log = UnitLog(path)
    stored = log.add("a/0", {"row": {"dice": float("nan"), "n": 3, "ok": True}})
    assert stored["row"]["n"] == 3 and stored["row"]["dice"] != stored["row"]["dice"]  # NaN stays NaN
    with pytest.raises(ConfigError, match="already"):
        log.add("a/0", {})
    assert "a/0" in UnitLog(path) and len(UnitLog(path)) == 1
    path.write_text(path.read_text() + "not json\n" + '{"unit": "a/1"}\n')
    with pytest.raises(ConfigError, match="line 2"):
        UnitLog(path)
