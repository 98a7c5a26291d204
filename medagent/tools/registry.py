"""A plain dict registry of tool builders (like segment-anything's `sam_model_registry`).

Each entry knows how to build its tool with the shipped weights (the embedded default) or from a
user's checkpoint. Tool modules register themselves on import; `medagent.tools` imports them lazily so
`medagent tool list` does not import torch.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from medagent.errors import ToolError, ToolUnavailable
from medagent.tools.base import Tool, ToolKind


@dataclass(frozen=True)
class ToolSpec:
    """A registry entry.

    Attributes:
        name: the name used in the CLI and the environment.
        kind: what the tool needs besides the image.
        summary: one line for `medagent tool list`.
        module: import path of the module that defines the builder (imported on first use).
        builder: attribute name of `build(checkpoint: str | None = None, **config) -> Tool` in `module`.
        weights: name of the shipped weights folder under medagent/weights/, or None.
    """

    name: str
    kind: ToolKind
    summary: str
    module: str
    builder: str = "build"
    weights: str | None = None

    def build(self, checkpoint: str | None = None, **config: Any) -> Tool:
        """Import the module and call its builder. Config keys the builder does not take are dropped, so a
        caller can pass context (e.g. `dataset=`) to every tool alike; None values mean "default"."""
        builder = getattr(importlib.import_module(self.module), self.builder)
        params = inspect.signature(builder).parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        config = {k: v for k, v in config.items() if v is not None and (takes_any or k in params)}
        return builder(checkpoint=checkpoint, **config)


TOOL_REGISTRY: dict[str, ToolSpec] = {}


def register_tool(spec: ToolSpec) -> ToolSpec:
    """Add a tool to the registry (names are unique)."""
    if spec.name in TOOL_REGISTRY and TOOL_REGISTRY[spec.name] != spec:
        raise ToolError(f"tool name {spec.name!r} is registered twice")
    TOOL_REGISTRY[spec.name] = spec
    return spec


def list_tools() -> list[ToolSpec]:
    _register_builtin()
    return sorted(TOOL_REGISTRY.values(), key=lambda s: s.name)


def get_spec(name: str) -> ToolSpec:
    _register_builtin()
    if name not in TOOL_REGISTRY:
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(sorted(TOOL_REGISTRY))}")
    return TOOL_REGISTRY[name]


#: Tool kinds whose shipped weights are per dataset (`dataset=` picks them); other kinds ignore `dataset`.
PER_DATASET_KINDS = (ToolKind.AUTOMATIC, ToolKind.ADAPTIVE)


def load_tool(name: str, checkpoint: str | None = None, **config: Any) -> Tool:
    """Build tool `name` with its shipped weights, or from `checkpoint` (a folder or file) when given.

    `dataset=` selects per-dataset weights for automatic and adaptive tools; other tools ignore it, so
    callers may pass it to every tool alike.
    """
    spec = get_spec(name)
    if spec.kind not in PER_DATASET_KINDS:
        config.pop("dataset", None)
    try:
        return spec.build(checkpoint=checkpoint, **config)
    except ModuleNotFoundError as exc:  # an optional dependency is missing
        raise ToolUnavailable(f"tool {name!r} needs the package {exc.name!r}, which is not installed") from exc


def _register_builtin() -> None:
    """Register the tools that ship with medagent (cheap: no heavy imports)."""
    from medagent.tools import catalog  # noqa: F401  (registers on import)
