"""Bench 1: cost of a k-turn interactive episode relative to a 1-turn episode, with and without the
embedding cache, measured side by side in one run.

    python bench/bench_sam_cost.py                     # vit_b (random init, 1024 px) and the tiny SAM
    python bench/bench_sam_cost.py --models tiny --turns 5 --repeats 5

An episode = one image, a box, then k - 1 corrective clicks through a `SamSession` (box + all clicks +
previous logits at every turn). Every episode starts with an empty cache (a new image), so the first
turn always pays for the encoder; with the cache later turns reuse the embedding, without it
(`cache_entries=0`) every turn re-encodes. vit_b is randomly initialised: the cost structure is the
real one (1024 px encoder, 256-wide decoder), the masks are meaningless. Goal on vit_b: k = 5 turns
cost <= 1.3x one turn with the cache (about 5x without).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def make_case(size: int, seed: int = 0):
    from medagent.data.case import Case

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    label = (((yy - size * 0.45) / (size * 0.2)) ** 2 + ((xx - size * 0.5) / (size * 0.25)) ** 2 <= 1).astype(np.uint8)
    image = (0.3 + 0.5 * label + 0.05 * rng.standard_normal((size, size))).astype(np.float32)[None]
    return Case(image=image, label=label, modality="MR", id=f"bench{seed}")


def episode(tool, case, k: int) -> float:
    """Seconds for a k-turn episode on a fresh cache: a box, then k - 1 clicks."""
    tool.clear_cache()
    s = tool.session(case)
    h, w = case.shape
    clicks = [(w * 0.5, h * 0.45, True), (w * 0.3, h * 0.3, False), (w * 0.6, h * 0.5, True), (w * 0.7, h * 0.7, False)]
    t = time.perf_counter()
    s.set_box([w * 0.2, h * 0.2, w * 0.8, h * 0.7])
    for i in range(k - 1):
        x, y, pos = clicks[i % len(clicks)]
        s.add_point((x, y), pos)
    return time.perf_counter() - t


def make_tool(name: str, cache: bool):
    import torch

    from medagent.tools.sam.model import OFFICIAL_ARCHS, TINY_ARCH, build_sam
    from medagent.tools.sam.preprocess import PRESETS
    from medagent.tools.sam.tool import SHIPPED_WEIGHTS, SamConfig, SamTool

    cfg = SamConfig(cache_entries=8 if cache else 0)
    if name == "tiny":
        if (SHIPPED_WEIGHTS / "model.safetensors").is_file():
            return SamTool.from_pretrained(SHIPPED_WEIGHTS, cache_entries=cfg.cache_entries)
        torch.manual_seed(0)
        return SamTool(build_sam(TINY_ARCH), PRESETS["tiny"], TINY_ARCH, cfg)
    torch.manual_seed(0)
    return SamTool(build_sam(OFFICIAL_ARCHS[name]), PRESETS["sam"], OFFICIAL_ARCHS[name], cfg, model_type=name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="vit_b,tiny")
    ap.add_argument("--turns", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=0, help="episodes per setting (0: 1 for vit_*, 5 for tiny)")
    ap.add_argument("--size", type=int, default=512, help="image side in pixels")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="the tiny SAM only, 256 px, 3 repeats")
    args = ap.parse_args()
    if args.quick:
        args.models, args.size, args.repeats = "tiny", 256, 3

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    case = make_case(args.size)
    k = args.turns
    print(f"image {args.size}x{args.size}, {k}-turn episode vs 1-turn episode; torch threads {torch.get_num_threads()}, device {args.device}")
    header = f"{'model':<7}{'cache':<7}{'1 turn ms':>11}{f'{k} turns ms':>12}{'ratio':>8}{'ms/turn':>9}{'encode ms':>11}{'decode ms':>11}"
    print(header)
    print("-" * len(header))
    for name in args.models.split(","):
        reps = args.repeats or (1 if name.startswith("vit") else 5)
        for cache in (True, False):
            tool = make_tool(name, cache)
            tool.predictor.model.to(args.device)
            tool.predictor.device = torch.device(args.device)
            if not name.startswith("vit"):  # warm-up (allocations); negligible beside a vit encoder pass
                episode(tool, case, 1)
            one, many = [], []
            for _ in range(reps):  # interleaved, so both see the same machine load
                one.append(episode(tool, case, 1))
                many.append(episode(tool, case, k))
            t1, tk = float(np.median(one)), float(np.median(many))
            s = tool.session(case)  # per-call split of the last turn: encoder (0 on a cache hit) and decoder
            tool.clear_cache()
            enc = s.set_box([10, 10, 100, 100]).extras["timings_ms"]["encode"]
            tim = s.add_point((50, 50)).extras["timings_ms"]
            print(f"{name:<7}{'on' if cache else 'off':<7}{1e3 * t1:>11.1f}{1e3 * tk:>12.1f}{tk / t1:>8.2f}{1e3 * tk / k:>9.1f}"
                  f"{enc:>11.1f}{tim['decode']:>11.1f}")
            del tool
    print("ratio = median k-turn episode time / median 1-turn episode time, measured interleaved in this run")


if __name__ == "__main__":
    main()
