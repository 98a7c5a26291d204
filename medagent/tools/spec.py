"""`ToolSpec`: one entry of the tool table (`medagent.tools.catalog`), naming the module that builds the tool."""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from medagent.tools.base import Tool, ToolKind

__all__ = ["ToolKind", "ToolSpec"]


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
