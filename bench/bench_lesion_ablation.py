"""unet-mni-lesion: the recipe ablation behind version 3, and the checkpoints as region proposers.

Every row trains the unet on mni-lesion from the version-2 recipe (`_SHIPPED_COMMON` + 90% lesion-centred
crops + Dice weight 2) with the changes the row names, then scores it with the same code:

- `val`: the 18 val slices of dataset seed 0 (what the trainer selects its best checkpoint on);
- `val x5`: the same slices with the lesions of dataset seeds 100-104 (90 slices never trained on);
- `aug`: `evaluate_dice_augmented` on the val slices (robust augmentation, 2 seeded copies);
- `test`: the test split of seed 0 (reported, never used to choose).

The second table counts, per checkpoint, the painted lesions its mask finds (a ground-truth component that
any predicted component overlaps) and its false-positive components (overlapping no lesion), all and >= 12 px,
on the val and test splits. `v3 (shipped)` is the checkpoint in medagent/weights, not retrained.

    python bench/bench_lesion_ablation.py                  # every row (about 35 min on 1 thread)
    python bench/bench_lesion_ablation.py --rows v2,H1,F1  # some rows
    python bench/bench_lesion_ablation.py --quick          # rows v2 and H3 at 60 steps: a smoke run

Runs go to `--work` (default medagent-runs/lesion-ablation/<row>) and resume when started again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from medagent.data.builtin import load_builtin  # noqa: E402
from medagent.data.case import labelled_2d  # noqa: E402
from medagent.tools.segmenters import TOOL_CLASSES  # noqa: E402
from medagent.train.segmenter_config import AugmentConfig, ToolTrainerConfig  # noqa: E402
from medagent.train.shipped_segmenters import _SHIPPED_COMMON  # noqa: E402
from medagent.train.tool_trainer import (  # noqa: E402
    evaluate_dice,
    evaluate_dice_augmented,
    train_tool,
)
from medagent.weights import weights_path  # noqa: E402

V2 = dict(_SHIPPED_COMMON, model="unet", dataset="mni-lesion", foreground_crop_prob=0.9, dice_weight=2.0)
SEEDS_20 = tuple(range(20))
#: a lighter robust policy: every probability and strength halved, no stripes, no inverted gamma
LIGHT = dataclasses.asdict(AugmentConfig(bias_prob=0.2, bias_std=0.15, blur_prob=0.12, blur_sigma=(0.3, 0.8), lowres_prob=0.12,
                                         lowres_factor=(1.25, 1.75), noise_prob=0.2, noise_std=0.06, contrast_prob=0.3,
                                         contrast_range=(0.8, 1.25), brightness=0.08, gamma_prob=0.3, gamma_log_range=0.4,
                                         gamma_invert_prob=0.0, stripe_prob=0.0))
#: a minimal policy: no blur, low resolution or stripes; weak bias field, noise, contrast and gamma
MINIMAL = dataclasses.asdict(AugmentConfig(bias_std=0.1, blur_prob=0.0, lowres_prob=0.0, noise_std=0.03, contrast_range=(0.9, 1.1),
                                           brightness=0.05, gamma_log_range=0.2, gamma_invert_prob=0.0, stripe_prob=0.0))
NO_AUG_FG06 = dict(dataset_seeds=SEEDS_20, intensity_aug=False, foreground_crop_prob=0.6)

#: row -> (what changes against version 2, the changed fields)
ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "v2": ("- (the version-2 recipe)", {}),
    "B": ("`dataset_seeds` 0-19 (1560 slices)", dict(dataset_seeds=SEEDS_20)),
    "C0": ("width 16, crop 64", dict(crop_size=64, model_config={"width": 16, "depth": 3})),
    "C": ("width 16, crop 64, seeds 0-19", dict(crop_size=64, model_config={"width": 16, "depth": 3}, dataset_seeds=SEEDS_20)),
    "E1": ("seeds 0-19, light robust policy", dict(dataset_seeds=SEEDS_20, aug=LIGHT)),
    "G1": ("seeds 0-19, minimal policy", dict(dataset_seeds=SEEDS_20, aug=MINIMAL)),
    "E2": ("seeds 0-19, no intensity augmentation", dict(dataset_seeds=SEEDS_20, intensity_aug=False)),
    "E3": ("seeds 0-19, `foreground_crop_prob` 0.6", dict(dataset_seeds=SEEDS_20, foreground_crop_prob=0.6)),
    "H1": ("seeds 0-19, no intensity aug., fg 0.6", NO_AUG_FG06),
    "H2": ("seeds 0-19, no intensity aug., fg 0.3", dict(NO_AUG_FG06, foreground_crop_prob=0.3)),
    "G2": ("seeds 0-19, minimal policy, fg 0.6", dict(dataset_seeds=SEEDS_20, aug=MINIMAL, foreground_crop_prob=0.6)),
    "H3": ("seed 0 only, no intensity aug., fg 0.6", dict(NO_AUG_FG06, dataset_seeds=())),
    "F1": ("as H1, 3000 steps", dict(NO_AUG_FG06, max_steps=3000)),
    "F2": ("as F1, width 16 (crop 80)", dict(NO_AUG_FG06, max_steps=3000, model_config={"width": 16, "depth": 3})),
    "v3": ("as F2, seeds 0-39, 4000 steps (the shipped recipe)",
           dict(NO_AUG_FG06, dataset_seeds=tuple(range(40)), max_steps=4000, model_config={"width": 16, "depth": 3})),
}
#: the rows whose checkpoints the region-proposer table counts
PROPOSER_ROWS = ("v2", "F2", "v3")
MIN_FP_AREA = 12


def training_seconds(metrics_file: Path) -> float:
    """A run's own training time from its metrics.jsonl, summed over resumes (each resumed call counts its
    `seconds` from 0 again), so a resumed or already finished run reports the time it took."""
    total = previous = 0.0
    for line in metrics_file.read_text().splitlines():
        if line.strip():
            seconds = float(json.loads(line)["seconds"])
            if seconds < previous:  # a resume started the clock again
                total += previous
            previous = seconds
    return total + previous


def lesion_counts(tool: Any, cases: list) -> dict[str, int]:
    """Lesions found and false-positive components of `tool`'s lesion masks over `cases` (module docstring)."""
    found = total = fp = fp_large = 0
    for case in cases:
        predicted = np.asarray(tool.predict(case).mask) > 0
        truth_labels, n_truth = ndimage.label(np.asarray(case.label) > 0)
        pred_labels, n_pred = ndimage.label(predicted)
        total += n_truth
        found += len(set(np.unique(truth_labels[predicted])) - {0})
        for k, sl in enumerate(ndimage.find_objects(pred_labels), start=1):
            component = pred_labels[sl] == k
            if not (truth_labels[sl][component] > 0).any():
                fp += 1
                fp_large += int(component.sum() >= MIN_FP_AREA)
    return {"found": found, "lesions": total, "fp": fp, "fp_large": fp_large}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="", help=f"comma-separated rows (default: all of {','.join(ROWS)})")
    parser.add_argument("--work", default="medagent-runs/lesion-ablation", help="where the runs go")
    parser.add_argument("--quick", action="store_true", help="rows v2 and H3 at 60 steps, into a quick folder")
    args = parser.parse_args()
    names = [r for r in args.rows.split(",") if r] or list(ROWS)
    if unknown := [r for r in names if r not in ROWS]:
        parser.error(f"--rows: unknown rows {unknown}; known: {list(ROWS)}")
    if args.quick:
        names, args.work = ["v2", "H3"], args.work + "-quick"

    base = load_builtin("mni-lesion", seed=0)
    val, test = labelled_2d(base.cases("val")), labelled_2d(base.cases("test"))
    val_x5 = [c for s in range(100, 105) for c in labelled_2d(load_builtin("mni-lesion", seed=s).cases("val"))]
    scores, tools = {}, {}
    for name in names:
        fields = {**V2, **ROWS[name][1]}
        if args.quick:
            fields.update(max_steps=60, val_every=30)
        config = ToolTrainerConfig(**fields, output_dir=str(Path(args.work) / name), progress=False, resume=True)
        best = train_tool(config)
        seconds = training_seconds(Path(config.output_dir) / "metrics.jsonl")
        tool = TOOL_CLASSES["unet"].from_pretrained(best)
        tools[name] = tool
        scores[name] = (evaluate_dice(tool, val)["mean_dice"], evaluate_dice(tool, val_x5)["mean_dice"],
                        evaluate_dice_augmented(tool, val)["mean_dice"], evaluate_dice(tool, test)["mean_dice"], seconds)
        print(f"{name}: trained in {seconds:.0f} s", flush=True)

    print("\n## unet-mni-lesion recipe ablation (mean lesion Dice; one change against version 2 per row)\n")
    print("| run | change(s) vs the version-2 recipe | val | val x5 | aug | test | train s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in names:
        v, v5, aug, t, s = scores[name]
        print(f"| {name} | {ROWS[name][0]} | {v:.3f} | {v5:.3f} | {aug:.3f} | {t:.3f} | {s:.0f} |")

    shipped = TOOL_CLASSES["unet"].from_pretrained(weights_path("unet-mni-lesion"))
    proposers = [(n, tools[n]) for n in PROPOSER_ROWS if n in tools] + [("v3 (shipped)", shipped)]
    print(f"\n## As region proposers (components; false positive = overlaps no lesion; large = >= {MIN_FP_AREA} px)\n")
    print("| checkpoint | val lesions found | val false positives (all / large) | test lesions found | test false positives (all / large) |")
    print("| --- | --- | --- | --- | --- |")
    for name, tool in proposers:
        cells = []
        for cases in (val, test):
            c = lesion_counts(tool, cases)
            cells += [f"{c['found']} / {c['lesions']}", f"{c['fp']} / {c['fp_large']}"]
        print(f"| {name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
