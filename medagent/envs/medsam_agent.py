"""MedSAM-Agent's released prompt, read at run time from a local clone of its repository.

Its released policy (Saint-lsy/MedSAM-Agent-Qwen3-VL-8B-MedSAM2) was trained on a fixed system text and fixed
user-turn texts; `medagent` stores none of them (they are MedSAM-Agent's text) and reads them instead from the
inference code of a clone (github.com/CUHK-AIM-Group/MedSAM-Agent, `infer/models/model_loader.py`), the module
its `run_single_inference.py` and batch scripts use. The file is parsed, never imported or executed: each text is
a module-level string assignment (literals, implicit concatenation, and one f-string field that joins the tool
list), and the tool list is a literal (`ast.literal_eval`). docs/policy.md ("MedSAM-Agent's released policy")
lists what the texts say and how their format differs from medagent's.

    prompt = read_released_prompt("~/src/MedSAM-Agent")      # or MEDAGENT_MEDSAM_AGENT=~/src/MedSAM-Agent
    prompt.first_turn.format(target_description="lesion")
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError

#: Environment variable naming the clone (or the file) when no source is given.
SOURCE_ENV = "MEDAGENT_MEDSAM_AGENT"
#: The file of a clone that holds the prompt (its Qwen policy's inference wrapper).
SOURCE_FILE = Path("infer") / "models" / "model_loader.py"
#: Module-level names in that file: the tool list, the system text (tools pasted in), the first user turn
#: (a `str.format` template with `{target_description}`) and the user turn after every call.
NAMES = {"tools": "tools_json_v2", "system": "system_prompt_v2", "first_turn": "prompt_turn_1",
         "later_turn": "prompt_later_turn"}


@dataclass(frozen=True)
class ReleasedPrompt:
    """The texts of MedSAM-Agent's inference prompt (see the module docstring).

    Attributes:
        system: the system message, with the tool list inside it (their code passes no `tools=` to the template).
        tools: the tool list pasted into it (JSON-schema function dicts).
        first_turn: the first user turn's text, a `str.format` template with `{target_description}`.
        later_turn: the user turn's text after every call (shown with the image and its new mask).
        source: the file they were read from.
    """

    system: str
    tools: tuple[dict[str, Any], ...]
    first_turn: str
    later_turn: str
    source: str


def find_source(source: str | Path | None = None) -> Path:
    """The `model_loader.py` of `source` (a clone's root or the file itself; default: `$MEDAGENT_MEDSAM_AGENT`).

    Raises:
        ConfigError: no source given and the variable is unset, or the file does not exist.
    """
    if source is None:
        source = os.environ.get(SOURCE_ENV)
    if not source:
        raise ConfigError(
            "the medsam-agent prompt profile reads MedSAM-Agent's prompt from a clone of its repository "
            "(`git clone https://github.com/CUHK-AIM-Group/MedSAM-Agent`); pass its folder as --prompt-source "
            f"(prompt_source=) or set {SOURCE_ENV}")
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / SOURCE_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no such file; --prompt-source must be a MedSAM-Agent clone (holding {SOURCE_FILE}) "
                          "or that file")
    return path


def _assignments(tree: ast.Module) -> dict[str, ast.expr]:
    """Module-level `name = value` assignments (the last one wins, as at import)."""
    found: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    return found


def _text(node: ast.expr, tools_name: str, tools: tuple[dict[str, Any], ...], where: str) -> str:
    """The string an expression of literals builds; an f-string field may only join the tool list."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left, tools_name, tools, where) + _text(node.right, tools_name, tools, where)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                names = {n.id for n in ast.walk(value.value) if isinstance(n, ast.Name)}
                if tools_name not in names or value.format_spec is not None or value.conversion != -1:
                    raise ConfigError(f"{where}: an f-string field other than the joined tool list "
                                      f"({ast.unparse(value.value)[:60]}); this reader knows only that one")
                # their field writes one json.dumps(tool) per line
                parts.append("\n".join(json.dumps(tool) for tool in tools))
            else:
                parts.append(_text(value, tools_name, tools, where))
        return "".join(parts)
    raise ConfigError(f"{where}: not a string built from literals ({type(node).__name__}); has the file changed?")


def read_released_prompt(source: str | Path | None = None) -> ReleasedPrompt:
    """Parse MedSAM-Agent's prompt texts out of `source` (`find_source`); nothing is imported or executed.

    Raises:
        ConfigError: the file is missing, does not parse, or lacks one of `NAMES` as a string assignment.
    """
    path = find_source(source)
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot parse it as Python ({exc})") from exc
    found = _assignments(tree)
    missing = [name for name in NAMES.values() if name not in found]
    if missing:
        raise ConfigError(f"{path}: no module-level {', '.join(missing)}; this reader expects MedSAM-Agent's "
                          f"{SOURCE_FILE} (names {', '.join(NAMES.values())})")
    try:
        tools = tuple(ast.literal_eval(found[NAMES["tools"]]))
    except (ValueError, TypeError, SyntaxError) as exc:
        raise ConfigError(f"{path}: {NAMES['tools']} is not a literal list of tool dicts ({exc})") from exc
    if not all(isinstance(t, dict) and isinstance(t.get("function", {}).get("name"), str) for t in tools):
        raise ConfigError(f"{path}: {NAMES['tools']} must hold {{'type': 'function', 'function': {{'name': ...}}}} dicts")
    texts = {key: _text(found[name], NAMES["tools"], tools, f"{path}: {name}")
             for key, name in NAMES.items() if key != "tools"}
    return ReleasedPrompt(system=texts["system"], tools=tools, first_turn=texts["first_turn"],
                          later_turn=texts["later_turn"], source=str(path))
