"""Recipes in configs/: every file loads, builds its TRL arguments and parses its accelerate config without a GPU
(so none can rot); the loader, the flags-over-file order, old saved configs of the policy trainers."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from medagent.errors import ConfigError
from medagent.train.recipes import (
    accelerate_config_path, build_config, config_from_argv, dry_run, load_accelerate_config, load_recipe, read_recipe,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
RECIPES = sorted([*CONFIGS.glob("sft/*.yaml"), *CONFIGS.glob("grpo/*.yaml")])
ACCELERATE = sorted(CONFIGS.glob("accelerate/*.yaml"))
QWEN = [r for r in RECIPES if r.name.startswith("qwen3-vl-")]


def _id(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_the_recipe_set_covers_sizes_trainers_and_engines():
    names = {_id(r) for r in RECIPES}
    for size in ("2b", "4b", "8b"):
        assert any(n.startswith(f"sft/qwen3-vl-{size}") for n in names), size
        assert any(n.startswith(f"grpo/qwen3-vl-{size}") for n in names), size
    assert {a.name for a in ACCELERATE} >= {"ddp.yaml", "fsdp2.yaml", "zero3.yaml", "cpu-ddp.yaml"}
    used = {accelerate_config_path(r).resolve() for r in RECIPES}
    assert {a.resolve() for a in ACCELERATE} <= used, "an accelerate config no recipe uses"
    modes = {load_recipe(r).vllm_mode for r in RECIPES if r.parent.name == "grpo" and load_recipe(r).use_vllm}
    assert modes == {"colocate", "server"}


@pytest.mark.parametrize("recipe", RECIPES, ids=_id)
def test_every_recipe_builds_its_trainer_arguments(recipe):
    from trl import GRPOConfig, SFTConfig

    raw = read_recipe(recipe)
    config = load_recipe(recipe)
    assert type(config).__name__ == {"sft": "SFTRunConfig", "grpo": "GRPORunConfig"}[raw["trainer"]]
    args, on_gpu = dry_run(config)
    assert isinstance(args, {"sft": SFTConfig, "grpo": GRPOConfig}[raw["trainer"]])
    assert args.learning_rate == config.learning_rate and args.max_steps == config.max_steps
    assert args.per_device_train_batch_size == config.per_device_train_batch_size
    assert args.gradient_accumulation_steps == config.gradient_accumulation_steps
    if raw["trainer"] == "grpo":
        assert args.num_generations == config.num_generations and args.beta == config.beta
        assert (args.use_vllm, args.vllm_mode) == (config.use_vllm, config.vllm_mode)
        assert args.max_tool_calling_iterations == config.env.get("max_turns", 5)
    for key, value in config.trl_kwargs.items():
        assert getattr(args, key) == value, key
    # A comment names the source of the numbers (or says they are ours).
    text = recipe.read_text()
    assert "Source" in text or "ours" in text
    if recipe in QWEN:
        assert config.device == "cuda" and on_gpu == {"use_cpu": False, "bf16": True,
                                                     "checkpointing": config.gradient_checkpointing}
        assert config.model and config.output_dir
    else:
        assert config.device == "cpu" and on_gpu["use_cpu"] and not on_gpu["bf16"]


@pytest.mark.parametrize("recipe", RECIPES, ids=_id)
def test_every_recipe_names_an_accelerate_config_that_parses_and_fits(recipe):
    from accelerate.utils import DistributedType

    config = load_recipe(recipe)
    path = accelerate_config_path(recipe)
    assert path is not None and path.exists(), f"{recipe}: accelerate config {path}"
    acc = load_accelerate_config(path)
    kind = acc.distributed_type
    if recipe in QWEN:
        assert acc.mixed_precision == "bf16" and not acc.use_cpu
        # LoRA keeps the frozen base whole on each GPU (DDP); full fine-tuning shards it (FSDP2 or ZeRO-3).
        assert kind == (DistributedType.MULTI_GPU if config.lora else kind)
        if not config.lora:
            assert kind in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if kind == DistributedType.FSDP:
        assert acc.fsdp_config["fsdp_version"] == 2 and acc.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        # FSDP checkpoints the layers itself; the Trainer's checkpointing on top adds an all-gather.
        assert acc.fsdp_config["fsdp_activation_checkpointing"] and not config.gradient_checkpointing
    if kind == DistributedType.DEEPSPEED:
        assert acc.deepspeed_config["zero_stage"] == 3 and acc.deepspeed_config["zero3_save_16bit_model"]


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_configs_parse_as_accelerate_reads_them(path):
    acc = load_accelerate_config(path)
    assert acc.num_machines == 1 and acc.num_processes >= 2
    assert "Source" in path.read_text() or path.name == "cpu-ddp.yaml"


def test_flags_override_the_file_and_set_overrides_both(tmp_path):
    recipe = CONFIGS / "sft" / "qwen3-vl-4b-lora.yaml"
    config = load_recipe(recipe, {"max_steps": 7, "learning_rate": 1e-5}, {"learning_rate": "3e-5", "lora_r": "8"})
    assert (config.max_steps, config.learning_rate, config.lora_r, config.lora_alpha) == (7, 3e-5, 8, 16)
    config, _ = config_from_argv("grpo", ["--recipe", str(CONFIGS / "grpo" / "tiny-cpu.yaml"), "--max-steps", "3",
                                          "--output-dir", str(tmp_path / "r"), "--set", "beta=0.04"])
    assert (config.max_steps, config.beta, config.output_dir, config.prompts) == (3, 0.04, str(tmp_path / "r"), 4)
    assert config.env == {"dataset": "phantom", "image_size": 32, "max_turns": 2}
    with pytest.raises(ConfigError, match="grpo recipe"):
        config_from_argv("sft", ["--recipe", str(CONFIGS / "grpo" / "tiny-cpu.yaml")])


def test_recipe_errors_name_the_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer: sft\ndata: x\nlearning_rte: 1e-5\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*learning_rte"):
        load_recipe(bad)
    bad.write_text("data: x\n")
    with pytest.raises(ConfigError, match="trainer"):
        load_recipe(bad)
    bad.write_text("trainer: grpo\ntrl_kwargs: {no_such_trl_field: 1}\n")
    with pytest.raises(ConfigError, match="no_such_trl_field"):
        dry_run(load_recipe(bad))
    bad.write_text("trainer: grpo\ntrl_kwargs: {beta: 0.1}\n")  # a field GRPORunConfig sets itself
    with pytest.raises(ConfigError, match="beta"):
        dry_run(load_recipe(bad))
    bad.write_text("trainer: sft\ndata: x\nlearning_rate: 1e-5\nlora_target_modules: [all]\nwarmup_steps: 0.1\n")
    config = load_recipe(bad)  # YAML 1.2 numbers (1e-5 is a float, not text); lists become the field's tuple
    assert config.learning_rate == 1e-5 and config.lora_target_modules == ("all",) and config.warmup_steps == 0.1


@pytest.mark.parametrize("cls_name", ["SFTRunConfig", "GRPORunConfig", "PolicyRecipeConfig"])
def test_policy_configs_saved_with_out_dir_still_load(tmp_path, cls_name):
    from medagent.train.config_io import load_config
    from medagent.train.grpo import GRPORunConfig
    from medagent.train.policy_recipe import PolicyRecipeConfig
    from medagent.train.sft import SFTRunConfig
    from medagent.train.trl_common import jsonable

    cls = {"SFTRunConfig": SFTRunConfig, "GRPORunConfig": GRPORunConfig, "PolicyRecipeConfig": PolicyRecipeConfig}[cls_name]
    config = cls(**({"data": "x"} if cls is SFTRunConfig else {}), output_dir=str(tmp_path / "run"))
    values = jsonable(dataclasses.asdict(config))
    values["out_dir"] = values.pop("output_dir")  # what runs wrote before the rename
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert load_config(cls, tmp_path) == config
    assert not any(f.name == "out_dir" for f in dataclasses.fields(cls))


def test_cli_train_sft_and_grpo_take_a_recipe(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from medagent.cli import app

    seen = {}
    monkeypatch.setattr("medagent.train.sft.run_sft", lambda config: seen.setdefault("sft", config) and tmp_path)
    monkeypatch.setattr("medagent.train.grpo.run_grpo", lambda config: seen.setdefault("grpo", config) and tmp_path)
    runner = CliRunner()
    result = runner.invoke(app, ["train", "sft", "--recipe", str(CONFIGS / "sft" / "qwen3-vl-8b-lora.yaml"),
                                 "--steps", "5", "--set", "lora_r=8"])
    assert result.exit_code == 0, result.output
    sft = seen["sft"]
    assert (sft.max_steps, sft.lora_r, sft.learning_rate, sft.model) == (5, 8, 2e-4, "models/Qwen3-VL-8B-Instruct")
    assert sft.seed == 0 and sft.lora  # flags left at their defaults do not override the file
    result = runner.invoke(app, ["train", "grpo", "--recipe", str(CONFIGS / "grpo" / "qwen3-vl-2b-lora-colocate.yaml"),
                                 "--dataset", "nuclei", "--generations", "4", "--output-dir", str(tmp_path / "g")])
    assert result.exit_code == 0, result.output
    grpo = seen["grpo"]
    assert grpo.env == {"dataset": "nuclei", "split": "train", "image_size": 512, "max_turns": 5}
    assert (grpo.num_generations, grpo.per_device_train_batch_size, grpo.output_dir) == (4, 1, str(tmp_path / "g"))
    assert grpo.use_vllm and grpo.vllm_mode == "colocate"
    result = runner.invoke(app, ["train", "sft", "--recipe", str(CONFIGS / "grpo" / "tiny-cpu.yaml")])
    assert result.exit_code != 0 and "grpo recipe" in result.output


def test_build_config_without_a_recipe_is_the_dataclass_defaults():
    from medagent.train.grpo import GRPORunConfig

    assert build_config("grpo", {}) == GRPORunConfig()


def test_policy_recipe_teacher_sources_name_their_split():
    from medagent.errors import ConfigError
    from medagent.train.policy_recipe import PolicyRecipeConfig, _source_folder, trajectory_sources

    config = PolicyRecipeConfig(datasets=("mni-lesion", "nuclei"), procedural_seeds=(0, 3), teacher_splits=("train", "val"))
    sources = trajectory_sources(config)
    assert sources == [("mni-lesion", "train", 0), ("mni-lesion", "train", 3), ("nuclei", "train", 0),
                       ("mni-lesion", "val", 0), ("mni-lesion", "val", 3), ("nuclei", "val", 0)]
    assert [_source_folder(*s) for s in sources[:1] + sources[3:4]] == ["mni-lesion-0", "mni-lesion-val-0"]
    with pytest.raises(ConfigError, match="teacher_splits"):
        PolicyRecipeConfig(teacher_splits=("train", "test"))
