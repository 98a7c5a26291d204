"""KAN cost benchmark: SaKAN (each form, with / without Grad-Free Spline) vs a directly stacked KAN vs pykan.

For one KA linear layer, one KAonv 3x3 layer and the whole ALL U-KAN network at matched widths, it prints
side by side, measured in this run:
- parameters;
- bytes saved for backward (torch.autograd.graph.saved_tensors_hooks, unique storages counted once);
- peak resident memory added by one training step (forward + backward + SGD step), each configuration
  in its own subprocess (resource.getrusage ru_maxrss minus the RSS just before the step: on a CPU there
  is no max_memory_allocated);
- median time per training step;
- optionally (`--dice-steps N`) the validation Dice of each network variant after N training steps on
  mni-tissue (same seed, data and budget), so memory savings can be read against accuracy.

    python bench/bench_kan_cost.py            # full table
    python bench/bench_kan_cost.py --quick    # smaller inputs, fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

VARIANTS = {
    # name: (layer, form, grad_free)
    "sakan-shared (grad-free)": ("sakan", "shared", True),
    "sakan-shared (full grad)": ("sakan", "shared", False),
    "sakan-per_output (grad-free)": ("sakan", "per_output", True),
    "sakan-per_output (full grad)": ("sakan", "per_output", False),
    "sakan-sprecher (grad-free)": ("sakan", "sprecher", True),
    "sakan-sprecher (full grad)": ("sakan", "sprecher", False),
    "stacked KAN (efficient-kan style)": ("stacked", "shared", False),
    "pykan KANLayer": ("pykan", "", False),
}
SCOPES = ("linear", "kaonv", "network")


def build(scope: str, variant: str, quick: bool) -> tuple[nn.Module, torch.Tensor]:
    """Module and input of one configuration (matched widths across variants)."""
    from medagent.tools.nets.allukan import ALLUKAN
    from medagent.tools.nets.kan import KAonv2d, SaKANLinear, StackedKANLinear

    layer, form, grad_free = VARIANTS[variant]
    torch.manual_seed(0)
    if scope == "linear":
        x = torch.rand(1024 if quick else 4096, 64) * 2 - 1
        if layer == "pykan":
            from kan.KANLayer import KANLayer  # optional dependency

            return KANLayer(in_dim=64, out_dim=64, num=5, k=3), x
        if layer == "stacked":
            return StackedKANLinear(64, 64), x
        return SaKANLinear(64, 64, form=form, grad_free=grad_free), x
    if layer == "pykan":
        raise NotImplementedError("pykan has no convolution")
    if scope == "kaonv":
        x = torch.randn(2 if quick else 4, 16, 32 if quick else 64, 32 if quick else 64)
        return KAonv2d(16, 16, 3, layer=layer, form=form, grad_free=grad_free), x
    x = torch.rand(2, 1, 48 if quick else 64, 48 if quick else 64)
    return ALLUKAN(1, 4, width=8, depth=3, layer=layer, form=form, grad_free=grad_free), x


def _forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = module(x)
    return out[0] if isinstance(out, tuple) else out  # pykan's KANLayer returns (y, preacts, postacts, postspline)


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one forward pass (unique storages)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = max(seen.get(storage.data_ptr(), 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = _forward(module, x)
    out.float().square().mean().backward()
    return sum(seen.values())


def child(scope: str, variant: str, quick: bool) -> dict:
    """Measure one configuration in this (fresh) process."""
    torch.set_num_threads(1)
    try:
        module, x = build(scope, variant, quick)
    except (ImportError, NotImplementedError) as exc:
        return {"skip": f"{type(exc).__name__}: {exc}"}
    params = sum(p.numel() for p in module.parameters())
    opt = torch.optim.SGD(module.parameters(), lr=1e-3)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        _forward(module, x).float().square().mean().backward()
        opt.step()

    rss_before = _current_rss()
    step()  # first step: its peak is the memory a training step needs
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    saved = saved_bytes(module, x)
    times = []
    for _ in range(2 if quick else 5):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"params": params, "saved_bytes": saved, "peak_step_bytes": max(0, peak - rss_before),
            "step_s": statistics.median(times)}


def _current_rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def dice_after_training(variant: str, steps: int, width: int) -> float:
    """Val mean Dice of ALL U-KAN (this variant) after `steps` steps on mni-tissue (seed 0, crop 64)."""
    import tempfile

    from medagent.train.segmenter_config import ToolTrainerConfig
    from medagent.train.tool_trainer import train_tool

    layer, form, grad_free = VARIANTS[variant]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = ToolTrainerConfig(model="allukan", max_steps=steps, batch_size=4, crop_size=64, val_every=steps, seed=0,
                                num_threads=1, progress=False, output_dir=tmp, max_val_cases=10,
                                model_config={"width": width, "depth": 3, "layer": layer, "form": form, "grad_free": grad_free})
        train_tool(cfg)
        with open(os.path.join(tmp, "metrics.jsonl")) as fh:
            return json.loads(fh.read().splitlines()[-1])["val"]["mean_dice"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller inputs and fewer timing repeats")
    parser.add_argument("--dice-steps", type=int, default=0, help="also train each network variant this many steps and report val Dice")
    parser.add_argument("--dice-width", type=int, default=4, help="network width for the Dice column")
    parser.add_argument("--scopes", default=",".join(SCOPES))
    parser.add_argument("--variants", default="", help="comma-separated subset of variant names")
    parser.add_argument("--child", nargs=2, metavar=("SCOPE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], args.quick)))
        return
    variants = [v for v in VARIANTS if not args.variants or v in args.variants.split(",")]
    rows = []
    for scope in args.scopes.split(","):
        for variant in variants:
            cmd = [sys.executable, __file__, "--child", scope, variant] + (["--quick"] if args.quick else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            try:
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                result = {"skip": (proc.stderr.strip().splitlines() or ["failed"])[-1][:80]}
            if scope == "network" and args.dice_steps and "skip" not in result:
                result["dice"] = dice_after_training(variant, args.dice_steps, args.dice_width)
            rows.append((scope, variant, result))
            print(f"  measured {scope:8s} {variant}", file=sys.stderr, flush=True)
    print_table(rows, args)


def print_table(rows: list, args: argparse.Namespace) -> None:
    ref = {scope: r for scope, v, r in rows if v.startswith("stacked") and "skip" not in r}
    head = f"{'scope':8s} | {'variant':34s} | {'params':>9s} | {'saved for bwd':>13s} | {'peak step RSS':>13s} | {'s/step':>7s} | {'mem x less vs stacked (saved / RSS)':>35s} | {'params x less':>13s}"
    if args.dice_steps:
        head += f" | {'val Dice':>8s}"
    print(head)
    print("-" * len(head))
    for scope, variant, r in rows:
        if "skip" in r:
            print(f"{scope:8s} | {variant:34s} | skipped: {r['skip']}")
            continue
        base = ref.get(scope)
        ratio = ""
        if base:
            ratio = f"{base['saved_bytes'] / max(r['saved_bytes'], 1):.1f}x / {base['peak_step_bytes'] / max(r['peak_step_bytes'], 1):.1f}x"
        pratio = f"{base['params'] / r['params']:.1f}x" if base else ""
        line = (f"{scope:8s} | {variant:34s} | {r['params']:9d} | {_fmt_bytes(r['saved_bytes']):>13s} | "
                f"{_fmt_bytes(r['peak_step_bytes']):>13s} | {r['step_s']:7.3f} | {ratio:>35s} | {pratio:>13s}")
        if args.dice_steps:
            line += f" | {r.get('dice', float('nan')):8.3f}"
        print(line)
    print(f"\n(threads=1; quick={args.quick}; torch {torch.__version__}; peak step RSS = ru_maxrss - RSS before the step, own subprocess)")


if __name__ == "__main__":
    main()
