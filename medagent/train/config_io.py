"""Trainer configs in and out of text: field documentation, values typed from text, saved config.json.

The one place that reads a trainer config from outside Python:
    field_help(cls)             each field's documentation, from the "Attributes:" section of the config's
                                docstring (the help text of its `medagent train tool` flag)
    parse_value(cls, name, s)   a flag's or `--set`'s text as the field's type (int, float, bool, None,
                                comma-separated or JSON lists, JSON objects)
    load_config(cls, path)      a config.json written by an earlier run, with renamed fields mapped to their
                                current names (`RENAMED_FIELDS`, `upgrade_keys`); resume reads saved configs
                                through `upgrade_keys` too
    config_from_mapping(cls, d) the same from a dict already read (a YAML recipe: `medagent.train.recipes`)
The trainers behind `medagent train tool` use TRL's names: `max_steps` for optimisation steps and
`output_dir` for the run folder, and so do the policy's (`SFTRunConfig`, `GRPORunConfig`, `PolicyRecipeConfig`).
Runs written before the rename say `steps` and `out_dir`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError

#: old key -> current field name, per config class (by class name, so reading needs no trainer import).
#: The refiner's `steps` were its default reverse (sampling) steps, never optimisation steps.
RENAMED_FIELDS: dict[str, dict[str, str]] = {
    "ToolTrainerConfig": {"steps": "max_steps", "out_dir": "output_dir"},
    "SamTrainerConfig": {"steps": "max_steps", "out_dir": "output_dir"},
    "CTTASourceConfig": {"steps": "max_steps", "out_dir": "output_dir"},
    "RefinerTrainerConfig": {"steps": "reverse_steps"},
    "SFTRunConfig": {"out_dir": "output_dir"},
    "GRPORunConfig": {"out_dir": "output_dir"},
    "PolicyRecipeConfig": {"out_dir": "output_dir"},
}
#: keys a trainer writes into its config.json next to the fields (the refiner's "command")
_NOT_FIELDS = ("command",)


def upgrade_keys(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` (a saved config of `cls`) with renamed fields under their current names."""
    renamed = RENAMED_FIELDS.get(cls.__name__, {})
    out: dict[str, Any] = {}
    for key, value in values.items():
        new = renamed.get(key, key)
        if new != key and new in values:
            raise ConfigError(f"{cls.__name__}: saved config has both {key!r} (the old name) and {new!r}")
        out[new] = value
    return out


def load_config(cls: type, path: str | Path) -> Any:
    """The `cls` instance saved in `path` (a config.json, or a run folder holding one); old keys are renamed."""
    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read a {cls.__name__} from {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object of {cls.__name__} fields")
    return config_from_mapping(cls, {k: v for k, v in raw.items() if k not in _NOT_FIELDS}, str(path))


def config_from_mapping(cls: type, raw: dict[str, Any], source: str) -> Any:
    """The `cls` instance from JSON-like values (a saved config.json, a YAML recipe): old keys renamed, unknown
    keys refused, lists made tuples where the field (or a nested dataclass's field) is a tuple.

    Raises:
        ConfigError: an unknown field, or values `cls` refuses; the message starts with `source`.
    """
    values = upgrade_keys(cls, raw)
    hints = field_types(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"{source}: {cls.__name__} has no field(s) {unknown}")
    values = {k: _from_json(hints[k], v) for k, v in values.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"{source}: {cls.__name__}: {exc}") from exc


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type annotation, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


#: an "Attributes:" entry: `name: text`, `a / b: text`, `a, b, c: text`, `name [default]: text`
_ENTRY = re.compile(r"^(?P<names>[A-Za-z_]\w*(?:\s*[/,]\s*[A-Za-z_]\w*)*)(?:\s*\[[^\]]*\])?\s*:\s*(?P<text>.*)$")


def field_help(cls: type) -> dict[str, str]:
    """Each documented field's text from the "Attributes:" section of `cls`'s docstring (Google style).

    An entry may document several fields (`batch_size, lr, weight_decay: ...`, `a / b: ...`); continuation
    lines are indented deeper than the entries.
    """
    helps: dict[str, str] = {}
    for base in reversed(cls.__mro__[1:]):  # a base's fields (e.g. `PolicyRunCommon`) are documented there
        if base is not object and base.__doc__:
            helps.update(_own_field_help(base))
    return {**helps, **_own_field_help(cls)}


def _own_field_help(cls: type) -> dict[str, str]:
    """`field_help` of the fields `cls`'s own docstring documents."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("Attributes")), None)
    if start is None:
        return {}
    helps: dict[str, str] = {}
    current: list[str] = []
    indent = None
    for line in lines[start + 1:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        if depth == indent:
            match = _ENTRY.match(line.strip())
            if match is None:
                break
            current = re.split(r"\s*[/,]\s*", match["names"])
            for name in current:
                helps[name] = match["text"].strip()
        else:
            for name in current:
                helps[name] += " " + line.strip()
    return helps


# ---------------------------------------------------------------------------------------------- text -> value
def parse_value(cls: type, name: str, text: str) -> Any:
    """Field `name` of `cls` from command-line text; ValueError says what was expected."""
    hints = field_types(cls)
    if name not in hints:
        raise ConfigError(f"{cls.__name__} has no field {name!r}; fields: {', '.join(hints)}")
    return _parse(hints[name], text)


_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _parse(hint: Any, text: str) -> Any:
    text = text.strip()
    if _is_union(hint):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(options) < len(typing.get_args(hint)) and text.lower() in _NONE:
            return None
        errors = []
        for option in options:
            try:
                return _parse(option, text)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(" or ".join(errors) + (" or none" if len(options) < len(typing.get_args(hint)) else ""))
    origin = typing.get_origin(hint)
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected true or false, got {text!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"expected an integer, got {text!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"expected a number, got {text!r}") from None
    if hint is str:
        return text
    if origin in (list, tuple):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, list):  # "a,b" or "[a, b]" with bare words
            bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
            value = [item.strip() for item in bare.split(",")] if bare.strip() else []
        return _sequence(hint, value)
    if origin is dict or hint is dict or dataclasses.is_dataclass(hint):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object such as '{{\"key\": 1}}', got {text!r}")
        return value
    try:  # anything else (Any): JSON when it parses, else the text
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _sequence(hint: Any, items: list) -> Any:
    """`items` (text or JSON values) as the list/tuple `hint`, each element typed."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} values, got {len(items)}")
        element_types = list(args)
    else:
        element_types = [args[0] if args else Any] * len(items)
    values = [_element(t, item) for t, item in zip(element_types, items)]
    return tuple(values) if origin is tuple else values


def _element(hint: Any, item: Any) -> Any:
    if isinstance(item, str):
        return _parse(hint, item)
    if hint is int and (isinstance(item, bool) or not isinstance(item, int)):
        raise ValueError(f"expected an integer, got {item!r}")
    if hint is float and not isinstance(item, bool) and isinstance(item, (int, float)):
        return float(item)
    return item


def _from_json(hint: Any, value: Any) -> Any:
    """A value read from JSON in the field's shape: lists become tuples where the field is a tuple, also inside
    a nested dataclass given as an object (which stays a dict: the config's `__post_init__` builds it)."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if isinstance(value, list):
        if any(typing.get_origin(o) is tuple for o in options):
            return tuple(value)
    if isinstance(value, dict):
        nested = next((o for o in options if dataclasses.is_dataclass(o)), None)
        if nested is not None:
            hints = field_types(nested)
            return {k: _from_json(hints[k], v) if k in hints else v for k, v in value.items()}
    return value
