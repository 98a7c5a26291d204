"""One parser core for actions: text messages with `<tool_call>{json}</tool_call>` blocks, and Dict actions.

Both paths end in `validate_call`, which checks a (name, arguments) pair against the fixed tool schema
(`medagent.envs.tool_specs.TOOL_SPECS`) and returns either a `ToolCall` with clean arguments or an
`InvalidCall` whose message becomes the error observation. Nothing here raises on bad input.

Message rules:
- every `<tool_call>...</tool_call>` block is one call, run in order (an unclosed last block counts too);
- a block that is not a JSON object with a string "name" becomes an `InvalidCall`;
- a message is *parseable* when at least one block yields a JSON object with a "name"; a message with no
  parseable block ends the episode with format 0 (TRL ends there too).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from medagent.envs.tool_specs import AUTO_MODELS, POINT_TYPES, TOOL_NAMES, ArgSpec, auto_models, spec_by_name  # noqa: F401 (AUTO_MODELS: re-exported)

#: Longest message text the parser reads; the rest is ignored (keeps adversarial inputs cheap).
MAX_MESSAGE_CHARS = 20_000
#: Longest JSON block the parser decodes.
MAX_BLOCK_CHARS = 2_000

_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)


@dataclass(frozen=True)
class ToolCall:
    """A validated call. Coordinates stay in the 0-999 frame (ints); `raw` is the text it came from."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    raw: str = ""

    def describe(self) -> str:
        """Short text such as `add_bbox(bbox_2d=[1, 2, 3, 4])` for the history."""
        args = ", ".join(f"{k}={json.dumps(v)}" for k, v in self.arguments.items())
        return f"{self.name}({args})"


@dataclass(frozen=True)
class InvalidCall:
    """A call that could not be parsed or validated; `error` says why (shown to the policy)."""

    name: str
    error: str
    raw: str = ""

    def describe(self) -> str:
        return f"{self.name or '?'}(...)"


@dataclass(frozen=True)
class ParsedMessage:
    """The calls found in one message, in order, and whether the message counts as parseable."""

    calls: list[ToolCall | InvalidCall]
    parseable: bool


def _short(text: str, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_message(text: Any) -> ParsedMessage:
    """Find and validate every tool call in a policy message (any object; non-strings are not parseable)."""
    if not isinstance(text, str):
        return ParsedMessage([], False)
    text = text[:MAX_MESSAGE_CHARS]
    calls: list[ToolCall | InvalidCall] = []
    parseable = False
    for match in _BLOCK.finditer(text):
        block = match.group(1).strip()
        if len(block) > MAX_BLOCK_CHARS:
            calls.append(InvalidCall("", f"tool call longer than {MAX_BLOCK_CHARS} characters", _short(block)))
            continue
        try:
            payload = json.loads(block)
        except (ValueError, RecursionError):
            calls.append(InvalidCall("", "tool call is not valid JSON", _short(block)))
            continue
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            calls.append(InvalidCall("", 'tool call must be a JSON object with a "name"', _short(block)))
            continue
        parseable = True
        arguments = payload.get("arguments", {})
        if isinstance(arguments, str):  # some chat templates serialise arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                pass
        calls.append(validate_call(payload["name"], arguments, raw=_short(block, 200)))
    return ParsedMessage(calls, parseable)


def _as_int(value: Any) -> int | None:
    """An integral coordinate, or None for wrong types (bools, strings, NaN, non-integral floats)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _coords(name: str, arg: ArgSpec, value: Any) -> list[int] | str:
    """The integers of a "coords" argument, or the error text."""
    key, n, low, high = arg.name, arg.length, arg.low, arg.high
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != n:
        return f"{name}: {key} must be a list of {n} integers in {low}-{high}, got {_short(json.dumps(value, default=str), 60)}"
    out = [_as_int(v) for v in value]
    if any(v is None for v in out):
        return f"{name}: {key} must hold integers in {low}-{high}, got {_short(json.dumps(value, default=str), 60)}"
    if any(not low <= v <= high for v in out):  # type: ignore[operator]
        return f"{name}: {key} values must lie in {low}-{high}, got {out}"
    return out  # type: ignore[return-value]


def _integer(name: str, arg: ArgSpec, value: Any) -> int | str:
    """The value of an "integer" argument, or the error text."""
    out = _as_int(value)
    if out is None or not arg.low <= out <= arg.high:
        return f"{name}: {arg.name} must be an integer in {arg.low}-{arg.high}, got {_short(json.dumps(value, default=str), 40)}"
    return out


def _choice(name: str, arg: ArgSpec, value: Any) -> str | None:
    """None when `value` is one of the argument's choices, else the error text."""
    if isinstance(value, str) and value in arg.choices:
        return None
    allowed = " or ".join(repr(c) for c in arg.choices) if len(arg.choices) == 2 else str(list(arg.choices))
    return f"{name}: {arg.name} must be {'' if len(arg.choices) == 2 else 'one of '}{allowed}, got {_short(repr(value), 40)}"


def validate_call(name: Any, arguments: Any, raw: str = "") -> ToolCall | InvalidCall:
    """Check a call against its `ToolSpec` (names, types, ranges, enums); never raises.

    Args:
        name: the tool name.
        arguments: a mapping of argument name -> value.
        raw: the source text, kept for the history.
    """
    spec = spec_by_name(name) if isinstance(name, str) else None
    if spec is None:
        return InvalidCall(_short(str(name), 40), f"unknown tool {_short(str(name), 40)!r}; tools: {', '.join(TOOL_NAMES)}", raw)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        return InvalidCall(name, f"{name}: arguments must be a JSON object", raw)
    expected = spec.arg_names
    extra = sorted(str(k) for k in arguments if k not in expected)
    missing = [k for k in expected if k not in arguments]
    if extra or missing:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {[_short(k, 30) for k in extra[:5]]}")
        return InvalidCall(name, f"{name}: {'; '.join(parts)}; it takes {list(expected) or 'no arguments'}", raw)
    clean: dict[str, Any] = {}
    for arg in spec.args:
        value = arguments[arg.name]
        if arg.kind in ("coords", "integer"):
            checked = _coords(name, arg, value) if arg.kind == "coords" else _integer(name, arg, value)
            if isinstance(checked, str):
                return InvalidCall(name, checked, raw)
            clean[arg.name] = checked
        else:
            error = _choice(name, arg, value)
            if error is not None:
                return InvalidCall(name, error, raw)
            clean[arg.name] = value
    if name == "add_bbox":  # the one rule across arguments: corners in order
        box = clean["bbox_2d"]
        if box[0] > box[2] or box[1] > box[3]:
            return InvalidCall(name, f"add_bbox: bbox_2d must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {box}", raw)
    return ToolCall(name, clean, raw)


def dict_action_to_call(action: Mapping[str, Any]) -> ToolCall | InvalidCall:
    """The Dict-action path: {"tool": index into TOOL_NAMES, "bbox_2d": (4,), "point_2d": (2,),
    "point_type": 0 positive / 1 negative, "model": index into auto_models(), "region": region number - 1}
    -> the same validation.

    Only the arguments of the chosen tool are read.
    """
    try:
        index = int(np.asarray(action["tool"]).item())
        name = TOOL_NAMES[index]
    except (KeyError, TypeError, ValueError, IndexError):
        return InvalidCall("", "Dict action needs 'tool', an index into " + ", ".join(TOOL_NAMES))
    arguments: dict[str, Any] = {}
    try:
        if name == "add_bbox":
            arguments["bbox_2d"] = [int(v) for v in np.asarray(action["bbox_2d"]).reshape(-1)]
        elif name == "add_point":
            arguments["point_2d"] = [int(v) for v in np.asarray(action["point_2d"]).reshape(-1)]
            arguments["point_type"] = POINT_TYPES[int(np.asarray(action["point_type"]).item())]
        elif name == "auto_segment":
            arguments["model"] = auto_models()[int(np.asarray(action["model"]).item())]
        elif name == "select_region":
            arguments["region"] = int(np.asarray(action["region"]).item()) + 1
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        return InvalidCall(name, f"Dict action for {name} has a missing or bad field: {_short(str(exc), 60)}")
    return validate_call(name, arguments, raw=json.dumps({"name": name, "arguments": arguments}))


def format_call(name: str, arguments: Mapping[str, Any] | None = None) -> str:
    """The message text of one call: `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>`.

    Byte for byte what the Qwen3-VL chat template (TRL's qwen3_vl.jinja, with transformers' `tojson`)
    renders for an assistant `tool_calls` entry, so SFT data written from agents and the calls TRL
    re-renders during GRPO read the same.
    """
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": dict(arguments or {})}) + "\n</tool_call>"
