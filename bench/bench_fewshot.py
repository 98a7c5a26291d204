"""Bench 3: few-shot segmentation, CPS vs dense matched points (GF-SAM style) vs single point (PerSAM style).

    python bench/bench_fewshot.py                     # shipped tiny SAM, 100 episodes per setting
    python bench/bench_fewshot.py --quick             # 12 episodes, 2 shifted centres: a smoke run
    python bench/bench_fewshot.py --checkpoint DIR --episodes 200 --json out.json

Episodes (fixed seed): a class of the dataset, a target from the test split holding >= --min-area pixels
of it, and k references (1-shot and 5-shot) from the train split holding it, each from a subject other
than the target's (splits are subject-disjoint; the episode checks it again). References carry the
binary mask of the class and the target's image size (MNI slices come in three orientations: references
are drawn from the target's orientation); the target's class mask is the ground truth. The same episodes run in every
setting:
- in-domain: references and target from the clean centre A;
- cross-domain: target seen at a shifted centre (`apply_shift(target, centre, --severity)`), references
  from centre A;
- cross-modality: MR lesion references (mni-lesion) for CT lung-nodule targets (ct-phantom "nodule").
mIoU per setting: foreground intersection and union of each class summed over its episodes, IoU per
class, mean over classes. Points: mean number of points each method prompted SAM with per episode.
Goal: CPS above dense points on every cross-domain setting.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

METHODS = ("cps", "dense-points", "single-point")


@dataclass
class Episode:
    cls: int
    target: object  # Case
    refs: list  # Case with binary label


def binary(case, cls: int):
    return case.replace(label=(case.label == cls).astype(np.uint8))


def make_episodes(ref_pool, tgt_pool, classes, shots: int, n: int, min_area: int, rng) -> list[Episode]:
    """n episodes; classes drawn in turn (round robin, shuffled) so every class gets episodes."""
    by_cls_t = {k: [c for c in tgt_pool if int((c.label == k).sum()) >= min_area] for k in classes}
    by_cls_r = {k: [c for c in ref_pool if int((c.label == k).sum()) >= min_area] for k in classes}
    usable = [k for k in classes if by_cls_t[k] and len(by_cls_r[k]) >= shots]
    by_cls_t = {k: [t for t in v if sum(c.shape == t.shape and c.subject != t.subject for c in by_cls_r[k]) >= shots]
                for k, v in by_cls_t.items()}
    out = []
    for i in range(n):
        k = usable[i % len(usable)]
        tgt = by_cls_t[k][int(rng.integers(len(by_cls_t[k])))]
        cands = [c for c in by_cls_r[k] if c.subject != tgt.subject and c.shape == tgt.shape]
        picks = rng.choice(len(cands), size=shots, replace=False)
        refs = [binary(cands[int(j)], k) for j in picks]
        assert all(r.subject != tgt.subject for r in refs)
        out.append(Episode(k, tgt, refs))
    return out


def run_setting(tools, episodes, shift, cls_target=None):
    """Per method: {cls: [inter, union]} and list of points used; shift(case) -> case seen at the centre."""
    inter = {m: defaultdict(lambda: [0, 0]) for m in tools}
    points = {m: [] for m in tools}
    for ep in episodes:
        k_t = cls_target if cls_target is not None else ep.cls
        target = shift(ep.target)
        gt = target.label == k_t
        for name, tool in tools.items():
            pred = tool.predict(target, references=ep.refs)
            m = pred.mask > 0
            acc = inter[name][k_t]
            acc[0] += int(np.count_nonzero(m & gt))
            acc[1] += int(np.count_nonzero(m | gt))
            points[name].append(int(pred.extras.get("n_points", 0)))
    return inter, points


def miou(acc) -> float:
    return float(np.mean([i / u if u else 1.0 for i, u in acc.values()]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="SAM checkpoint (default: shipped tiny SAM)")
    ap.add_argument("--datasets", default="mni-lesion,nuclei,mni-tissue,ct-phantom")
    ap.add_argument("--shots", default="1,5")
    ap.add_argument("--episodes", type=int, default=100)
    ap.add_argument("--centres", default="B,C,D,E", help="shifted centres for cross-domain targets")
    ap.add_argument("--severity", type=float, default=3.0)
    ap.add_argument("--min-area", type=int, default=16)
    ap.add_argument("--target-split", default="test", help="split targets come from (val: for tuning design choices)")
    ap.add_argument("--no-cross-modality", action="store_true")
    ap.add_argument("--quick", action="store_true", help="12 episodes, centres B and D")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="CpsConfig field for cps (repeatable)")
    ap.add_argument("--json", default=None, help="write the rows as JSON here")
    args = ap.parse_args()
    if args.quick:
        args.episodes, args.centres = 12, "B,D"

    import torch

    from medagent.data.builtin import load_builtin
    from medagent.data.shifts import apply_shift
    from medagent.tools.cps import build, build_dense_points, build_single_point
    from medagent.tools.sam.tool import build as build_sam

    torch.set_num_threads(args.threads)
    sam = build_sam(args.checkpoint, cache_entries=512, cache_max_mb=2048)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value) if value[:1] in "[{0123456789-tfn" else value
    tools = {"cps": build(sam=sam, **overrides), "dense-points": build_dense_points(sam=sam), "single-point": build_single_point(sam=sam)}
    # cross-modality references have another image size: matching runs on each image's own grid
    xtools = {"cps": build(sam=sam, **{**overrides, "reference_sizes": "any"}),
              "dense-points": build_dense_points(sam=sam, reference_sizes="any"),
              "single-point": build_single_point(sam=sam, reference_sizes="any")}
    shots_list = [int(s) for s in args.shots.split(",")]
    centres = [c for c in args.centres.split(",") if c]
    shift_cache: dict = {}

    def shifter(centre):
        if centre == "A":
            return lambda c: c

        def f(c):
            key = (c.id, c.provenance.get("dataset", ""), centre)
            if key not in shift_cache:
                shift_cache[key] = apply_shift(c, centre, args.severity, seed=args.seed)
            return shift_cache[key]
        return f

    rows = []
    t_all = time.time()

    def record(dataset, setting, shots, inter, points, seconds):
        row = {"dataset": dataset, "setting": setting, "shots": shots, "episodes": len(points["cps"]), "seconds": round(seconds, 1)}
        for m in METHODS:
            row[m] = miou(inter[m])
            row[f"{m}_points"] = float(np.mean(points[m]))
            row[f"{m}_per_class"] = {int(k): (i / u if u else 1.0) for k, (i, u) in inter[m].items()}
        rows.append(row)
        print(f"{dataset:<24}{setting:<8}{shots:>3}" + "".join(f"{row[m]:>8.3f}" for m in METHODS)
              + "".join(f"{row[m + '_points']:>7.1f}" for m in METHODS) + f"{'yes' if row['cps'] > row['dense-points'] else 'NO':>6}{row['seconds']:>7.0f}",
              flush=True)

    header = f"{'dataset':<24}{'setting':<8}{'k':>3}" + "".join(f"{m[:7]:>8}" for m in METHODS) + "".join(f"{'n_' + m[:4]:>7}" for m in METHODS) + f"{'C>D':>6}{'s':>7}"
    print(f"SAM: {sam.source} ({sam.model_type}); severity {args.severity}; cps {tools['cps'].config.sparsify}/{tools['cps'].config.prompt_mode}")
    print(header)
    print("-" * len(header), flush=True)
    for name in args.datasets.split(","):
        ds = load_builtin(name)
        ref_pool, tgt_pool = list(ds.cases("train")), list(ds.cases(args.target_split))
        classes = sorted({k for c in tgt_pool for k in c.foreground_classes()})
        for shots in shots_list:
            rng = np.random.default_rng([args.seed, shots, sum(map(ord, name))])
            episodes = make_episodes(ref_pool, tgt_pool, classes, shots, args.episodes, args.min_area, rng)
            for centre in ["A"] + centres:
                t0 = time.time()
                inter, points = run_setting(tools, episodes, shifter(centre))
                record(name, "in" if centre == "A" else f"A->{centre}", shots, inter, points, time.time() - t0)
    if not args.no_cross_modality:
        lesion, ct = load_builtin("mni-lesion"), load_builtin("ct-phantom")
        nodule = next(k for k, v in ct.cases("test")[0].class_names.items() if v == "nodule")
        for shots in shots_list:
            rng = np.random.default_rng([args.seed, shots, 7])
            refs_pool = [c for c in lesion.cases("train") if int((c.label == 1).sum()) >= args.min_area]
            tgts = [c for c in ct.cases(args.target_split) if int((c.label == nodule).sum()) >= args.min_area]
            episodes = []
            for i in range(args.episodes):
                picks = rng.choice(len(refs_pool), size=shots, replace=False)
                episodes.append(Episode(1, tgts[int(rng.integers(len(tgts)))], [binary(refs_pool[int(j)], 1) for j in picks]))
            t0 = time.time()
            inter, points = run_setting(xtools, episodes, lambda c: c, cls_target=nodule)
            record("MR lesion->CT nodule", "x-mod", shots, inter, points, time.time() - t0)

    cross = [r for r in rows if r["setting"] != "in"]
    wins = sum(r["cps"] > r["dense-points"] for r in cross)
    print(f"(mIoU: per-class IoU summed over episodes, mean over classes; n_*: points per episode; "
          f"CPS > dense points in {wins}/{len(cross)} cross-domain settings; {time.time() - t_all:.0f} s)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"checkpoint": sam.source, "severity": args.severity, "episodes": args.episodes, "cps_config": overrides,
                       "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
