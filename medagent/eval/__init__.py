"""Evaluation: run folders, results files, per-case tables, reports.

- `medagent.eval.runs`: `RunFolder` (config.json, versions.json, metrics.jsonl, results).
- `medagent.eval.results`: the shared results JSON + cases.parquet, `summarize` with bootstrap CIs, `load_results`.
- `medagent.eval.tool_eval`: `evaluate_tool` (per case and class) and `run_tool_eval` (the whole run).
- `medagent.eval.table`: `summary_table` (rich).
Names are imported lazily so `import medagent.eval` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RunFolder": "medagent.eval.runs",
    "collect_versions": "medagent.eval.runs",
    "Results": "medagent.eval.results",
    "bootstrap_ci": "medagent.eval.results",
    "copy_results": "medagent.eval.results",
    "load_results": "medagent.eval.results",
    "summarize": "medagent.eval.results",
    "write_results": "medagent.eval.results",
    "component_boxes": "medagent.eval.tool_eval",
    "evaluate_tool": "medagent.eval.tool_eval",
    "run_tool_eval": "medagent.eval.tool_eval",
    "summary_table": "medagent.eval.table",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medagent.eval' has no attribute {name!r}")
