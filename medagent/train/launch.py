"""One way to start any tool trainer: `medagent train tool NAME [--FIELD VALUE ...]` runs on this.

Each trainer keeps its own config dataclass (TRL style: `XConfig` beside `train_x`), and the trainers
here share TRL's names for what they have in common: `max_steps` (optimisation steps), `output_dir` (the
run folder), `seed`. `medagent.cli` makes every field of the config a flag (`max_steps` -> `--max-steps`)
with the field's documentation as its help (`config_io.field_help`) and its type as its parser
(`config_io.parse_value`), so a new field is a new flag with no CLI change. `make_config` builds the
config from those values, a saved config.json (`--config`) and the fields a NAME fixes (`unet` fixes
`model="unet"`).
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError


@dataclass(frozen=True)
class TrainerEntry:
    """Where a trainer lives ("module:attribute" each), a one-line summary, and config fields NAME fixes."""

    config: str
    train: str
    summary: str
    fixed: dict[str, Any] = field(default_factory=dict)


_SEGMENTER = ("medagent.train.segmenter_config:ToolTrainerConfig", "medagent.train.tool_trainer:train_tool")
TRAINERS: dict[str, TrainerEntry] = {
    "unet": TrainerEntry(*_SEGMENTER, "the UNet segmenter (ToolTrainerConfig)", {"model": "unet"}),
    "ifunet": TrainerEntry(*_SEGMENTER, "the IF-UNet segmenter (ToolTrainerConfig)", {"model": "ifunet"}),
    "allukan": TrainerEntry(*_SEGMENTER, "the ALL U-KAN segmenter (ToolTrainerConfig)", {"model": "allukan"}),
    "sam": TrainerEntry("medagent.train.sam_trainer:SamTrainerConfig", "medagent.train.sam_trainer:train_sam",
                        "SAM with simulated prompts: tiny from scratch or fine-tuned (SamTrainerConfig)"),
    "refine": TrainerEntry("medagent.train.refiner_trainer:RefinerTrainerConfig", "medagent.train.refiner_trainer:train_refiner",
                           "the diffusion contour refiner or its one-shot baseline (RefinerTrainerConfig)"),
    "ctta-source": TrainerEntry("medagent.train.ctta_source:CTTASourceConfig", "medagent.train.ctta_source:train_ctta_source",
                                "a CTTA source UNet, clean centre only, and ship it (CTTASourceConfig)"),
}


def _entry(name: str) -> TrainerEntry:
    if name not in TRAINERS:
        raise ConfigError(f"no trainer for tool {name!r}; trainable tools: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]


def _attribute(spec: str) -> Any:
    module, attribute = spec.split(":")
    return getattr(importlib.import_module(module), attribute)


def config_class(name: str) -> type:
    """The config dataclass of tool `name`'s trainer (imports that trainer's config module)."""
    return _attribute(_entry(name).config)


def fixed_fields(name: str) -> dict[str, Any]:
    """Config fields that tool `name` fixes (not flags)."""
    return dict(_entry(name).fixed)


def make_config(name: str, values: dict[str, Any] | None = None, *, texts: dict[str, str] | None = None,
                config_file: str | Path | None = None) -> Any:
    """The trainer config of tool `name`: the fields NAME fixes, then a saved config.json (`config_file`,
    old key names accepted), then `values` (already typed, e.g. from flags) and `texts` (field=value text,
    `--set`, typed by the field). A field given twice, or a fixed field changed, is an error."""
    from medagent.train.config_io import field_types, load_config, parse_value

    cls = config_class(name)
    names = field_types(cls)
    fixed = fixed_fields(name)
    merged: dict[str, Any] = dict(fixed)
    if config_file is not None:
        saved = load_config(cls, config_file)
        merged.update({f.name: getattr(saved, f.name) for f in dataclasses.fields(cls) if f.init})
    given: dict[str, Any] = {}
    for key, value in (values or {}).items():
        if key not in names:
            raise ConfigError(f"{cls.__name__} has no field {key!r}; fields: {', '.join(names)}")
        given[key] = value
    for key, text in (texts or {}).items():
        if key not in names:
            raise ConfigError(f"--set {key}=...: {cls.__name__} has no field {key!r}; fields: {', '.join(names)}")
        if key in given:
            raise ConfigError(f"{cls.__name__}.{key} is given twice (a flag and --set {key}=...)")
        try:
            given[key] = parse_value(cls, key, text)
        except ValueError as exc:
            raise ConfigError(f"--set {key}={text}: {exc}") from None
    for key, want in fixed.items():
        for value in (merged[key], given.get(key, want)):  # from the config file, from --set
            if value != want:
                raise ConfigError(f"`train tool {name}` fixes {key}={want!r}; got {value!r} (use `train tool {value}`)")
    merged.update(given)
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def config_from(cls: type, values: dict[str, Any], overrides: dict[str, str] | None = None) -> Any:
    """Instantiate config dataclass `cls` from `values` plus `field=value` text overrides (checked by name).

    The `train sft` / `train grpo` / `train policy` commands' way (their own flags, then `--set`); the text is
    parsed against the field's type by `config_io.parse_value`, as every other `--set` is.
    """
    from medagent.train.config_io import parse_value

    values = dict(values)
    for key, value in (overrides or {}).items():
        try:
            values[key] = parse_value(cls, key, value) if isinstance(value, str) else value
        except ConfigError as exc:
            raise ConfigError(f"--set {key}=...: {exc}") from exc
        except ValueError as exc:
            raise ConfigError(f"--set {key}={value}: {exc}") from exc
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def train(name: str, config: Any) -> Path:
    """Run the trainer of tool `name` with `config`; returns the checkpoint folder it reports."""
    return Path(_attribute(_entry(name).train)(config))
