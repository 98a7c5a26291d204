"""Bench 2: Dice of a SAM checkpoint with a GT box, and with a box + 3 corrective clicks, per builtin
dataset, beside two floors that need no model: the filled GT box and the ellipse inscribed in it.

    python bench/bench_sam_quality.py                      # the shipped tiny SAM, test splits
    python bench/bench_sam_quality.py --checkpoint DIR --max-objects 100 --json out.json

Objects are `medagent.tools.sam.prompts.iter_objects` (instances where the dataset has them, else
8-connected components of each class with >= --min-area px). The box is the tight GT box; clicks are
simulated at the distance-transform maximum of the largest error region, with the box, all clicks
and the previous logits sent at every turn (`simulate_clicks` on a `SamSession`); the "no-logits"
column repeats the clicks with `use_previous_logits=False` (box + clicks only). Goal: the tiny SAM
beats the inscribed ellipse on every dataset.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from medagent.metrics import dice


def box_mask(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    m = np.zeros(shape, bool)
    m[y0 : y1 + 1, x0 : x1 + 1] = True
    return m


def ellipse_mask(shape: tuple[int, int], box: np.ndarray) -> np.ndarray:
    """The ellipse inscribed in an inclusive pixel box (centre and semi-axes from the box's pixel extent)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    a, b = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0


def ci95(values: list[float]) -> float:
    v = np.asarray(values, dtype=float)
    return float(1.96 * v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="SAM checkpoint (default: shipped tiny SAM)")
    ap.add_argument("--datasets", default="mni-lesion,nuclei,mni-tissue,ct-phantom,phantom")
    ap.add_argument("--split", default="test")
    ap.add_argument("--clicks", type=int, default=3)
    ap.add_argument("--min-area", type=int, default=16)
    ap.add_argument("--max-objects", type=int, default=300, help="objects per dataset (first ones in case order)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None, help="write the table as JSON here")
    ap.add_argument("--quick", action="store_true", help="mni-lesion and nuclei, 30 objects each")
    args = ap.parse_args()
    if args.quick:
        args.datasets, args.max_objects = "mni-lesion,nuclei", 30

    import torch

    from medagent.data.sources import open_dataset
    from medagent.tools.sam.prompts import iter_objects, mask_box, simulate_clicks
    from medagent.tools.sam.tool import build

    torch.set_num_threads(args.threads)
    tool = build(args.checkpoint)
    rows = []
    t_all = time.time()
    for name in args.datasets.split(","):
        ds = open_dataset(name)
        nolog = f"sam_box+{args.clicks} no-logits"
        scores: dict[str, list[float]] = {"box": [], "ellipse": [], "sam_box": [], f"sam_box+{args.clicks}": [], nolog: []}
        t0 = time.time()
        for case in ds.cases(args.split):
            cases = list(case.iter_slices(only_with_target=True)) if case.ndim == 3 else [case]
            for c in cases:
                for obj in iter_objects(c, args.min_area):
                    if len(scores["box"]) >= args.max_objects:
                        break
                    box = mask_box(obj)
                    scores["box"].append(dice(box_mask(c.shape, box), obj))
                    scores["ellipse"].append(dice(ellipse_mask(c.shape, box), obj))
                    ep = simulate_clicks(tool.session(c), obj, args.clicks, box=box)
                    scores["sam_box"].append(dice(ep.predictions[0].mask, obj))
                    scores[f"sam_box+{args.clicks}"].append(dice(ep.predictions[-1].mask, obj))
                    ep2 = simulate_clicks(tool.session(c, use_previous_logits=False), obj, args.clicks, box=box)
                    scores[nolog].append(dice(ep2.predictions[-1].mask, obj))
        n = len(scores["box"])
        row = {"dataset": name, "objects": n, "seconds": round(time.time() - t0, 1)}
        for k, v in scores.items():
            row[k] = {"mean": float(np.mean(v)) if v else float("nan"), "ci95": ci95(v)}
        row["beats_ellipse"] = bool(n and row["sam_box"]["mean"] > row["ellipse"]["mean"])
        rows.append(row)

    cols = ["box", "ellipse", "sam_box", f"sam_box+{args.clicks}", f"sam_box+{args.clicks} no-logits"]
    print(f"checkpoint: {tool.source}  ({tool.model_type}, preprocessing {tool.preprocessing.name}); split {args.split}")
    header = f"{'dataset':<12}{'objects':>8}" + "".join(f"{c:>22}" for c in cols) + f"{'SAM>ellipse':>13}"
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = "".join(f"{r[c]['mean']:>15.3f} ±{r[c]['ci95']:.3f}" for c in cols)
        print(f"{r['dataset']:<12}{r['objects']:>8}{cells}{'yes' if r['beats_ellipse'] else 'NO':>13}")
    print(f"(Dice mean ± 95% CI half-width over objects; {time.time() - t_all:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"checkpoint": tool.source, "split": args.split, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
