"""One parser core for actions: text messages with `<tool_call>{json}</tool_call>` blocks, and Dict actions.

Both paths end in `validate_call`, which checks a (name, arguments) pair against the fixed tool schema
(DESIGN.md, "The environment contract") and returns either a `ToolCall` with clean arguments or an
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

#: The tools of the environment, in schema order (alphabetical, as TRL lists an environment's methods).
TOOL_NAMES = ("adapt", "add_bbox", "add_point", "auto_segment", "cps", "refine", "stop_action", "undo")
#: Automatic segmenters `auto_segment` can run.
AUTO_MODELS = ("unet", "ifunet", "allukan")
POINT_TYPES = ("positive", "negative")
#: Longest message text the parser reads; the rest is ignored (keeps adversarial inputs cheap).
MAX_MESSAGE_CHARS = 20_000
#: Longest JSON block the parser decodes.
MAX_BLOCK_CHARS = 2_000

_ARGUMENTS: dict[str, tuple[str, ...]] = {
    "adapt": (),
    "add_bbox": ("bbox_2d",),
    "add_point": ("point_2d", "point_type"),
    "auto_segment": ("model",),
    "cps": (),
    "refine": (),
    "stop_action": (),
    "undo": (),
}

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


def _coords(name: str, key: str, value: Any, n: int) -> list[int] | str:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != n:
        return f"{name}: {key} must be a list of {n} integers in 0-999, got {_short(json.dumps(value, default=str), 60)}"
    out = [_as_int(v) for v in value]
    if any(v is None for v in out):
        return f"{name}: {key} must hold integers in 0-999, got {_short(json.dumps(value, default=str), 60)}"
    if any(not 0 <= v <= 999 for v in out):  # type: ignore[operator]
        return f"{name}: {key} values must lie in 0-999, got {out}"
    return out  # type: ignore[return-value]


def validate_call(name: Any, arguments: Any, raw: str = "") -> ToolCall | InvalidCall:
    """Check a call against the tool schema; never raises.

    Args:
        name: the tool name.
        arguments: a mapping of argument name -> value.
        raw: the source text, kept for the history.
    """
    if not isinstance(name, str) or name not in _ARGUMENTS:
        return InvalidCall(_short(str(name), 40), f"unknown tool {_short(str(name), 40)!r}; tools: {', '.join(TOOL_NAMES)}", raw)
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        return InvalidCall(name, f"{name}: arguments must be a JSON object", raw)
    expected = _ARGUMENTS[name]
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
    if name == "add_bbox":
        box = _coords(name, "bbox_2d", arguments["bbox_2d"], 4)
        if isinstance(box, str):
            return InvalidCall(name, box, raw)
        if box[0] > box[2] or box[1] > box[3]:
            return InvalidCall(name, f"add_bbox: bbox_2d must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {box}", raw)
        clean["bbox_2d"] = box
    elif name == "add_point":
        point = _coords(name, "point_2d", arguments["point_2d"], 2)
        if isinstance(point, str):
            return InvalidCall(name, point, raw)
        kind = arguments["point_type"]
        if kind not in POINT_TYPES:
            return InvalidCall(name, f"add_point: point_type must be 'positive' or 'negative', got {_short(repr(kind), 40)}", raw)
        clean["point_2d"], clean["point_type"] = point, kind
    elif name == "auto_segment":
        model = arguments["model"]
        if model not in AUTO_MODELS:
            return InvalidCall(name, f"auto_segment: model must be one of {list(AUTO_MODELS)}, got {_short(repr(model), 40)}", raw)
        clean["model"] = model
    return ToolCall(name, clean, raw)


def dict_action_to_call(action: Mapping[str, Any]) -> ToolCall | InvalidCall:
    """The Dict-action path: {"tool": index into TOOL_NAMES, "bbox_2d": (4,), "point_2d": (2,),
    "point_type": 0 positive / 1 negative, "model": index into AUTO_MODELS} -> the same validation.

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
            arguments["model"] = AUTO_MODELS[int(np.asarray(action["model"]).item())]
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
