"""Benchmarks of the interactive segmentation environment (issue 7). Prints tables; asserts nothing.

    python bench/bench_env.py --quick

1. Env step overhead excluding tool time at 256x256 (a tool that returns a precomputed mask; goal <= 2 ms).
2. Expert episodes/s with the tiny SAM (the shipped one; an untrained tiny SAM of the same shape if none
   is shipped, labelled as such).
3. AsyncVectorEnv with 2 workers vs 1 (steps/s ratio, same tool).
4. Per builtin dataset: final Dice, mean turns and episode score of Expert (the hybrid mix, 30% click-only
   episodes), Expert-box (every episode starts from a box), OracleBox, MeanBox, Auto and Random on the same
   episodes with the registry's tools (unavailable tools show up as low scores; the table says which tools
   loaded). Goal: Expert >= OracleBox + 0.02 Dice on every dataset.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


class InstantTool:
    """A promptable tool that costs nothing: returns the mask it was built with."""

    inputs = frozenset({"boxes", "points", "point_labels", "mask_logits"})

    def __init__(self, mask: np.ndarray) -> None:
        from medagent.tools.base import Prediction

        self.prediction = Prediction(mask=mask.astype(np.uint8))

    def predict(self, case, **inputs):
        return self.prediction


def _square_dataset(size: int = 256):
    from medagent.data.case import Case
    from medagent.data.dataset import CaseList, Dataset, DatasetInfo

    label = np.zeros((size, size), np.uint8)
    label[size // 4: size // 2, size // 3: 2 * size // 3] = 1
    case = Case(image=(label * 100.0 + 10.0)[None], label=label, modality="MR", class_names={0: "background", 1: "square"})
    info = DatasetInfo("square", "one square", "MR", case.class_names, "synthetic", "CC0", "bench")
    return Dataset(info, {"train": CaseList.from_cases([case])}), label


def bench_step_overhead(steps: int) -> float:
    from medagent.envs import InteractiveSegEnv, format_call

    dataset, label = _square_dataset(256)
    env = InteractiveSegEnv(dataset=dataset, tools={"sam": InstantTool(label)}, load_tools=False, image_size=256,
                            max_turns=10**6, max_invalid=10**6)
    env.reset(seed=0)
    message = format_call("add_point", {"point_2d": [500, 400], "point_type": "positive"})
    env.step(message)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        env.step(message)
        times.append(time.perf_counter() - t)
    return 1000.0 * float(np.median(times))


def tiny_sam():
    """The shipped tiny SAM, or an untrained one of a tiny shape; returns (tool, label)."""
    from medagent.errors import ToolError
    from medagent.tools import load_tool

    try:
        return load_tool("sam"), "shipped tiny SAM"
    except ToolError:
        import torch

        from medagent.tools.sam.model import SamArchConfig, build_sam
        from medagent.tools.sam.preprocess import Preprocessing
        from medagent.tools.sam.tool import SamTool

        torch.manual_seed(0)
        arch = SamArchConfig(image_size=256, encoder_embed_dim=96, encoder_depth=2, encoder_num_heads=2,
                             encoder_global_attn_indexes=(1,), prompt_embed_dim=64, decoder_mlp_dim=128,
                             decoder_num_heads=2, iou_head_hidden_dim=64)
        return SamTool(build_sam(arch).eval(), Preprocessing(), arch), "UNTRAINED tiny SAM (no shipped weights)"


def make_phantom_env(sam=None):
    from medagent.envs import InteractiveSegEnv

    tools = {"sam": sam} if sam is not None else None
    return InteractiveSegEnv(dataset="phantom", image_size=256, tools=tools)


def bench_expert(episodes: int) -> tuple[float, str]:
    from medagent.agents import ExpertAgent, run_episode

    sam, label = tiny_sam()
    env = make_phantom_env(sam)
    run_episode(env, ExpertAgent(), seed=0)  # warm-up (imports, first embedding)
    t = time.perf_counter()
    for s in range(episodes):
        run_episode(env, ExpertAgent(), seed=s + 1)
    return episodes / (time.perf_counter() - t), label


def _sam_env():
    return make_phantom_env(tiny_sam()[0])


def bench_async(steps: int) -> tuple[float, float]:
    import gymnasium as gym

    from medagent.envs import format_call

    rates = []
    for n in (1, 2):
        vec = gym.vector.AsyncVectorEnv([_sam_env] * n, shared_memory=False)
        vec.reset(seed=list(range(n)))
        actions = tuple(format_call("add_point", {"point_2d": [400 + 10 * i, 500], "point_type": "positive"}) for i in range(n))
        vec.step(actions)
        t = time.perf_counter()
        for _ in range(steps):
            vec.step(actions)  # autoreset keeps them going
        rates.append(n * steps / (time.perf_counter() - t))
        vec.close()
    return rates[0], rates[1]


def bench_agents(datasets: list[str], episodes: int) -> list[tuple]:
    """Per dataset, every agent on the same episodes (`medagent.eval.agent_eval`, paired seeds)."""
    from medagent.envs import InteractiveSegEnv
    from medagent.eval.agent_eval import evaluate_agents

    rows = []
    agents = ["expert", "expert-box", "oracle-box", "mean-box", "auto", "random"]
    for name in datasets:
        settings = {"dataset": name, "image_size": 256, "split": "test"}
        try:
            env = InteractiveSegEnv(**settings)
        except Exception as exc:  # noqa: BLE001 - a dataset not built yet is reported, not fatal
            rows.append((name, "-", float("nan"), float("nan"), float("nan"), f"unavailable: {exc}"[:60]))
            continue
        loaded = [k for k in ("sam", "unet", "ifunet", "allukan", "refine", "cps") if env.provider.available(k, automatic=k in ("unet", "ifunet", "allukan"))]
        df = evaluate_agents(settings, agents, episodes=episodes, seed=0)
        for agent in agents:
            part = df[df.agent == agent]
            rows.append((name, agent, part.dice.mean(), part.turns.mean(), part.episode_score.mean(), ",".join(loaded) or "no tools"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few steps/episodes")
    parser.add_argument("--datasets", default="phantom,mni-tissue,mni-lesion,nuclei,ct-phantom")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    n = 50 if args.quick else 500
    print(f"1. env step overhead (256x256, tool time excluded): {bench_step_overhead(n):.2f} ms median  (goal <= 2 ms)")
    rate, label = bench_expert(3 if args.quick else 20)
    print(f"2. expert episodes/s on phantom with the {label}: {rate:.2f}")
    one, two = bench_async(10 if args.quick else 50)
    print(f"3. AsyncVectorEnv steps/s: 1 worker {one:.1f}, 2 workers {two:.1f}, ratio {two / one:.2f}")
    print("4. agents per builtin dataset (test split, registry tools)")
    print(f"   {'dataset':<12} {'agent':<11} {'dice':>6} {'turns':>6} {'score':>6}  tools")
    rows = bench_agents(args.datasets.split(","), 3 if args.quick else 20)
    for name, agent, dice, turns, score, tools in rows:
        print(f"   {name:<12} {agent:<11} {dice:6.3f} {turns:6.2f} {score:6.3f}  {tools}")
    by = {(r[0], r[1]): r[2] for r in rows}
    for expert in ("expert", "expert-box"):
        checks = [(d, by[(d, expert)] - by[(d, "oracle-box")]) for d in args.datasets.split(",") if (d, expert) in by]
        wins = sum(gap >= 0.02 for _, gap in checks)
        print(f"goal {expert} >= oracle-box + 0.02 Dice: {wins}/{len(checks)} datasets ("
              + ", ".join(f"{d} {gap:+.3f}" for d, gap in checks) + ")")


if __name__ == "__main__":
    main()
