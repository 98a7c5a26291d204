"""`make bench` (bench/run_all.py) knows every bench script, and each has the --quick form it runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_all_lists_every_bench_script():
    scripts = {p.name for p in BENCH.glob("*.py")} - {"run_all.py"}  # bench_*.py and gpu_check.py
    assert set(_run_all().SCRIPTS) == scripts


def test_every_bench_script_has_a_quick_form():
    for name in _run_all().SCRIPTS:
        assert '"--quick"' in (BENCH / name).read_text(), f"{name} has no --quick flag"


def test_last_line_skips_warnings_and_shortens():
    last_line = _run_all().last_line
    assert last_line("table\nverdict: met\n  warnings.warn(\n") == "verdict: met"
    assert len(last_line("x" * 300)) == 100
