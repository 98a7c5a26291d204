"""GRPO in the environment through TRL (toy env, fake tools, tiny offline VLM), LoRA, prompts, grounding rows."""

from __future__ import annotations

import json
import math

import pytest

from medagent.agents.vlm import TinyVLMConfig, load_vlm
from medagent.envs.testing import make_dataset
from medagent.errors import ConfigError
from medagent.train.grpo import TERMS, GRPORunConfig, run_grpo
from medagent.train.sft import SFTRunConfig, run_sft
from medagent.trajectories import GenerateConfig, export_trl, generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOY_ENV = {"image_size": 32, "max_turns": 3, "min_area": 9, "load_tools": False}


@pytest.fixture(scope="module")
def toy_policy(tmp_path_factory):
    """A tiny VLM fine-tuned for a few dozen steps on toy expert trajectories: it writes tool calls."""
    from medagent.envs.testing import make_env

    root = tmp_path_factory.mktemp("policy")
    generate(make_env, root / "traj", GenerateConfig(agent="expert-box", episodes=6, shard_size=6, seed=0))
    export_trl(root / "traj", root / "data", val_fraction=0.0)
    run = run_sft(SFTRunConfig(data=str(root / "data"), output_dir=str(root / "sft"), max_steps=120, eval_split=None,
                               per_device_train_batch_size=4, learning_rate=3e-3, tiny=TinyVLMConfig(seed=0)))
    return run / "model"


@pytest.fixture()
def toy_grpo(monkeypatch):
    """run_grpo on the toy dataset with fake tools (the builtin loader and tool registry are bypassed)."""
    from medagent.envs import provider as provider_module
    from medagent.envs.testing import fake_tools

    monkeypatch.setattr("medagent.envs.env.load_dataset", lambda config: make_dataset())
    original = provider_module.ToolProvider.__init__

    def with_fakes(self, tools=None, load=True, dataset=None):
        original(self, tools or fake_tools(), False, dataset)

    monkeypatch.setattr(provider_module.ToolProvider, "__init__", with_fakes)


def _logs(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_grpo_runs_two_steps_through_the_adapter(toy_policy, toy_grpo, tmp_path):
    run = run_grpo(GRPORunConfig(model=str(toy_policy), env=TOY_ENV, prompts=4, output_dir=str(tmp_path / "run"),
                                 max_steps=2, num_generations=2, per_device_train_batch_size=2,
                                 max_completion_length=256, learning_rate=1e-4, progress=False))
    logs = [r for r in _logs(run) if "reward" in r]
    assert [r["step"] for r in logs] == [1, 2]
    for r in logs:
        assert all(f"rewards/term_{t}/mean" in r for t in TERMS)
        assert math.isfinite(r["rewards/SegToolEnvironment/mean"])  # the env's episode score, weight 1
        # term weights are 0 by default: the total reward is the episode score alone
        assert r["reward"] == pytest.approx(r["rewards/SegToolEnvironment/mean"], abs=1e-6)
    assert sum(r["tools/call_frequency"] for r in logs) > 0  # the policy called the env's tools
    config = json.loads((run / "config.json").read_text())
    assert config["env"]["max_turns"] == 3 and (run / "versions.json").exists()
    model, _ = load_vlm(run / "model")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"


def test_grpo_resumes_step_exactly_and_lora_merges(toy_policy, toy_grpo, tmp_path):
    out = tmp_path / "run"
    common = dict(model=str(toy_policy), env=TOY_ENV, prompts=4, output_dir=str(out), num_generations=2,
                  per_device_train_batch_size=2, max_completion_length=192, progress=False, lora=True, lora_r=4,
                  lora_alpha=8)
    run_grpo(GRPORunConfig(max_steps=2, save_steps=2, save_model=False, **common))
    assert (out / "checkpoints" / "checkpoint-2").is_dir()
    run_grpo(GRPORunConfig(max_steps=3, save_steps=2, resume=True, **common))
    assert [r["step"] for r in _logs(out) if "reward" in r] == [1, 2, 3]
    merged, _ = load_vlm(out / "model")  # LoRA merged into a plain model that loads without peft
    assert not any("lora" in name for name, _ in merged.named_parameters())


def test_grpo_config_checks():
    with pytest.raises(ConfigError, match="multiple of num_generations"):
        GRPORunConfig(num_generations=4, per_device_train_batch_size=6)
    with pytest.raises(ConfigError, match="unknown term"):
        GRPORunConfig(term_weights={"speed": 1.0})
    with pytest.raises(ConfigError, match="num_generations"):
        GRPORunConfig(num_generations=1, per_device_train_batch_size=1)


def test_prompt_rows_pin_the_image_and_target():
    from medagent.envs.trl_adapter import SegToolEnvironment
    from medagent.envs.testing import fake_tools
    from medagent.trajectories.prompts import episode_rows

    from medagent.envs.testing import make_env

    env = make_env()
    rows = list(episode_rows(env, seed=0, limit=6))
    assert len(rows) == 6 and len({(r["case_index"], r["target_index"]) for r in rows}) == 6
    seen = []
    for _ in range(2):  # two generations of one group see the same image and instruction
        adapter = SegToolEnvironment(dataset=make_dataset(), tools=fake_tools(), **TOY_ENV)
        first = adapter.reset(**rows[3])
        seen.append((first[1]["text"], adapter.episode.case.id, adapter.episode.target))
    assert seen[0] == seen[1]


def test_grounding_rows_are_single_add_bbox_turns(tmp_path):
    from medagent.trajectories.prompts import GroundingConfig, save_grounding

    data = save_grounding(GroundingConfig(datasets=("phantom",), rows=5, image_size=64), str(tmp_path / "g"))
    row = data["train"][0]
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant"]
    call = row["messages"][2]["tool_calls"][0]["function"]
    assert call["name"] == "add_bbox" and len(json.loads(call["arguments"])["bbox_2d"]) == 4
    assert len(row["images"]) == 1 and row["images"][0].size == (64, 64)


def test_sft_grounding_stage_with_lora_resumes(tmp_path):
    from medagent.trajectories.prompts import GroundingConfig

    out = tmp_path / "run"
    common = dict(stage="grounding", grounding=GroundingConfig(datasets=("phantom",), rows=8, image_size=64),
                  output_dir=str(out), eval_split=None, lora=True, lora_r=4, lora_alpha=8, lora_target_modules=("all",),
                  learning_rate=1e-3, per_device_train_batch_size=2)
    run_sft(SFTRunConfig(max_steps=2, save_steps=2, save_model=False, **common))
    run_sft(SFTRunConfig(max_steps=3, save_steps=2, resume=True, **common))
    steps = [r["step"] for r in _logs(out) if "loss" in r]
    assert steps == [1, 2, 3]
    assert (out / "adapter" / "adapter_config.json").exists()
    from safetensors import safe_open

    with safe_open(str(out / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert any("visual.blocks" in k for k in keys) and any("language_model" in k for k in keys)  # "all": both towers
    merged, _ = load_vlm(out / "model")
    assert not any("lora" in name for name, _ in merged.named_parameters())
