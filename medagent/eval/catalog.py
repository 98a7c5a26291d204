"""Tables of what medagent ships: builtin datasets and registered tools (for `medagent data list`,
`medagent tool list` and the demo)."""

from __future__ import annotations

from rich.table import Table


def datasets_table() -> Table:
    """One row per builtin dataset: modality, classes, label origin, cases per split, licence."""
    from medagent.data.builtin import list_builtin, load_builtin

    table = Table(title="Builtin datasets (embedded: derived from files that installed packages ship)")
    for col in ("name", "modality", "classes", "labels", "train", "val", "test", "licence"):
        table.add_column(col, justify="right" if col in ("train", "val", "test") else "left")
    for spec in list_builtin():
        ds = load_builtin(spec.name)
        counts = ds.counts()
        classes = ", ".join(v for k, v in sorted(ds.info.class_names.items()) if k > 0)
        table.add_row(spec.name, ds.info.modality, classes, ds.info.label_origin,
                      *(str(counts.get(s, 0)) for s in ("train", "val", "test")), ds.info.license)
    return table


def tools_table() -> Table:
    """One row per registered tool: kind, shipped weights, one-line summary."""
    from medagent.tools import list_tools
    from medagent.weights import read_manifest

    shipped = read_manifest()
    table = Table(title="Segmentation tools")
    for col in ("name", "kind", "weights", "what it is"):
        table.add_column(col, overflow="fold")
    for spec in list_tools():
        if spec.weights is None:
            weights = "-"
        else:
            weights = spec.weights if spec.weights in shipped else f"{spec.weights} (not shipped)"
        table.add_row(spec.name, spec.kind.value, weights, spec.summary)
    return table
