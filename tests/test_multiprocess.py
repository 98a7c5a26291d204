"""Two processes on the CPU (gloo), launched by accelerate exactly as README's GPU section says: two SFT steps and
two GRPO steps of the tiny policy (configs/sft/tiny-cpu.yaml, configs/grpo/tiny-cpu.yaml), one run folder
written by the main process, each rank on its own shard of the rows / prompts.

The shards are read from inside the ranks: a `sitecustomize` module on the children's PYTHONPATH records what
each rank's collator (SFT) and environments (GRPO) receive; nothing in medagent is patched for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from medagent.agents.vlm import load_vlm

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]

RECORDER = textwrap.dedent('''
    """Test hook: what each rank trains on (tests/test_multiprocess.py)."""
    import hashlib, json, os

    _OUT = os.environ["MEDAGENT_TEST_RECORD"]


    def _record(kind, payload):
        import torch.distributed as dist

        row = {"rank": int(os.environ.get("RANK", "0")),
               "world": dist.get_world_size() if dist.is_initialized() else 1,
               "backend": dist.get_backend() if dist.is_initialized() else None, **payload}
        with open(os.path.join(_OUT, f"{kind}-{row['rank']}.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\\n")


    def _key(example):
        h = hashlib.sha1(json.dumps(example["messages"], sort_keys=True, default=str).encode())
        for image in example.get("images") or []:
            h.update(image.tobytes())
        return h.hexdigest()


    import medagent.train.sft as _sft

    _collate = _sft.ConversationCollator.__call__
    _sft.ConversationCollator.__call__ = lambda self, examples: (
        _record("sft", {"rows": [_key(e) for e in examples]}), _collate(self, examples))[1]

    import medagent.envs.trl_adapter as _adapter

    _reset = _adapter.SegToolEnvironment.reset


    def _reset_recorded(self, **kwargs):
        _record("grpo", {"row": [kwargs.get(k) for k in ("seed", "case_index", "target_index")]})
        return _reset(self, **kwargs)


    _adapter.SegToolEnvironment.reset = _reset_recorded
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, module: str, recipe: str, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`accelerate launch --config_file configs/accelerate/cpu-ddp.yaml -m MODULE --recipe RECIPE FLAGS...`."""
    hook, record = tmp_path / "hook", tmp_path / "record"
    hook.mkdir(exist_ok=True)
    record.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(RECORDER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDAGENT_TEST_RECORD": str(record), "TRL_EXPERIMENTAL_SILENCE": "1",
           "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "configs/accelerate/cpu-ddp.yaml",
               "--main_process_port", str(_free_port()), "-m", module, "--recipe", recipe, *flags]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result, record


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_run_folder(run: Path, result: subprocess.CompletedProcess, kind: str, loss_key: str) -> list[dict]:
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", "config.json", "metrics.jsonl", "model", "versions.json"]
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 2 and config["output_dir"] == str(run) and config["device"] == "cpu"
    logs = _lines(run / "metrics.jsonl")
    # One writer: every step logged once (a second writer would repeat lines or break them).
    assert [r["step"] for r in logs if loss_key in r] == [1, 2]
    model, _ = load_vlm(run / "model")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert result.stdout.count(f"{kind} run folder: {run}") == 1  # printed by the main process only
    return logs


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """Four toy expert episodes exported for TRL (one SFT row each)."""
    from medagent.envs.testing import make_env
    from medagent.trajectories import GenerateConfig, export_trl, generate

    root = tmp_path_factory.mktemp("mp-data")
    generate(make_env, root / "traj", GenerateConfig(agent="expert", episodes=4, shard_size=4, seed=0))
    export_trl(root / "traj", root / "data", val_fraction=0.0)
    return root / "data"


def test_sft_two_processes_each_on_its_shard(tmp_path, sft_data):
    import datasets

    run = tmp_path / "sft"
    result, record = _launch(tmp_path, "medagent.train.sft", "configs/sft/tiny-cpu.yaml",
                             "--data", str(sft_data), "--output-dir", str(run))
    _check_run_folder(run, result, "SFT", "loss")
    ranks = [_lines(record / f"sft-{r}.jsonl") for r in (0, 1)]
    assert all(row["world"] == 2 and row["backend"] == "gloo" for rank in ranks for row in rank)
    assert [len(rank) for rank in ranks] == [2, 2]  # two steps, one batch of 2 rows per rank each
    rows = datasets.load_from_disk(str(sft_data))["train"]
    every = set()
    for i, example in enumerate(rows):
        h = hashlib.sha1(json.dumps(example["messages"], sort_keys=True, default=str).encode())
        for image in example["images"]:
            h.update(image.tobytes())
        every.add(h.hexdigest())
    assert len(every) == 4
    for step in range(2):  # 2 ranks x 2 rows = the 4 rows, each rank its own half
        first, second = set(ranks[0][step]["rows"]), set(ranks[1][step]["rows"])
        assert len(first) == len(second) == 2 and not first & second and first | second == every


def test_grpo_two_processes_each_on_its_prompts(tmp_path):
    run = tmp_path / "grpo"
    result, record = _launch(tmp_path, "medagent.train.grpo", "configs/grpo/tiny-cpu.yaml", "--output-dir", str(run))
    logs = _check_run_folder(run, result, "GRPO", "reward")
    assert all("rewards/SegToolEnvironment/mean" in r for r in logs if "reward" in r)
    ranks = [_lines(record / f"grpo-{r}.jsonl") for r in (0, 1)]
    assert all(row["world"] == 2 and row["backend"] == "gloo" for rank in ranks for row in rank)
    # Per step each rank rolls out one prompt's whole group (num_generations 2), a prompt the other rank does not.
    assert [len(rank) for rank in ranks] == [4, 4]
    groups = [[tuple(rank[i]["row"]) for i in range(0, 4, 2)] for rank in ranks]
    for rank, rank_groups in zip(ranks, groups):
        assert [tuple(r["row"]) for r in rank] == [g for g in rank_groups for _ in range(2)]
    assert len(set(groups[0]) | set(groups[1])) == 4  # the recipe's 4 prompts, each on one rank once
