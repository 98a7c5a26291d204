"""The tool registry: a plain dict from name to `ToolSpec` (like segment-anything's `sam_model_registry`).

It starts as the shipped table (`medagent.tools.catalog.BUILTIN_TOOLS`); `register_tool` adds a user's tool,
and other installed packages add theirs through Python entry points in the group `medagent.tools`
(`ENTRY_POINT_GROUP`): each entry point loads a `ToolSpec`, or a callable returning one, e.g. in the plugin's
pyproject.toml

    [project.entry-points."medagent.tools"]
    my-seg = "my_package.medagent_tool:SPEC"

Entry points are read once, on the first `list_tools` / `get_spec` / `load_tool` / `register_tool` (not on
import). One that fails to load (import error, not a ToolSpec) is skipped with a `PluginWarning` naming its
distribution, so `medagent tool list` still works; one whose name is a built-in tool's (or another plugin's)
is a `ToolError` naming both. An automatic tool from outside medagent (entry point or `register_tool`) also
becomes a model of the environment's `auto_segment` call (`medagent.envs.tool_specs.auto_models`); the env keeps
the target's class of its mask, found by name in the tool's `class_names` (index -> name).

Each entry builds its tool with the shipped weights (the embedded default) or from a user's checkpoint; the
module that defines a builder is imported on first use, so `medagent tool list` does not import torch (a
plugin's entry-point module is imported when the entry points are read: keep the ToolSpec in a light module).
"""

from __future__ import annotations

import warnings
from importlib import metadata
from typing import Any

from medagent.errors import ToolError, ToolUnavailable
from medagent.tools.base import Tool, ToolKind
from medagent.tools.catalog import BUILTIN_TOOLS
from medagent.tools.spec import ToolSpec

#: The entry-point group third-party packages publish their tools under.
ENTRY_POINT_GROUP = "medagent.tools"

TOOL_REGISTRY: dict[str, ToolSpec] = {spec.name: spec for spec in BUILTIN_TOOLS}

#: Names of the built-in tools (the shipped table).
BUILTIN_NAMES: frozenset[str] = frozenset(spec.name for spec in BUILTIN_TOOLS)

#: name -> where a non-built-in tool came from: "entry point NAME of distribution DIST" or "register_tool".
_ORIGINS: dict[str, str] = {}
_plugins_loaded = False


class PluginWarning(UserWarning):
    """A `medagent.tools` entry point could not be loaded and was skipped."""


def _distribution(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    try:
        return f"{dist.metadata['Name'] or dist.name} {dist.version}"
    except Exception:  # noqa: BLE001 - broken metadata still gets a name
        return str(getattr(dist, "name", "an unknown distribution"))


def _spec_from(ep: metadata.EntryPoint) -> ToolSpec:
    """The `ToolSpec` an entry point stands for (it loads a ToolSpec, or a callable returning one)."""
    obj = ep.load()
    if not isinstance(obj, ToolSpec) and callable(obj):
        obj = obj()
    if not isinstance(obj, ToolSpec):
        raise TypeError(f"it gave {type(obj).__name__}, not a medagent.tools.spec.ToolSpec (or a callable returning one)")
    return obj


def load_plugins() -> dict[str, str]:
    """Add the tools of the `medagent.tools` entry points to the registry (once; later calls return at once).

    Returns name -> origin for every tool not in the shipped table. A failing entry point is skipped with a
    `PluginWarning`; a name that a built-in tool or another plugin already has raises `ToolError` naming both.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return dict(_ORIGINS)
    _plugins_loaded = True  # set first: a plugin module that lists tools while it loads must not recurse
    try:
        entry_points = list(metadata.entry_points(group=ENTRY_POINT_GROUP))
    except Exception as exc:  # noqa: BLE001 - broken site-packages metadata must not break the registry
        warnings.warn(f"medagent: cannot read the {ENTRY_POINT_GROUP!r} entry points ({type(exc).__name__}: {exc}); "
                      "no third-party tools are loaded", PluginWarning, stacklevel=2)
        return dict(_ORIGINS)
    for ep in sorted(entry_points, key=lambda e: e.name):
        where = f"entry point {ep.name!r} ({ep.value}) of the distribution {_distribution(ep)}"
        try:
            spec = _spec_from(ep)
        except Exception as exc:  # noqa: BLE001 - any failure of a third-party package is its own
            warnings.warn(f"medagent: skipped the tool {where}: it failed to load: {type(exc).__name__}: {exc}",
                          PluginWarning, stacklevel=2)
            continue
        if spec.name in BUILTIN_NAMES:
            _plugins_loaded = False  # the clash stays an error on every later call until it is fixed
            raise ToolError(f"the tool {spec.name!r} from the {where} has the name of the built-in tool {spec.name!r} "
                            f"({TOOL_REGISTRY[spec.name].module}); the plugin must rename it (or uninstall it)")
        if spec.name in TOOL_REGISTRY and TOOL_REGISTRY[spec.name] != spec:
            _plugins_loaded = False
            raise ToolError(f"the tool {spec.name!r} from the {where} clashes with the tool {spec.name!r} from "
                            f"{_ORIGINS.get(spec.name, 'register_tool')}; one of them must be renamed")
        TOOL_REGISTRY[spec.name] = spec
        _ORIGINS[spec.name] = where
    return dict(_ORIGINS)


def reset_plugins() -> None:
    """Forget the entry-point tools so the next registry call reads the entry points again (tests, or after
    installing a plugin in a running process). Tools added with `register_tool` stay."""
    global _plugins_loaded
    for name, origin in list(_ORIGINS.items()):
        if origin != "register_tool":
            TOOL_REGISTRY.pop(name, None)
            del _ORIGINS[name]
    _plugins_loaded = False


def external_tools() -> dict[str, ToolSpec]:
    """The registered tools that are not built in (entry points and `register_tool`), by name."""
    load_plugins()
    return {name: spec for name, spec in sorted(TOOL_REGISTRY.items()) if name not in BUILTIN_NAMES}


def tool_origin(name: str) -> str:
    """"built-in", "register_tool", or the entry point and distribution a tool came from."""
    load_plugins()
    if name in BUILTIN_NAMES:
        return "built-in"
    return _ORIGINS.get(name, "register_tool")


def register_tool(spec: ToolSpec) -> ToolSpec:
    """Add a tool to the registry (names are unique)."""
    load_plugins()
    if spec.name in TOOL_REGISTRY and TOOL_REGISTRY[spec.name] != spec:
        raise ToolError(f"tool name {spec.name!r} is registered twice")
    TOOL_REGISTRY[spec.name] = spec
    if spec.name not in BUILTIN_NAMES:
        _ORIGINS.setdefault(spec.name, "register_tool")
    return spec


def list_tools() -> list[ToolSpec]:
    """Every registered tool (built in, registered, from entry points), by name."""
    load_plugins()
    return sorted(TOOL_REGISTRY.values(), key=lambda s: s.name)


def get_spec(name: str) -> ToolSpec:
    """The entry of tool `name` (ToolError naming the registered tools if there is none)."""
    load_plugins()
    if name not in TOOL_REGISTRY:
        raise ToolError(f"unknown tool {name!r}; available: {', '.join(sorted(TOOL_REGISTRY))}")
    return TOOL_REGISTRY[name]


#: Tool kinds whose shipped weights are per dataset (`dataset=` picks them); other kinds ignore `dataset`.
PER_DATASET_KINDS = (ToolKind.AUTOMATIC, ToolKind.ADAPTIVE)


def load_tool(name: str, checkpoint: str | None = None, **config: Any) -> Tool:
    """Build tool `name` with its shipped weights, or from `checkpoint` when given: a local checkpoint folder
    (or a file in it; `sam` also takes an official `.pth`, `sam2` an official SAM 2 / 2.1 or MedSAM2 `.pt`) or a
    Hugging Face Hub id `hf://owner/name[@revision]` (`medagent.tools.checkpoint`).

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
