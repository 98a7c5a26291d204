"""The tools that ship with medagent. Each line registers one; the module is imported on first use."""

from medagent.tools.base import ToolKind
from medagent.tools.registry import ToolSpec, register_tool

register_tool(ToolSpec(
    name="otsu",
    kind=ToolKind.AUTOMATIC,
    summary="Intensity baseline: multi-Otsu thresholds (k-means fallback), classes ordered by mean intensity. The floor of bench tables.",
    module="medagent.tools.intensity_baseline",
))
