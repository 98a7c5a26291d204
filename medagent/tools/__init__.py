"""Segmentation tools: one protocol (`Tool`, `Prediction`), a registry, one module per method.

    from medagent.tools import load_tool
    tool = load_tool("otsu")
    prediction = tool.predict(case)
"""

from medagent.tools.base import Prediction, Tool, ToolKind
from medagent.tools.registry import TOOL_REGISTRY, ToolSpec, get_spec, list_tools, load_tool, register_tool

__all__ = ["Prediction", "Tool", "ToolKind", "ToolSpec", "TOOL_REGISTRY", "get_spec", "list_tools", "load_tool", "register_tool"]
