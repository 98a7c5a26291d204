"""Train and ship the source models of continual test-time adaptation (CTTA).

The CTTA literature trains the source model on one clean centre and *without* intensity augmentation,
so that the acquisition shifts of the other centres hurt it and test-time adaptation has something to
recover. This module does exactly that with the shared trainer (`medagent.train.tool_trainer.train_tool`,
`intensity_aug=False`, geometric augmentation kept) on the builtin dataset's clean training split, and
copies the best checkpoint into `medagent/weights/ctta-source-<dataset>/` with a model card and a
manifest entry.

    from medagent.train.ctta_source import CTTASourceConfig, train_ctta_source
    folder = train_ctta_source(CTTASourceConfig(dataset="nuclei", max_steps=400))

The shipped folders are ordinary `unet` checkpoints: `load_tool("unet", checkpoint=folder)` works, and
the adaptive tools (`medagent.tools.tta`) load them by dataset name.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medagent.errors import ConfigError
from medagent.tools.tta.source import SOURCE_PREFIX, source_weights_name  # noqa: F401  (re-exported)


@dataclass
class CTTASourceConfig:
    """How a CTTA source model is trained (the defaults are what the shipped models used).

    Attributes:
        dataset: builtin dataset (its clean "train" split is the source centre A).
        max_steps: optimisation steps of `train_tool`.
        batch_size: crops per step.
        crop_size: side of the training crops in pixels (None: 96, or the image side when smaller).
        lr: AdamW learning rate.
        width: UNet channels at full resolution (tiny on purpose: CPU adaptation runs thousands of passes).
        depth: UNet down-samplings.
        seed: seeds weights and crops.
        output_dir: trainer run folder; the run of dataset D is `output_dir/D` (best/ and last/ checkpoints,
            metrics.jsonl).
        ship: copy the best checkpoint into medagent/weights/ and record it in the manifest.
        version: manifest version of the shipped folder (bump when re-training).
        num_threads: torch CPU threads.
        extra: further `ToolTrainerConfig` fields for `train_tool`, e.g. {"val_every": 50}.
    """

    dataset: str = "mni-tissue"
    max_steps: int = 600
    batch_size: int = 8
    crop_size: int | None = None
    lr: float = 3e-3
    width: int = 8
    depth: int = 3
    seed: int = 0
    output_dir: str = "medagent-runs/train-ctta-source"
    ship: bool = True
    version: str = "1"
    num_threads: int | None = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.width < 1 or self.depth < 1:
            raise ConfigError(f"CTTASourceConfig: max_steps, width and depth must be >= 1, got {self.max_steps}, {self.width}, {self.depth}")


def trainer_config(config: CTTASourceConfig):
    """The `ToolTrainerConfig` of a CTTA source model: UNet, clean centre only, NO intensity augmentation."""
    from medagent.data.builtin import load_builtin
    from medagent.train.segmenter_config import ToolTrainerConfig

    crop = config.crop_size
    if crop is None:
        first = load_builtin(config.dataset).cases("train")[0]
        crop = int(min(96, *first.shape[-2:]))
    return ToolTrainerConfig(
        model="unet", dataset=config.dataset, max_steps=config.max_steps, batch_size=config.batch_size, lr=config.lr,
        crop_size=crop, augment=True, intensity_aug=False, geometric_aug=True, seed=config.seed,
        output_dir=str(Path(config.output_dir) / config.dataset), resume=True, num_threads=config.num_threads,
        progress=False, model_config={"width": config.width, "depth": config.depth}, **config.extra,
    )


def train_ctta_source(config: CTTASourceConfig) -> Path:
    """Train the source model of `config.dataset`; returns the shipped folder (or the trainer's best/).

    With `ship=True` the checkpoint is copied to `medagent/weights/ctta-source-<dataset>/`, a model card
    README.md is written next to it, and `medagent.weights.record_weights` adds the manifest entry.
    """
    from medagent.data.builtin import BUILTIN_DATASETS
    from medagent.train.tool_trainer import train_tool

    if config.dataset not in BUILTIN_DATASETS:
        raise ConfigError(f"CTTASourceConfig.dataset: unknown builtin dataset {config.dataset!r}; choose from {sorted(BUILTIN_DATASETS)}")
    tcfg = trainer_config(config)
    started = time.time()
    best = train_tool(tcfg)
    seconds = time.time() - started
    if not config.ship:
        return best
    from medagent.weights import WEIGHTS_DIR, record_weights

    name = source_weights_name(config.dataset)
    dest = WEIGHTS_DIR / name
    dest.mkdir(parents=True, exist_ok=True)
    for fname in ("model.safetensors", "config.json"):
        shutil.copy2(best / fname, dest / fname)
    records = [json.loads(line) for line in (Path(tcfg.output_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    best_val = max(records, key=lambda r: r["val"]["mean_dice"]) if records else None
    spec = BUILTIN_DATASETS[config.dataset]
    (dest / "README.md").write_text(model_card(config, tcfg, best_val, seconds))
    record_weights(name, f"{config.dataset}-v{spec.version}", version=config.version)
    return dest


def model_card(config: CTTASourceConfig, tcfg: Any, best_val: dict[str, Any] | None, seconds: float) -> str:
    """The README.md of a shipped CTTA source model."""
    val = "n/a" if best_val is None else f"{best_val['val']['mean_dice']:.4f} (step {best_val['step']}; per class {json.dumps(best_val['val']['dice'])})"
    args = ", ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(config).items() if k not in ("ship", "output_dir"))
    return f"""# {source_weights_name(config.dataset)}

Source model for continual test-time adaptation (`medagent.tools.tta`: noadapt, tent, cotta, vptta, mgipt).

- Architecture: `unet` (medagent.tools.nets.unet.UNet, batch norm), width {config.width}, depth {config.depth}.
- Data: builtin `{config.dataset}`, clean centre only ("train" split, best checkpoint by mean foreground
  Dice on the "val" split). No domain shift is ever seen in training.
- Recipe: cross-entropy + soft Dice, AdamW lr {config.lr}, {config.max_steps} steps of {config.batch_size} crops of
  {tcfg.crop_size} px, geometric augmentation (flips, rotations <= {tcfg.max_rotation_deg} deg) and
  **no intensity augmentation** (as in the CTTA literature), seed {config.seed}.
- Command: `python -c "from medagent.train.ctta_source import CTTASourceConfig, train_ctta_source; train_ctta_source(CTTASourceConfig({args}))"`
- Validation mean foreground Dice (clean): {val}.
- Training time: {seconds:.0f} s on a shared 2-core CPU.
- Shift robustness: see docs/ctta.md (bench/bench_ctta.py prints the clean -> worst-centre drop).
"""


if __name__ == "__main__":  # pragma: no cover - manual training entry point
    import argparse

    parser = argparse.ArgumentParser(description="Train and ship a CTTA source model")
    parser.add_argument("--dataset", default="mni-tissue")
    parser.add_argument("--max-steps", "--steps", dest="max_steps", type=int, default=600)
    parser.add_argument("--no-ship", action="store_true")
    args = parser.parse_args()
    print(train_ctta_source(CTTASourceConfig(dataset=args.dataset, max_steps=args.max_steps, ship=not args.no_ship)))
