"""One way to start any tool trainer: `medagent train tool NAME` maps onto this.

Each trainer keeps its own config dataclass (TRL style: `XConfig` beside `train_x`). The CLI's common
flags (--dataset, --data, --steps, --seed, --out) are mapped onto whichever field each config calls
them, and `--set field=value` reaches any other field; values are parsed as JSON when they parse
(numbers, booleans, lists), else taken as text.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError


@dataclass(frozen=True)
class TrainerEntry:
    """Where a trainer lives: module, its config class, its train function, fixed config fields."""

    module: str
    config_class: str
    train_function: str
    fixed: dict[str, Any] = field(default_factory=dict)


TRAINERS: dict[str, TrainerEntry] = {
    "unet": TrainerEntry("medagent.train.tool_trainer", "ToolTrainerConfig", "train_tool", {"model": "unet"}),
    "ifunet": TrainerEntry("medagent.train.tool_trainer", "ToolTrainerConfig", "train_tool", {"model": "ifunet"}),
    "allukan": TrainerEntry("medagent.train.tool_trainer", "ToolTrainerConfig", "train_tool", {"model": "allukan"}),
    "sam": TrainerEntry("medagent.train.sam_trainer", "SamTrainerConfig", "train_sam"),
    "refine": TrainerEntry("medagent.train.refiner_trainer", "RefinerTrainerConfig", "train_refiner"),
    "ctta-source": TrainerEntry("medagent.train.ctta_source", "CTTASourceConfig", "train_ctta_source"),
}

#: common flag -> candidate config field names, first match wins.
_ALIASES: dict[str, tuple[str, ...]] = {
    "dataset": ("dataset", "datasets"),
    "data": ("data_dir", "datasets"),
    "steps": ("steps", "max_steps"),
    "seed": ("seed",),
    "out": ("out_dir", "output_dir"),
}


def _entry(name: str) -> TrainerEntry:
    if name not in TRAINERS:
        raise ConfigError(f"no trainer for tool {name!r}; trainable tools: {', '.join(sorted(TRAINERS))}")
    return TRAINERS[name]


def config_class(name: str) -> type:
    entry = _entry(name)
    return getattr(importlib.import_module(entry.module), entry.config_class)


def _coerce(field_type: Any, value: Any) -> Any:
    """Fit a CLI value to a field: a single name into a list/tuple field, JSON text into its value."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            pass
    origin = typing.get_origin(field_type) if not isinstance(field_type, str) else None
    text = str(field_type)
    wants_sequence = origin in (list, tuple) or text.startswith(("list[", "tuple[")) or "list[" in text.split("|")[0]
    if wants_sequence and isinstance(value, str):
        value = [value]
    if (origin is tuple or text.startswith("tuple[")) and isinstance(value, list):
        value = tuple(value)
    return value


def make_config(name: str, *, dataset: str | None = None, data: str | None = None, steps: int | None = None,
                seed: int | None = None, out: str | None = None, overrides: dict[str, str] | None = None) -> Any:
    """Build the trainer config of tool `name` from the common flags and `field=value` overrides."""
    cls = config_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = dict(_entry(name).fixed)
    common = {"dataset": dataset, "data": data, "steps": steps, "seed": seed, "out": out}
    for flag, value in common.items():
        if value is None:
            continue
        target = next((f for f in _ALIASES[flag] if f in fields), None)
        if target is None:
            raise ConfigError(f"--{flag} does not apply to the {name!r} trainer ({cls.__name__} has no such field)")
        values[target] = _coerce(fields[target].type, value)
    return config_from(cls, values, overrides)


def config_from(cls: type, values: dict[str, Any], overrides: dict[str, str] | None = None) -> Any:
    """Instantiate config dataclass `cls` from `values` plus `field=value` text overrides (checked by name)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = dict(values)
    for key, value in (overrides or {}).items():
        if key not in fields:
            raise ConfigError(f"--set {key}=...: {cls.__name__} has no field {key!r}; fields: {', '.join(sorted(fields))}")
        values[key] = _coerce(fields[key].type, value)
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{cls.__name__}: {exc}") from exc


def train(name: str, config: Any) -> Path:
    """Run the trainer of tool `name` with `config`; returns the best checkpoint folder it reports."""
    entry = _entry(name)
    fn = getattr(importlib.import_module(entry.module), entry.train_function)
    return Path(fn(config))
