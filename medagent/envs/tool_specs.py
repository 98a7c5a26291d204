"""The environment's tools, each declared once: name, one-line description, typed arguments.

Everything that needs to know the tools derives from `TOOL_SPECS`:
- `medagent.envs.parsing.validate_call` checks calls against it (argument names, types, ranges, enums);
- `tool_schema()` is the JSON schema given to `apply_chat_template(tools=...)` on every path;
- `medagent.envs.trl_adapter` builds the methods TRL turns into tools from it, and a test holds
  transformers' `get_json_schema` of those methods equal to `tool_schema()`.
`tool_specs()` is `TOOL_SPECS` with `auto_segment`'s model enum extended by the automatic tools registered from
outside medagent (`auto_models()`: `medagent.tools` entry points, `register_tool`); with none it is `TOOL_SPECS`.

Names and argument shapes are MedSAM-Agent's (`add_bbox`, `add_point`, `stop_action`) plus medagent's
tools (DESIGN.md, "The environment contract"); coordinates are integers in the 0-999 frame. `select_region`
prompts SAM with the box of a region a tool answer listed (`medagent.envs.regions`) by its number: choosing a
region is one token, where copying its box is four (docs/policy.md, approach 8).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

FRAME_HINT = "integers in a 0-999 frame relative to the image width and height"


@dataclass(frozen=True)
class ArgSpec:
    """One argument of a tool.

    Attributes:
        name: argument name as written in the call's JSON.
        kind: "coords" (a list of `length` integers in [low, high]), "integer" (one integer in [low, high]) or
            "choice" (one string of `choices`).
        description: one line shown to the policy in the schema.
        length: number of integers of a "coords" argument.
        low / high: inclusive range of each integer.
        choices: allowed values of a "choice" argument.
    """

    name: str
    kind: Literal["coords", "integer", "choice"]
    description: str
    length: int = 0
    low: int = 0
    high: int = 999
    choices: tuple[str, ...] = ()

    def json_schema(self) -> dict[str, Any]:
        """The JSON-schema property, in the layout transformers' `get_json_schema` writes."""
        if self.kind == "coords":
            return {"type": "array", "items": {"type": "integer"}, "description": self.description}
        if self.kind == "integer":
            return {"type": "integer", "description": self.description}
        return {"type": "string", "enum": list(self.choices), "description": self.description}


@dataclass(frozen=True)
class ToolSpec:
    """One tool: its name, one-line description and arguments (in call order)."""

    name: str
    description: str
    args: tuple[ArgSpec, ...] = ()

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args)

    def json_schema(self) -> dict[str, Any]:
        """{"type": "function", "function": {name, description, parameters}} (transformers' layout)."""
        parameters: dict[str, Any] = {"type": "object", "properties": {a.name: a.json_schema() for a in self.args}}
        if self.args:
            parameters["required"] = list(self.arg_names)
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": parameters}}


#: Automatic segmenters `auto_segment` can run (frozen: the schema the shipped policy was trained on); automatic
#: tools from outside medagent join them at run time (`auto_models()`).
AUTO_MODELS = ("unet", "ifunet", "allukan")
POINT_TYPES = ("positive", "negative")

#: The tools, in schema order (alphabetical: the order TRL lists an environment's methods).
TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec("adapt", "Adapt the automatic segmenter to this image at test time (MGIPT) and segment the target with it."),
    ToolSpec("add_bbox", "Prompt the interactive segmenter with a box around the target; a new box replaces the previous one.", (
        ArgSpec("bbox_2d", "coords", f"The box [x1, y1, x2, y2] as {FRAME_HINT}, corners included.", length=4),
    )),
    ToolSpec("add_point", "Prompt the interactive segmenter with a click; all clicks so far and the box are used together.", (
        ArgSpec("point_2d", "coords", f"The point [x, y] as {FRAME_HINT}.", length=2),
        ArgSpec("point_type", "choice", '"positive" for a point on the target, "negative" for a point that must be excluded.',
                choices=POINT_TYPES),
    )),
    ToolSpec("auto_segment", "Segment the target with a trained automatic segmentation model, replacing the current mask.", (
        ArgSpec("model", "choice", "Which model to run.", choices=AUTO_MODELS),
    )),
    ToolSpec("cps", "Segment the target few-shot from reference images of the same structure (conditional point sparsification)."),
    ToolSpec("refine", "Refine the current mask with the diffusion refiner."),
    ToolSpec("select_region", "Prompt the interactive segmenter with the box of one region of the current mask, as answers list them.", (
        ArgSpec("region", "integer", "The region's number in the last answer's list (1 is nearest the top-left).", low=1, high=9),
    )),
    ToolSpec("stop_action", "Finish: the current mask is the answer."),
    ToolSpec("undo", "Go back to the mask (and prompts) before the last change."),
)

SPECS_BY_NAME: dict[str, ToolSpec] = {spec.name: spec for spec in TOOL_SPECS}
#: The tools of the environment, in schema order.
TOOL_NAMES: tuple[str, ...] = tuple(SPECS_BY_NAME)


def auto_models() -> tuple[str, ...]:
    """The `auto_segment` models: `AUTO_MODELS`, then every automatic tool the registry holds from outside
    medagent (a `medagent.tools` entry point of an installed package, or `register_tool`), by name. With no such
    tool this is `AUTO_MODELS` and the schema is the frozen one."""
    from medagent.tools.base import ToolKind
    from medagent.tools.registry import external_tools

    extra = [name for name, spec in external_tools().items() if spec.kind is ToolKind.AUTOMATIC and name not in AUTO_MODELS]
    return AUTO_MODELS + tuple(extra)


def tool_specs() -> tuple[ToolSpec, ...]:
    """`TOOL_SPECS` with the `auto_segment` model enum of `auto_models()` (`TOOL_SPECS` itself when it adds none)."""
    models = auto_models()
    if models == AUTO_MODELS:
        return TOOL_SPECS
    return tuple(replace(spec, args=tuple(replace(a, choices=models) if a.name == "model" else a for a in spec.args))
                 if spec.name == "auto_segment" else spec for spec in TOOL_SPECS)


def spec_by_name(name: str) -> ToolSpec | None:
    """The declaration of tool `name` as `tool_specs()` has it, or None."""
    if name == "auto_segment":
        return next(spec for spec in tool_specs() if spec.name == name)
    return SPECS_BY_NAME.get(name)


def tool_schema() -> list[dict[str, Any]]:
    """JSON schemas of every tool, in schema order: what `apply_chat_template(tools=...)` renders."""
    return [spec.json_schema() for spec in tool_specs()]
