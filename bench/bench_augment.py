"""The shipped segmenter recipes retrained with today's augmentation code, beside the shipped checkpoints.

Bias field, blur, low resolution, noise and gamma of the training augmentation are torchio transforms
(`medagent.train.augment`). The comparison in docs/segmenters.md was run while the shipped checkpoints were still
those trained with the earlier hand-written transforms; today the shipped checkpoints are these recipes' own
runs, so the script checks that a retrained recipe gives its shipped checkpoint's numbers. This script retrains every shipped recipe that uses intensity augmentation (`SHIPPED_RECIPES`,
`medagent.train.shipped_segmenters.train_shipped(install=False)`) into a work folder and scores both on the same
splits with the same code: val Dice clean, val Dice under 2 seeded copies of the robust augmentation
(`evaluate_dice_augmented`, today's transforms for both rows), test Dice.

    python bench/bench_augment.py                         # every affected recipe (about 25 min on 1 thread)
    python bench/bench_augment.py --only unet-nuclei      # one of them
    python bench/bench_augment.py --quick                 # unet-nuclei only, 40 steps: a smoke run
    python bench/bench_augment.py --only unet-ct-phantom --seeds 0,1,2   # the recipe at other seeds too

With `--seeds`, each recipe is also trained at those seeds (folders `<name>-seed<k>`; seed 0 is the recipe's own
folder): the shipped checkpoint is one seed of the old code, so a seed-sensitive recipe needs the spread.

The retrained runs stay in `--work` (default medagent-runs/shipped-torchio/<name>/best); installing one is
`medagent.train.shipped_segmenters.install_shipped(name, best, metrics)` with its `shipped_metrics.json`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from medagent.tools.segmenters import TOOL_CLASSES  # noqa: E402
from medagent.train.shipped_segmenters import (SHIPPED_RECIPES, score_checkpoint, shipped_config,  # noqa: E402
                                               train_shipped)
from medagent.weights import weights_path  # noqa: E402


def affected() -> list[str]:
    """Shipped recipes whose training uses intensity augmentation (the code this comparison is about)."""
    return [name for name, recipe in SHIPPED_RECIPES.items() if recipe.get("intensity_aug", True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated recipe names (default: every affected one)")
    parser.add_argument("--work", default="medagent-runs/shipped-torchio", help="where the retrained runs go")
    parser.add_argument("--quick", action="store_true", help="unet-nuclei for 40 steps, into a quick folder")
    parser.add_argument("--seeds", default="0", help="comma-separated training seeds of each recipe (default: 0, the recipe's)")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or affected()
    if args.quick:
        names, args.work = ["unet-nuclei"], args.work + "-quick"

    quick = {"max_steps": 40, "val_every": 20} if args.quick else {}  # a smoke run of the same code path
    rows = []
    for name in names:
        config = shipped_config(name, Path(args.work) / name)
        old = score_checkpoint(TOOL_CLASSES[config.model].from_pretrained(weights_path(name)), config)
        for seed in (int(s) for s in args.seeds.split(",")):
            recipe_seed = seed == config.seed
            new = train_shipped(name, work_dir=args.work, install=False, resume=True,
                                overrides={**quick, **({} if recipe_seed else {"seed": seed})} or None,
                                run_name=name if recipe_seed else f"{name}-seed{seed}")
            rows.append((name, seed, old, new))
            print(f"{name} seed {seed}: trained in {new['train_seconds']:.0f} s", flush=True)

    print("\n## Shipped checkpoint vs its recipe retrained with today's (torchio) transforms\n")
    print("Mean foreground Dice; 'val aug' = val under 2 seeded copies of today's robust augmentation for both.\n")
    print("The seed column is the retrained run's; the shipped checkpoint is its recipe's seed.\n")
    print("| checkpoint | seed | val: shipped | val: torchio | val aug: shipped | val aug: torchio | test: shipped | test: torchio | train s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, seed, old, new in rows:
        cells = []
        for key in ("val", "val_augmented", "test"):
            cells += [f"{old.get(key, {}).get('mean_dice', float('nan')):.3f}", f"{new.get(key, {}).get('mean_dice', float('nan')):.3f}"]
        print(f"| {name} | {seed} | {' | '.join(cells)} | {new['train_seconds']:.0f} |")


if __name__ == "__main__":
    main()
