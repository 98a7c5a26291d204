"""Few-shot segmentation parts shared by `cps` and its baselines (see `medagent.tools.cps`).

Modules: `backbones` (dense patch features: SAM encoder, transformers, any torch module, intensity),
`matching` (similarity map and dense matched points), `sparsify` (density-controlled point operators),
`augment` (augmented views of a single reference), `prompter` (many point sets on one SAM embedding).
"""
