"""The tool registry: a plain dict from name to `ToolSpec` (like segment-anything's `sam_model_registry`).

It starts as the shipped table (`medagent.tools.catalog.BUILTIN_TOOLS`); `register_tool` adds a user's tool.
Each entry builds its tool with the shipped weights (the embedded default) or from a user's checkpoint; the
module that defines a builder is imported on first use, so `medagent tool list` does not import torch.
"""

from __future__ import annotations

from typing import Any

from medagent.errors import ToolError, ToolUnavailable
from medagent.tools.base import Tool, ToolKind
from medagent.tools.catalog import BUILTIN_TOOLS
from medagent.tools.spec import ToolSpec

TOOL_REGISTRY: dict[str, ToolSpec] = {spec.name: spec for spec in BUILTIN_TOOLS}


def register_tool(spec: ToolSpec) -> ToolSpec:
    """Add a tool to the registry (names are unique)."""
    if spec.name in TOOL_REGISTRY and TOOL_REGISTRY[spec.name] != spec:
        raise ToolError(f"tool name {spec.name!r} is registered twice")
    TOOL_REGISTRY[spec.name] = spec
    return spec


def list_tools() -> list[ToolSpec]:
    """Every registered tool, by name."""
    return sorted(TOOL_REGISTRY.values(), key=lambda s: s.name)


def get_spec(name: str) -> ToolSpec:
    """The entry of tool `name` (ToolError naming the registered tools if there is none)."""
    if name not in TOOL_REGISTRY:
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(sorted(TOOL_REGISTRY))}")
    return TOOL_REGISTRY[name]


#: Tool kinds whose shipped weights are per dataset (`dataset=` picks them); other kinds ignore `dataset`.
PER_DATASET_KINDS = (ToolKind.AUTOMATIC, ToolKind.ADAPTIVE)


def load_tool(name: str, checkpoint: str | None = None, **config: Any) -> Tool:
    """Build tool `name` with its shipped weights, or from `checkpoint` when given: a local checkpoint folder
    (or a file in it; `sam` also takes an official `.pth`) or a Hugging Face Hub id `hf://owner/name[@revision]`
    (`medagent.tools.checkpoint`).

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

