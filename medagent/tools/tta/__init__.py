"""Continual test-time adaptation (CTTA) tools: `noadapt`, `tent`, `cotta`, `vptta`, `mgipt`.

Each is an `AdaptiveTool`: `predict(case)` adapts a frozen source model (or prompts in front of it) on
that one image, with no label, then predicts it; state persists across calls (`reset()`,
`state_dict()` / `load_state_dict()`, `save_state(dir)` / `load_state(dir)`).

    from medagent.tools import load_tool
    tool = load_tool("mgipt", dataset="mni-tissue")        # shipped ctta-source-mni-tissue
    for case in stream: pred = tool.predict(case)

`medagent.tools.tta.folder.adapt_folder` adapts a method over a folder of images; the scored continual / episodic
streams of the benchmark protocol (`evaluate_ctta`) are an evaluator and live in `medagent.eval.ctta`.
See docs/ctta.md.
"""

METHODS = ("noadapt", "tent", "cotta", "vptta", "mgipt")
