"""`medagent train tool NAME`: flags generated from the trainer configs, TRL's names, old saved configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from medagent.cli import app
from medagent.errors import ConfigError
from medagent.train import launch
from medagent.train.config_io import RENAMED_FIELDS, field_help, load_config, parse_value
from medagent.train.segmenter_config import AugmentConfig, ToolTrainerConfig

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("name", sorted(launch.TRAINERS))
def test_every_trainer_field_is_documented_and_uses_trls_names(name):
    cls = launch.config_class(name)
    names = [f.name for f in dataclasses.fields(cls)]
    helps = field_help(cls)
    assert [n for n in names if not helps.get(n)] == [], f"{cls.__name__}: fields without an Attributes entry"
    assert {"max_steps", "output_dir", "seed"} <= set(names), cls.__name__
    assert not {"steps", "out_dir"} & set(names), cls.__name__


def test_augment_config_fields_are_documented():
    doc = AugmentConfig.__doc__
    assert [f.name for f in dataclasses.fields(AugmentConfig) if f.name not in doc] == []


def test_unet_help_lists_every_tool_trainer_config_field():
    result = invoke("train", "tool", "unet", "--help")
    assert result.exit_code == 0, result.output
    for f in dataclasses.fields(ToolTrainerConfig):
        if f.name == "model":
            assert "model='unet'" in result.output  # fixed by the tool name, said in the help text
        else:
            assert "--" + f.name.replace("_", "-") in result.output, f.name
    assert "--steps" in result.output and "--out" in result.output and "--data" in result.output  # short spellings
    assert "optimisation steps" in result.output and "[default: 600]" in result.output  # the field's doc and default
    listing = invoke("train", "tool", "--help")
    assert listing.exit_code == 0 and all(name in listing.output for name in launch.TRAINERS)


def test_bad_flags_and_values_name_themselves():
    result = invoke("train", "tool", "unet", "--no-such-flag", "1")
    assert result.exit_code == 2 and "--no-such-flag" in result.output
    result = invoke("train", "tool", "unet", "--max-steps", "many")
    assert result.exit_code == 2 and "--max-steps" in result.output and "integer" in result.output
    result = invoke("train", "tool", "sam", "--dataset", "nuclei")  # sam takes --datasets
    assert result.exit_code == 2 and "--dataset" in result.output
    result = invoke("train", "tool", "unet", "--max-steps", "0", "--show-config")
    assert result.exit_code == 2 and "max_steps" in result.output
    result = invoke("train", "tool", "unet", "--batch-size", "2", "--set", "batch_size=3")
    assert result.exit_code == 2 and "batch_size" in result.output and "twice" in result.output


def test_flags_are_typed_by_the_field():
    result = invoke("train", "tool", "refine", "--show-config", "--widths", "8,8,8,16", "--datasets", "nuclei,phantom",
                    "--reverse-steps", "2", "--max-minutes", "none", "--steps", "30")
    assert result.exit_code == 0, result.output
    assert "(8, 8, 8, 16)" in result.output and "'max_minutes': None" in result.output
    assert "'max_steps': 30" in result.output and "'reverse_steps': 2" in result.output  # --steps is never the refiner's
    assert parse_value(ToolTrainerConfig, "dataset_seeds", "[0, 1]") == (0, 1)
    assert parse_value(ToolTrainerConfig, "dataset_seeds", "") == ()
    assert parse_value(ToolTrainerConfig, "aug", '{"blur_prob": 0.5}') == {"blur_prob": 0.5}
    assert parse_value(ToolTrainerConfig, "num_threads", "none") is None
    assert parse_value(ToolTrainerConfig, "resume", "no") is False
    for field, text in (("max_steps", "1.5"), ("dataset_seeds", "a,b"), ("model_config", "[1]"), ("augment", "maybe")):
        with pytest.raises(ValueError):
            parse_value(ToolTrainerConfig, field, text)


def test_make_config_layers_fixed_file_and_flags(tmp_path):
    config = launch.make_config("ifunet", {"max_steps": 5}, texts={"lr": "0.01"})
    assert (config.model, config.max_steps, config.lr) == ("ifunet", 5, 0.01)
    with pytest.raises(ConfigError, match="fixes model='ifunet'"):
        launch.make_config("ifunet", texts={"model": "unet"})
    with pytest.raises(ConfigError, match="no field 'steps'"):
        launch.make_config("unet", {"steps": 5})
    with pytest.raises(ConfigError, match="trainable tools"):
        launch.make_config("nope")


def _old_style(config) -> dict:
    """A config.json as medagent wrote it before the rename."""
    values = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    for old, new in RENAMED_FIELDS[type(config).__name__].items():
        values[old] = values.pop(new)
    return values


@pytest.mark.parametrize("name", ["unet", "sam", "refine", "ctta-source"])
def test_old_style_config_json_loads_with_current_names(tmp_path, name):
    cls = launch.config_class(name)
    config = launch.make_config(name, {"max_steps": 7, "output_dir": str(tmp_path / "run"), "seed": 3})
    values = _old_style(config)
    if name == "refine":
        values["command"] = "train tool refine"  # what the refiner writes next to its fields
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert load_config(cls, tmp_path / "config.json") == config
    if name == "refine":
        assert RENAMED_FIELDS["RefinerTrainerConfig"] == {"steps": "reverse_steps"}  # its reverse steps, not max_steps
    else:
        assert values["steps"] == 7 and values["out_dir"] == str(tmp_path / "run")


def test_cli_starts_from_an_old_style_config_and_flags_override(tmp_path):
    config = launch.make_config("unet", {"max_steps": 7, "output_dir": str(tmp_path / "run"), "batch_size": 3})
    (tmp_path / "config.json").write_text(json.dumps(_old_style(config)))
    result = invoke("train", "tool", "unet", "--config", str(tmp_path / "config.json"), "--max-steps", "9", "--show-config")
    assert result.exit_code == 0, result.output
    assert "'max_steps': 9" in result.output and "'batch_size': 3" in result.output and str(tmp_path / "run") in result.output
    result = invoke("train", "tool", "ifunet", "--config", str(tmp_path / "config.json"), "--show-config")
    assert result.exit_code == 2 and "fixes model='ifunet'" in result.output
    both = {**_old_style(config), "max_steps": 7}
    (tmp_path / "both.json").write_text(json.dumps(both))
    with pytest.raises(ConfigError, match="both 'steps'"):
        load_config(ToolTrainerConfig, tmp_path / "both.json")
