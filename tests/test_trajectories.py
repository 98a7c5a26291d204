"""Trajectory generation (shards, workers, resume), TRL export and show, on the toy env with fake tools."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medagent.envs.testing import make_env
from medagent.errors import ConfigError
from medagent.trajectories import FINAL_ANSWER, GenerateConfig, export_trl, generate, is_val_subject, load_trajectories, show


def _rows(path):
    table = load_trajectories(path)
    return [{k: (np.asarray(v).tobytes() if k in ("image", "final_image") and v is not None else v) for k, v in row.items()}
            for row in table]


def test_generate_workers_and_resume_give_identical_trajectories(tmp_path):
    config = GenerateConfig(agent="expert", episodes=5, seed=3, shard_size=2, workers=1)
    one = generate(make_env, tmp_path / "one", config, env_description={"env": "toy"})
    rows_one = _rows(one)
    assert sorted({r["episode"] for r in rows_one}) == [0, 1, 2, 3, 4]
    assert len(list((one / "shards").glob("shard-*"))) == 3

    two = generate(make_env, tmp_path / "two", GenerateConfig(**{**config.__dict__, "workers": 2}), env_description={"env": "toy"})
    assert _rows(two) == rows_one

    # an interrupted run: one shard done, one half-written temp folder left behind, then resume
    part = tmp_path / "part"
    generate(make_env, part, config, env_description={"env": "toy"}, max_shards=1)
    (part / "shards" / ".tmp-shard-00001-deadbeef").mkdir()
    with pytest.raises(ConfigError):
        generate(make_env, part, config, env_description={"env": "toy"})  # needs resume=True
    with pytest.raises(ConfigError):
        generate(make_env, part, GenerateConfig(**{**config.__dict__, "seed": 4}), env_description={"env": "toy"}, resume=True)
    generate(make_env, part, config, env_description={"env": "toy"}, resume=True)
    assert not list((part / "shards").glob(".tmp-*"))
    assert _rows(part) == rows_one  # no duplicates, nothing lost

    # rows carry what the trainer and the report need
    row = rows_one[0]
    assert row["step"] == 0 and row["turn"] == 0 and "<tool_call>" in row["action"]
    assert set(json.loads(row["reward_terms"])) >= {"format", "outcome", "score"}
    last = [r for r in rows_one if r["episode"] == 0][-1]
    assert last["final_image"] is not None and last["terminated"]
    assert sum(r["reward"] for r in rows_one if r["episode"] == 0) == pytest.approx(last["episode_score"])


def test_export_trl_messages_and_show(tmp_path):
    src = generate(make_env, tmp_path / "traj", GenerateConfig(agent="expert", episodes=6, seed=0, shard_size=3),
                   env_description={"env": "toy"})
    data = export_trl(src, tmp_path / "sft", val_fraction=0.5)
    assert set(data) == {"train", "val"} and len(data["train"]) + len(data["val"]) == 6
    assert not set(data["train"]["subject"]) & set(data["val"]["subject"])
    example = (data["train"] if len(data["train"]) else data["val"])[0]
    roles = [m["role"] for m in example["messages"]]
    assert roles[:3] == ["system", "user", "assistant"] and roles[-1] == "assistant"
    assert "add_bbox" not in example["messages"][0]["content"][0]["text"]  # the schema goes through tools=, not here
    assert example["messages"][-1]["content"][0]["text"] == FINAL_ANSWER
    n_placeholders = sum(c["type"] == "image" for m in example["messages"] for c in m["content"])
    assert n_placeholders == len(example["images"]) >= 1
    middle = example["messages"][2:-1]
    calls = [c for m in middle if m["role"] == "assistant" for c in m["tool_calls"]]
    tools = [m for m in middle if m["role"] == "tool"]
    assert len(calls) == len(tools) >= 1  # one tool message per call
    assert [c["function"]["name"] for c in calls] == [m["name"] for m in tools]
    assert all(isinstance(json.loads(c["function"]["arguments"]), dict) for c in calls)
    assert is_val_subject("subj0", 0.0) is False

    files = show(src, 0, tmp_path / "frames")
    assert files[0].name == "step-00.png" and files[-1].name == "final.png" and all(f.exists() for f in files)
    with pytest.raises(ConfigError):
        show(src, 99, tmp_path / "none")


def test_export_with_an_empty_val_split(tmp_path):
    """Few subjects: an empty val split is left out, and the export still loads."""
    import functools

    import datasets

    from medagent.envs.testing import make_env
    from medagent.trajectories import GenerateConfig, export_trl, generate

    out = generate(functools.partial(make_env), tmp_path / "t", GenerateConfig(episodes=2, shard_size=2, seed=3))
    result = export_trl(out, tmp_path / "sft", val_fraction=0.0)
    assert len(result["train"]) == 2 and "val" not in result
    again = datasets.load_from_disk(str(tmp_path / "sft"))
    assert list(again) == ["train"] and len(again["train"]) == 2
