"""Where the environment gets its segmentation tools: injected objects first, then the registry, lazily.

`ToolProvider.get(key)` returns a `Tool` or raises `ToolUnavailable` with a message fit for the policy.
A failed load is remembered, so an unavailable tool costs one attempt per provider, not one per call.
Keys are registry names ("sam", "unet", "refine", "cps", ...); automatic segmenters are built for the
episode's dataset (`load_tool(name, dataset=...)`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from medagent.errors import ToolUnavailable
from medagent.tools.base import Tool

ToolSource = Tool | Callable[[], Any] | Any


class ToolProvider:
    """Lazy, cached access to tools.

    Args:
        tools: name -> a tool object (anything with `predict`) or a zero-argument factory; these win over
            the registry. A name mapped to None is unavailable.
        load: also build missing tools from `medagent.tools.load_tool` (False: only `tools`).
        dataset: dataset name passed to automatic segmenters (`load_tool(name, dataset=...)`).
    """

    def __init__(self, tools: Mapping[str, ToolSource | None] | None = None, load: bool = True, dataset: str | None = None) -> None:
        self._given = dict(tools or {})
        self.load = load
        self.dataset = dataset
        self._cache: dict[str, Any] = {}
        self._failed: dict[str, str] = {}

    def get(self, key: str, automatic: bool = False) -> Any:
        """The tool called `key`; `automatic` passes the dataset name to the registry builder."""
        if key in self._cache:
            return self._cache[key]
        if key in self._failed:
            raise ToolUnavailable(self._failed[key])
        try:
            tool = self._build(key, automatic)
        except Exception as exc:  # noqa: BLE001 - any failure to build means "unavailable" to the policy
            message = f"{key} is unavailable here: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}"
            self._failed[key] = message
            raise ToolUnavailable(message) from exc
        self._cache[key] = tool
        return tool

    def available(self, key: str, automatic: bool = False) -> bool:
        """True when `get(key)` succeeds (loads the tool on first call)."""
        try:
            self.get(key, automatic)
            return True
        except ToolUnavailable:
            return False

    def _build(self, key: str, automatic: bool) -> Any:
        if key in self._given:
            source = self._given[key]
            if source is None:
                raise ToolUnavailable(f"tool {key!r} is switched off")
            if hasattr(source, "predict"):
                return source
            if callable(source):
                return source()
            raise ToolUnavailable(f"tool {key!r} was given as {type(source).__name__}, which has no predict()")
        if not self.load:
            raise ToolUnavailable(f"tool {key!r} was not given to the environment")
        from medagent.tools import load_tool

        config = {"dataset": self.dataset} if (automatic and self.dataset) else {}
        return load_tool(key, **config)
