"""Training recipes: YAML files of `SFTRunConfig` / `GRPORunConfig` fields, and the entry points that run them
in one process or many (`accelerate launch ... -m medagent.train.sft|grpo`).

    from medagent.train.recipes import load_recipe, dry_run
    config = load_recipe("configs/sft/qwen3-vl-2b-lora.yaml", {"max_steps": 10})   # -> SFTRunConfig
    args, on_gpu = dry_run(config)     # the trl.SFTConfig it builds, and bf16 / checkpointing on a GPU

A recipe is a mapping of the run config's fields (TRL's names where the config passes them on to TRL, plus
`trl_kwargs` for any other TRL field) and two keys that are not fields:
    trainer       "sft" (SFTRunConfig, `medagent.train.sft`) or "grpo" (GRPORunConfig, `medagent.train.grpo`)
    accelerate    the accelerate config the recipe is meant to be launched with (`accelerate launch
                  --config_file ...`); documentation that `tests/test_recipes.py` parses, medagent never
                  launches anything itself
Values are read as the config.json of a run is (`config_io.config_from_mapping`: lists become tuples where a
field is a tuple, an unknown key is an error); `1e-5` is a number (YAML 1.2 floats). Flags override the file
and `--set FIELD=VALUE` overrides both.

Entry points (`python -m medagent.train.sft --help`): `--recipe FILE`, then every config field as a flag
(`max_steps` -> `--max-steps`, typed by the field), `--set FIELD=VALUE`, `--print-config` (print the config and
exit). Under `accelerate launch` accelerate sets the process group up (gloo on the CPU, NCCL on GPUs), TRL and
accelerate give each process its own shard of the rows or prompts, and only the main process writes the run
folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, Sequence

import yaml

from medagent.errors import ConfigError, DataError

#: trainer name -> (module, config class, run function, TRL config class)
TRAINERS: dict[str, tuple[str, str, str, str]] = {
    "sft": ("medagent.train.sft", "SFTRunConfig", "run_sft", "SFTConfig"),
    "grpo": ("medagent.train.grpo", "GRPORunConfig", "run_grpo", "GRPOConfig"),
}
#: recipe keys that are not config fields
RECIPE_KEYS = ("trainer", "accelerate")


def _trainer(kind: str) -> tuple[Any, type]:
    if kind not in TRAINERS:
        raise ConfigError(f"recipe trainer must be one of {sorted(TRAINERS)}, got {kind!r}")
    module = importlib.import_module(TRAINERS[kind][0])
    return module, getattr(module, TRAINERS[kind][1])


def config_class(kind: str) -> type:
    """`SFTRunConfig` for "sft", `GRPORunConfig` for "grpo"."""
    return _trainer(kind)[1]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 floats: `1e-5` is a number (YAML 1.1 reads it as text)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The recipe file as a mapping (`trainer`, `accelerate` and the config's fields), not yet checked.

    Raises:
        ConfigError: the file is missing, not YAML, not a mapping, or names no known trainer.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except OSError as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path}: expected a mapping of config fields, got {type(raw).__name__}")
    if raw.get("trainer") not in TRAINERS:
        raise ConfigError(f"recipe {path}: `trainer:` must be one of {sorted(TRAINERS)}, got {raw.get('trainer')!r}")
    return raw


def recipe_trainer(path: str | Path) -> str:
    """The recipe's `trainer:` ("sft" or "grpo")."""
    return read_recipe(path)["trainer"]


def _typed(cls: type, name: str, value: Any) -> Any:
    """Text in a field that is not plain text is parsed by the field's type (as a flag's text is)."""
    from medagent.train.config_io import field_types, parse_value

    hint = field_types(cls).get(name)
    if not isinstance(value, str) or hint is None or hint is str:
        return value
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint):
        return parse_value(cls, name, value) if value.strip().lower() in ("none", "null") else value
    try:
        return parse_value(cls, name, value)
    except ValueError as exc:
        raise ConfigError(f"{cls.__name__}.{name}={value!r}: {exc}") from None


def load_recipe(path: str | Path, values: dict[str, Any] | None = None, overrides: dict[str, str] | None = None,
                *, trainer: str | None = None) -> Any:
    """The run config of recipe `path`, with `values` (typed, e.g. from flags) and then `overrides`
    (`--set` text, typed by the field) on top.

    Args:
        trainer: the trainer the caller runs ("sft" / "grpo"); a recipe for the other one is an error.

    Raises:
        ConfigError: unknown fields, bad values, or a recipe for another trainer.
    """
    raw = read_recipe(path)
    if trainer is not None and raw["trainer"] != trainer:
        raise ConfigError(f"recipe {path} is a {raw['trainer']} recipe; run it with `{raw['trainer']}` "
                          f"(medagent train {raw['trainer']} / python -m medagent.train.{raw['trainer']}), not {trainer}")
    return build_config(raw["trainer"], {k: v for k, v in raw.items() if k not in RECIPE_KEYS}, values, overrides,
                        source=f"recipe {path}")


def build_config(kind: str, base: dict[str, Any], values: dict[str, Any] | None = None,
                 overrides: dict[str, str] | None = None, *, source: str = "command line") -> Any:
    """The `kind` run config from `base` (JSON-like values), then `values`, then `overrides` (field=text)."""
    from medagent.train.config_io import config_from_mapping, field_types, parse_value

    cls = config_class(kind)
    names = field_types(cls)
    merged = {k: _typed(cls, k, v) for k, v in base.items()}
    for key, value in (values or {}).items():
        if key not in names:
            raise ConfigError(f"{cls.__name__} has no field {key!r}")
        merged[key] = value
    for key, text in (overrides or {}).items():
        if key not in names:
            raise ConfigError(f"--set {key}=...: {cls.__name__} has no field {key!r}; fields: {', '.join(names)}")
        try:
            merged[key] = parse_value(cls, key, text)
        except ValueError as exc:
            raise ConfigError(f"--set {key}={text}: {exc}") from None
    return config_from_mapping(cls, merged, source)


def accelerate_config_path(recipe: str | Path) -> Path | None:
    """The recipe's `accelerate:` file: as written (relative to the current folder, like the recipe's other
    paths), else relative to the folder holding the recipe's `configs/` tree; None when the recipe names none."""
    raw = read_recipe(recipe)
    name = raw.get("accelerate")
    if not name:
        return None
    path = Path(name)
    if path.exists() or path.is_absolute():
        return path
    for parent in Path(recipe).resolve().parents:
        if (parent / path).exists():
            return parent / path
    return path


def load_accelerate_config(path: str | Path) -> Any:
    """accelerate's own reading of an accelerate config file (`ClusterConfig`, as `accelerate launch
    --config_file` reads it): an unknown key or a bad value fails here, without a GPU."""
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        return load_config_from_file(str(path))
    except (OSError, TypeError, ValueError) as exc:
        raise ConfigError(f"accelerate config {path}: {exc}") from exc


def dry_run(config: Any) -> tuple[Any, dict[str, Any]]:
    """Build the TRL arguments a run of `config` trains with, without a GPU or a model.

    Returns the `trl.SFTConfig` / `trl.GRPOConfig` (constructed with use_cpu=True and bf16=False, so it builds
    on any machine) and the device fields the run would use on a bf16 GPU (`use_cpu`, `bf16`, `checkpointing`:
    activation checkpointing, as `common_trl_fields` derives them for CUDA; a `device: cpu` config gets its
    CPU fields).

    Raises:
        ConfigError: a field TRL refuses (an unknown `trl_kwargs` key, a batch that is not a multiple of the
            group, ...).
    """
    import trl

    from medagent.train.trl_common import build_trl_config

    kind = next(k for k, (_, name, _, _) in TRAINERS.items() if type(config).__name__ == name)
    module, _ = _trainer(kind)
    out = Path(tempfile.gettempdir()) / "medagent-dry-run"
    extra: tuple[Any, ...] = ()
    if kind == "grpo":
        from medagent.envs.config import EnvConfig

        extra = (EnvConfig(**config.env).max_turns,)
    from medagent.train.trl_common import checkpointing_field

    gpu = config.device != "cpu"  # "auto" and "cuda": what a bf16 GPU machine would run
    fields = module.trl_fields(config, out, *extra, cuda=gpu, bf16_supported=gpu)
    on_gpu = {"use_cpu": fields["use_cpu"], "bf16": fields["bf16"], "checkpointing": fields[checkpointing_field()]}
    args = build_trl_config(getattr(trl, TRAINERS[kind][3]), {**fields, "use_cpu": True, "bf16": False})
    return args, on_gpu


# ------------------------------------------------------------------------------------- python -m entry points
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser(kind: str) -> argparse.ArgumentParser:
    """`python -m medagent.train.<kind>`'s arguments: --recipe, one flag per config field, --set, --print-config."""
    from medagent.train.config_io import field_default, field_help, field_types

    cls = config_class(kind)
    parser = argparse.ArgumentParser(
        prog=f"python -m medagent.train.{kind}",
        description=f"Train the policy ({kind.upper()}, {cls.__name__}) in this process, or in every process of "
                    f"`accelerate launch [--config_file configs/accelerate/...] -m medagent.train.{kind} ...`. "
                    "Values: the recipe, then the flags, then --set.")
    parser.add_argument("--recipe", metavar="FILE", help="A YAML recipe (configs/...); flags override it.")
    parser.add_argument("--set", dest="set_", action="append", default=[], metavar="FIELD=VALUE",
                        help="Any field as text: --set learning_rate=1e-4 (repeatable; wins over the flags).")
    parser.add_argument("--print-config", action="store_true", help="Print the resulting config as JSON and exit.")
    helps = field_help(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name, hint in field_types(cls).items():
        default = field_default(fields[name])
        shown = "" if default is dataclasses.MISSING else f" [default: {default!r}]"
        kwargs: dict[str, Any] = {"dest": name, "default": None, "metavar": "VALUE",
                                  "help": (helps.get(name, "") + shown).replace("%", "%%")}
        if hint is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        parser.add_argument(_flag(name), **kwargs)
    return parser


def config_from_argv(kind: str, argv: Sequence[str] | None = None) -> tuple[Any, argparse.Namespace]:
    """The run config named by command-line arguments (`build_parser`), and the parsed arguments."""
    from medagent.train.config_io import field_types, parse_value

    parser = build_parser(kind)
    ns = parser.parse_args(argv)
    cls = config_class(kind)
    values: dict[str, Any] = {}
    for name in field_types(cls):
        text = getattr(ns, name)
        if text is None:
            continue
        try:
            values[name] = parse_value(cls, name, text)
        except ValueError as exc:
            parser.error(f"{_flag(name)} {text}: {exc}")
    overrides: dict[str, str] = {}
    for item in ns.set_:
        if "=" not in item:
            parser.error(f"--set expects FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value
    if ns.recipe:
        config = load_recipe(ns.recipe, values, overrides, trainer=kind)
    else:
        config = build_config(kind, {}, values, overrides)
    return config, ns


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(kind: str, argv: Sequence[str] | None = None) -> int:
    """`python -m medagent.train.sft|grpo`: build the config, train, print the run folder (main process)."""
    from medagent.train.trl_common import jsonable

    try:
        config, ns = config_from_argv(kind, argv)
        if ns.print_config:
            if _is_main_process():
                print(json.dumps(jsonable(dataclasses.asdict(config)), indent=2))
            return 0
        module, _ = _trainer(kind)
        folder = getattr(module, TRAINERS[kind][2])(config)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if _is_main_process():
        print(f"{kind.upper()} run folder: {folder} (policy in {folder / 'model'})")
    return 0
