"""Every bench script in its `--quick` form, one after another, then one summary table (`make bench`).

    python bench/run_all.py --quick                  # what `make bench` runs
    python bench/run_all.py --quick --only policy,env
    python bench/run_all.py                          # full runs: hours on a 2-core CPU

Each script runs in its own process (1 torch thread unless it sets its own), so one failure does not stop the
others; its whole output goes to `<out>/<script>.txt`, where its tables are. The summary gives, per script,
whether it finished, its wall time and its last output line. `--quick` numbers are smoke numbers (few
episodes, few cases): the figures quoted in docs/ come from the full runs named beside them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: script -> extra arguments of its quick form (beyond `--quick`).
SCRIPTS: dict[str, list[str]] = {
    "bench_env.py": [],
    "bench_sam_cost.py": [],
    "bench_sam_quality.py": [],
    "bench_fewshot.py": [],
    "bench_segmenters.py": [],
    "bench_augment.py": [],
    "bench_lesion_ablation.py": [],
    "bench_kan_cost.py": [],
    "bench_ctta.py": [],
    "bench_refine.py": [],
    "bench_policy.py": [],
    "bench_region_rules.py": [],
    "bench_demo.py": [],
    "gpu_check.py": [],  # on a CPU-only machine it says it skipped everything and exits 0
}


def last_line(text: str) -> str:
    """The last non-empty output line (where most scripts print their verdict), shortened for a table cell."""
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith(("warnings.", "Warning"))]
    line = lines[-1] if lines else ""
    return line if len(line) <= 100 else line[:97] + "..."


def run_script(script: str, extra: list[str], quick: bool, out: Path, timeout: float) -> tuple[str, float, str]:
    """Run one bench script; returns (status, seconds, last output line). Its output goes to out/<script>.txt."""
    command = [sys.executable, str(HERE / script), *(["--quick"] if quick else []), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent)
        status, text = ("ok" if done.returncode == 0 else f"exit {done.returncode}"), done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timeout {timeout:.0f} s"
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
    seconds = time.perf_counter() - started
    (out / f"{Path(script).stem}.txt").write_text(f"$ {' '.join(command)}\n\n{text}")
    return status, seconds, last_line(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each script's --quick form (what `make bench` runs)")
    parser.add_argument("--only", default="", help="comma-separated subset, e.g. policy,env (names without bench_ / .py)")
    parser.add_argument("--out", default="medagent-runs/bench", help="folder of the per-script output files")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per script before it is stopped")
    args = parser.parse_args()

    wanted = {f"bench_{name.strip()}.py" for name in args.only.split(",") if name.strip()}
    unknown = wanted - set(SCRIPTS)
    if unknown:
        parser.error(f"--only: no bench script {sorted(unknown)}; choose from {', '.join(s[6:-3] for s in SCRIPTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for script, extra in SCRIPTS.items():
        if wanted and script not in wanted:
            continue
        print(f"[bench] {script} ...", flush=True)
        status, seconds, line = run_script(script, extra, args.quick, out, args.timeout)
        print(f"[bench] {script}: {status} in {seconds:.0f} s", flush=True)
        rows.append((script, status, seconds, line))

    print(f"\n## Bench summary ({'quick' if args.quick else 'full'} forms; outputs in {out}/)\n")
    print("| script | status | seconds | last line |")
    print("|---|---|---|---|")
    for script, status, seconds, line in rows:
        print(f"| {script} | {status} | {seconds:.0f} | {line.replace('|', '/')} |")
    return 0 if all(status == "ok" for _, status, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
