"""Wall time of the main job: `medagent demo` (what `make demo` runs after install) on the embedded default.

    python bench/bench_demo.py            # the full demo, once; goal: within 5 minutes on 2 CPU cores
    python bench/bench_demo.py --quick    # `medagent demo --quick` (the form the tests use)

Runs the installed CLI in a fresh process (as a user's shell would, imports included) into a temporary run
root, checks that it printed the report's path and that the report exists, and prints the time beside the goal.
Run it on an otherwise idle machine: a training in the background doubles it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_SECONDS = 300.0


def run_demo(quick: bool, out: Path) -> tuple[float, Path | None, str]:
    """(seconds, the report path the demo printed or None, the demo's output)."""
    command = [sys.executable, "-c", "from medagent.cli import app; app()", "demo", "--out", str(out)]
    if quick:
        command.append("--quick")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    seconds = time.perf_counter() - start
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise SystemExit(f"medagent demo failed (exit {done.returncode}):\n{text[-3000:]}")
    match = re.search(r"(\S+report\.html)", done.stdout)
    return seconds, (Path(match.group(1)) if match else None), text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time `medagent demo --quick`")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="bench-demo-"))
    try:
        seconds, report, _ = run_demo(args.quick, out)
        ok = report is not None and report.is_file()
        print(f"\n## medagent demo{' --quick' if args.quick else ''} (fresh process, {os.cpu_count()} CPU cores)\n")
        print("| run | wall time | goal | report written |")
        print("|---|---|---|---|")
        goal = f"{GOAL_SECONDS / 60:.0f} min" if not args.quick else "-"
        print(f"| demo{' --quick' if args.quick else ''} | {seconds / 60:.1f} min ({seconds:.0f} s) | {goal} | "
              f"{'yes' if ok else 'NO'} |")
        if not args.quick:
            print(f"\n{'met' if seconds <= GOAL_SECONDS else 'not met'}: {seconds:.0f} s against {GOAL_SECONDS:.0f} s")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
