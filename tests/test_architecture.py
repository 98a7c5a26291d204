"""The package's dependency picture (docs/ARCHITECTURE.md) holds: imports point one way and form no circle.

Every `import` in medagent's source counts, function-local ones included (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

import medagent

ROOT = Path(medagent.__file__).parent

#: Lowest first. A module may import its own layer's modules and any lower layer's, never a higher one.
#: The package root (`medagent/__init__.py`) only names entry points as strings, so it sits below everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "provenance"),
    ("data", "metrics", "weights"),
    ("tools",),
    ("rewards",),
    ("envs",),
    ("agents",),
    ("trajectories",),
    ("train",),
    ("eval",),
    ("demo",),
    ("cli",),
)
LAYER_OF = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = ("medagent", *path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module a dotted import name lands in (an attribute's owner when the name is not a module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(module: str, path: Path) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import submodule` depends on the submodule, not on pkg
                submodule = f"{source}.{alias.name}"
                found.add(submodule if submodule in MODULES else source)
    return {_resolve(name) for name in found if name.split(".")[0] == "medagent"} - {module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    return -1 if len(parts) == 1 else LAYER_OF[parts[1]]


def test_every_subpackage_has_a_layer():
    tops = {module.split(".")[1] for module in MODULES if "." in module}
    assert tops <= set(LAYER_OF), f"add {sorted(tops - set(LAYER_OF))} to LAYERS and to docs/ARCHITECTURE.md"


def test_no_upward_import():
    upward = sorted(f"{a} -> {b}" for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a))
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_circle():
    # Tarjan's strongly connected components; any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(" <-> ".join(c) for c in circles)


def test_nothing_imports_the_cli():
    users = sorted(a for a, targets in GRAPH.items() if "medagent.cli" in targets and not a.startswith("medagent.cli"))
    assert not users
