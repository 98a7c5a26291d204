"""The shipped segmenter checkpoints (medagent/weights/<model>-<dataset>/): their recipes, how they are
trained, scored and installed, and their model cards.

    from medagent.train.shipped_segmenters import train_shipped
    metrics = train_shipped("unet-mni-tissue")          # train, score, copy into medagent/weights/

Read top to bottom: the recipes (`SHIPPED_RECIPES` over `_SHIPPED_COMMON`, their manifest versions, which
are stored as float16) -> `shipped_config(name, output_dir)` (the exact `ToolTrainerConfig`) ->
`train_shipped` (train with `medagent.train.tool_trainer.train_tool`, then `shipped_checkpoint`,
`score_checkpoint`, `install_shipped`) -> `_model_card` (the README.md written next to the weights).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from medagent.data.case import labelled_2d
from medagent.errors import ConfigError
from medagent.tools.segmenters import SegmenterTool, load_safetensors
from medagent.train.segmenter_config import AugmentConfig, ToolTrainerConfig
from medagent.train.tool_trainer import evaluate_dice, evaluate_dice_augmented, train_tool

#: version 2 (robust intensity augmentation, 1000 steps); `unet-nuclei` keeps its version-1 recipe
_SHIPPED_COMMON = dict(max_steps=1000, batch_size=8, crop_size=80, lr=3e-3, val_every=100, seed=0, num_threads=1,
                       aug_policy="robust", model_config={"width": 8, "depth": 3})
_V1 = dict(max_steps=400, val_every=50, aug_policy="basic")
SHIPPED_RECIPES: dict[str, dict[str, Any]] = {
    # mni-tissue: 1500 steps beat 1000 (800 for allukan) on val, clean and augmented (docs/segmenters.md)
    # version 3 (torchio transforms): the training seed with the best clean val Dice of seeds 0-2
    # (`bench/bench_augment.py --seeds 0,1,2`; docs/segmenters.md)
    "unet-mni-tissue": dict(model="unet", dataset="mni-tissue", max_steps=1500, seed=1),
    "ifunet-mni-tissue": dict(model="ifunet", dataset="mni-tissue", max_steps=1500),
    "allukan-mni-tissue": dict(model="allukan", dataset="mni-tissue", max_steps=1500),
    # version 3, synthetic lesions: train on the train splits of 40 dataset seeds (new lesions on the same
    # slices; val and test stay on seed 0), no intensity augmentation (the robust policy's blur, gamma and
    # noise cost 0.2 clean val Dice: they wash out the lesions' texture), 60% lesion-centred crops (0.9 gave
    # more false positives), width 16 and 4000 steps; the measurements are in docs/segmenters.md
    "unet-mni-lesion": dict(model="unet", dataset="mni-lesion", dataset_seeds=tuple(range(40)), intensity_aug=False,
                            foreground_crop_prob=0.6, dice_weight=2.0, max_steps=4000, model_config={"width": 16, "depth": 3}),
    "unet-nuclei": dict(model="unet", dataset="nuclei", crop_size=64, **_V1),
    # seven classes of very different sizes: class-balanced crops so that bone and vessel are seen
    # (version 3: seed 2, as for unet-mni-tissue; the vessel class makes this recipe seed-sensitive)
    "unet-ct-phantom": dict(model="unet", dataset="ct-phantom", crop_size=96, foreground_crop_prob=0.9, class_balanced_crops=True,
                            model_config={"width": 8, "depth": 3, "ct_window": "wide"}, seed=2),
}
#: recipes re-made after their first version (docs/segmenters.md says what changed): mni-lesion's version 3 is
#: a new recipe; the others' next version is the same recipe retrained with torchio's transforms
_LATER_VERSIONS = {"unet-mni-lesion": "3", "unet-mni-tissue": "3", "ifunet-mni-tissue": "3", "allukan-mni-tissue": "3",
                   "unet-ct-phantom": "3", "unet-nuclei": "2"}
#: the manifest version of each shipped checkpoint's current recipe
SHIPPED_VERSIONS: dict[str, str] = {
    name: _LATER_VERSIONS.get(name, "1" if SHIPPED_RECIPES[name].get("aug_policy") == "basic" else "2") for name in SHIPPED_RECIPES
}
#: checkpoints shipped with their floating-point tensors stored as float16 (half the file; the tool loads
#: them into its float32 network); their recorded metrics are those of the float16 file
SHIPPED_FLOAT16: frozenset[str] = frozenset({"unet-mni-lesion"})
#: test cases whose Dice the shipped-weights test recomputes (first N of the test split)
CHECK_CASES = 4


def shipped_config(name: str, output_dir: str | Path, overrides: dict[str, Any] | None = None) -> ToolTrainerConfig:
    """The exact `ToolTrainerConfig` of shipped checkpoint `name` (see `SHIPPED_RECIPES`), with `overrides`
    (e.g. {"seed": 1}, for a seed study) applied last."""
    if name not in SHIPPED_RECIPES:
        raise ConfigError(f"no recipe for shipped checkpoint {name!r}; known: {sorted(SHIPPED_RECIPES)}")
    fields = {**_SHIPPED_COMMON, **SHIPPED_RECIPES[name], **(overrides or {})}
    return ToolTrainerConfig(**fields, output_dir=str(output_dir), progress=False)


def train_shipped(name: str, work_dir: str | Path = "medagent-runs/shipped", install: bool = True,
                  resume: bool = False, overrides: dict[str, Any] | None = None, run_name: str | None = None) -> dict[str, Any]:
    """Train shipped checkpoint `name` from its recipe, evaluate it on the val and test splits and (with
    `install`) copy it into medagent/weights/<name>/ (`install_shipped`).

    The trained run stays in `work_dir/<name>/` (its `best/`, for `SHIPPED_FLOAT16` models also the
    float16 copy `best-float16/` that is scored and installed, and a `shipped_metrics.json`), so one can
    compare it with the shipped checkpoint on the val split first and install it later.
    `resume=True` continues an interrupted run in `work_dir/<name>/` (same weights as an uninterrupted
    one; `train_seconds` then counts only this call). `overrides` change recipe fields (`shipped_config`) and
    need `install=False`: an installed checkpoint is its recipe's; `run_name` names the run folder (default `name`).
    Returns the metrics written to metrics.json.
    """
    from medagent.tools.segmenters import TOOL_CLASSES

    if overrides and install:
        raise ConfigError("train_shipped: a run with recipe overrides cannot be installed as the shipped checkpoint")
    config = shipped_config(name, Path(work_dir) / (run_name or name), overrides)
    started = time.time()
    best = train_tool(dataclasses.replace(config, resume=resume))
    seconds = time.time() - started
    best = shipped_checkpoint(name, best)
    tool = TOOL_CLASSES[config.model].from_pretrained(best)
    metrics = {**score_checkpoint(tool, config), "train_seconds": round(seconds, 1), "parameters": tool.num_parameters(),
               "threads": config.num_threads}
    (Path(config.output_dir) / "shipped_metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    if install:
        install_shipped(name, best, metrics)
    return metrics


def shipped_checkpoint(name: str, best: str | Path) -> Path:
    """The folder to score and install for shipped checkpoint `name` trained into `best`: `best` itself, or
    for `SHIPPED_FLOAT16` models a copy `<best>-float16/` whose floating-point tensors are float16."""
    best = Path(best)
    if name not in SHIPPED_FLOAT16:
        return best
    import shutil

    from safetensors.torch import save_file

    half = best.with_name(best.name + "-float16")
    half.mkdir(parents=True, exist_ok=True)
    state = load_safetensors(best / "model.safetensors")
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}, str(half / "model.safetensors"))
    shutil.copy(best / "config.json", half / "config.json")
    return half


def score_checkpoint(tool: SegmenterTool, config: ToolTrainerConfig) -> dict[str, Any]:
    """Mean foreground Dice of `tool` on the val split (clean and `evaluate_dice_augmented`) and test split
    of `config.dataset`, and on the first `CHECK_CASES` test cases (what tests/test_segmenters.py recomputes)."""
    from medagent.data.builtin import load_builtin

    ds = load_builtin(config.dataset, seed=config.dataset_seed)
    test = labelled_2d(ds.cases("test"))
    val = labelled_2d(ds.cases("val"))
    check = evaluate_dice(tool, test[:CHECK_CASES])
    return {"val": evaluate_dice(tool, val), "val_augmented": evaluate_dice_augmented(tool, val), "test": evaluate_dice(tool, test),
            "check": {"cases": [c.id for c in test[:CHECK_CASES]], **check}}


def install_shipped(name: str, best: str | Path, metrics: dict[str, Any]) -> dict:
    """Copy checkpoint folder `best` into medagent/weights/<name>/ with metrics.json, a model card and its
    manifest entry (version `SHIPPED_VERSIONS[name]`). Returns the manifest entry."""
    import shutil

    from medagent.data.builtin import BUILTIN_DATASETS
    from medagent.weights import WEIGHTS_DIR, record_weights

    config = shipped_config(name, Path(best).parent)
    folder = WEIGHTS_DIR / name
    folder.mkdir(parents=True, exist_ok=True)
    for fname in ("model.safetensors", "config.json"):
        shutil.copy(Path(best) / fname, folder / fname)
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (folder / "README.md").write_text(_model_card(name, config, metrics))
    version = BUILTIN_DATASETS[config.dataset].version
    return record_weights(name, f"{config.dataset}-v{version}", version=SHIPPED_VERSIONS[name])


def _model_card(name: str, config: ToolTrainerConfig, metrics: dict[str, Any]) -> str:
    test = metrics["test"]
    per = "\n".join(f"| {k} | {v:.4f} |" for k, v in test["dice"].items())
    recipe = ", ".join(f"{k}={v!r}" for k, v in SHIPPED_RECIPES[name].items())
    val = metrics.get("val", {}).get("mean_dice")
    val_aug = metrics.get("val_augmented", {}).get("mean_dice")
    val_line = (f"- Val split: mean foreground Dice {val:.4f} clean, {val_aug:.4f} on 2 seeded robust-policy augmentations per\n"
                "  case (`evaluate_dice_augmented`; the trainer's own augmentation, not the evaluation shifts).\n") if val is not None and val_aug is not None else ""
    aug_changed = {f.name: getattr(config.aug, f.name) for f in dataclasses.fields(AugmentConfig)
                   if getattr(config.aug, f.name) != getattr(AugmentConfig(), f.name)}
    if not (config.augment and config.intensity_aug):
        policy = "no intensity augmentation (`intensity_aug=False`)"
    elif config.aug_policy == "basic":
        policy = "the version-1 basic intensity augmentation (gamma, contrast/brightness, bias field, noise)"
    else:
        changed = f" but {aug_changed}" if aug_changed else ""
        policy = (f"robust intensity augmentation (`AugmentConfig` defaults{changed}: bias field, blur, low resolution, noise,\n"
                  "  contrast, gamma both ways, stripes, then re-scaling as at inference)")
    if config.dataset_seeds:
        data = (f"train splits of `load_builtin(\"{config.dataset}\", seed=s)` for the {len(config.dataset_seeds)} seeds s in\n"
                f"  `dataset_seeds` (new synthetic content per seed on the same slices), concatenated; best checkpoint by\n"
                f"  mean foreground Dice on the val split of seed {config.dataset_seed}, test split of seed {config.dataset_seed}")
    else:
        data = "train split; best checkpoint by mean foreground Dice on the\n  val split"
    storage = ("float16 (loaded into the float32 network; all metrics here are those of this\n  float16 file)"
               if name in SHIPPED_FLOAT16 else "float32")
    return f"""# {name}

Tiny `{config.model}` segmenter shipped with medagent (embedded default; offline, CPU). Manifest version
{SHIPPED_VERSIONS[name]}.

- Data: builtin dataset `{config.dataset}` ({data}), derived from files installed packages ship (see
  `medagent data list`).
- Recipe (seeded, exact):
  `medagent.train.shipped_segmenters.train_shipped("{name}")`, i.e.
  `train_tool(shipped_config("{name}", output_dir))` with the common settings
  `{json.dumps(_SHIPPED_COMMON)}` overridden by `{recipe}`; {policy}; geometric augmentation (flips,
  rotations up to {config.max_rotation_deg:g} degrees).
- Seed: {config.seed}. Threads: {config.num_threads}. Training time: {metrics['train_seconds']} s on a shared
  2-core CPU. Parameters: {metrics['parameters']}, stored as {storage}.
{val_line}- Test split ({config.dataset}, whole images): mean foreground Dice **{test['mean_dice']:.4f}**

| class | Dice |
| --- | --- |
{per}

`metrics.json` also records the Dice on the first {CHECK_CASES} test cases, which
tests/test_segmenters.py recomputes (tolerance 0.01). Robustness to the shifted centres of
`medagent.data.shifts`: see docs/segmenters.md (`python bench/bench_segmenters.py --shipped`). Limits: tiny
width ({config.model_config.get("width", 8)}), {config.max_steps} CPU steps, template-derived or synthetic labels: a demonstration model, not a
clinical one.
"""
