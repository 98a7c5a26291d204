"""The numbers behind the `ranked-regions` rule (medagent.agents.regions): how often it makes the choice the
ground-truth-reading `expert-regions` makes, and what its single-target rule (keep the automatic mask) is worth.

    python bench/bench_region_rules.py              # 80 training episodes, 40 test episodes per dataset
    python bench/bench_region_rules.py --quick      # 16 / 8

Part 1 (agreement), mni-lesion training split: after `auto_segment`, both agents choose between keeping the
mask and prompting SAM with one listed region's box; they agree when they keep the mask both or pick the same
box. The policy imitates `ranked-regions`, so its agreement with the GT-choosing reference bounds what
imitation of a GT-free rule can give.

Part 3 (where the automatic segmenter proposes more regions than there are targets), mni-lesion: in how many
multi-target episodes the automatic mask lists more regions than the instruction's instance count, on the
train split (the segmenter's own slices), a train split drawn with an unseen lesion seed, val and test. Those
are the episodes where the rule has to drop a false positive before counting.

Part 4 (the shortcut), mni-lesion test split: `copy-rank`, which names region k whenever the instruction asks
for the k-th of several targets (the listed order without dropping anything), against `ranked-regions` on the
same episodes, and on how many episodes the two choose differently. A policy that learned only to copy k
scores what `copy-rank` scores. With `--recipe DIR` (a `medagent train policy` folder), also the share of its
teacher episodes per split where the teacher's `select_region` number differs from k: the examples that
tell the rule from the shortcut.

Part 2 (the single-target rule), test splits of mni-lesion and ct-phantom, the same episodes for both rules:
`ranked-regions` keeps the automatic mask when the instruction names one target; the variant prompts SAM with
the box of the largest listed region instead. Final Dice, mean over the episodes.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from medagent.agents.regions import RankedRegionsAgent, RegionExpertAgent, instruction_rank_and_count  # noqa: E402
from medagent.envs import InteractiveSegEnv, parse_message  # noqa: E402
from medagent.envs.regions import region_boxes  # noqa: E402


class BoxSingleTargetAgent(RankedRegionsAgent):
    """`ranked-regions`, except that an instruction naming one target prompts SAM with the largest listed region."""

    name = "ranked-regions-box-single"

    def choose(self, ep: Any) -> str:
        from medagent.envs import format_call

        regions = region_boxes(ep.mask, ep.config.region_min_area)[: ep.config.max_regions]
        if regions and instruction_rank_and_count(ep.target.instruction)[1] == 1:
            largest = max(range(len(regions)), key=lambda i: regions[i][1])
            return format_call("select_region", {"region": largest + 1})
        return super().choose(ep)


class CopyRankAgent(RankedRegionsAgent):
    """The shortcut: `select_region` with the instruction's rank k whenever it names several targets."""

    name = "copy-rank"

    def choose(self, ep: Any) -> str:
        from medagent.envs import format_call

        rank, count = instruction_rank_and_count(ep.target.instruction)
        listed = region_boxes(ep.mask, ep.config.region_min_area)[: ep.config.max_regions]
        if count == 1 or rank > len(listed):
            return format_call("stop_action")
        return format_call("select_region", {"region": rank})


def shortcut(episodes: int, seed: int, image_size: int) -> tuple[float, float, int]:
    """(ranked-regions Dice, copy-rank Dice, episodes where their Dice differs) on the mni-lesion test split."""
    from medagent.eval.agent_eval import evaluate_agents

    df = evaluate_agents({"dataset": "mni-lesion", "split": "test", "image_size": image_size},
                         [RankedRegionsAgent(), CopyRankAgent()], episodes=episodes, seed=seed, progress=False)
    ranked = df[df.agent == "ranked-regions"].set_index("episode")["dice"]
    copy = df[df.agent == "copy-rank"].set_index("episode")["dice"]
    return float(ranked.mean()), float(copy.mean()), int((abs(ranked - copy) > 1e-9).sum())


def teacher_shares(recipe: str) -> dict[str, tuple[int, int]]:
    """Per teacher split of a policy recipe folder's mni-lesion SFT data: (episodes whose teacher calls
    select_region, those naming a region other than the instruction's rank k)."""
    import glob
    import json

    import datasets

    from medagent.agents.regions import instruction_rank

    shares: dict[str, list[int]] = {}
    for folder in sorted(glob.glob(f"{recipe}/sft-data/mni-lesion-*")):
        split = "val" if "-val-" in folder else "train"
        counts = shares.setdefault(split, [0, 0])
        for messages in datasets.load_from_disk(folder)["train"]["messages"]:
            user = next(m for m in messages if m["role"] == "user")
            k = instruction_rank(" ".join(c["text"] or "" for c in user["content"] if c["type"] == "text"))
            calls = [c["function"] for m in messages if m["role"] == "assistant" for c in (m.get("tool_calls") or [])]
            chosen = [c["arguments"] for c in calls if c["name"] == "select_region"]
            if chosen:
                arguments = chosen[0] if isinstance(chosen[0], dict) else json.loads(chosen[0])
                counts[0] += 1
                counts[1] += int(arguments["region"]) != k
    return {split: (a, b) for split, (a, b) in shares.items()}


def chosen_box(message: str, ep: Any) -> list[int] | None:
    """The box a region agent's second message prompts SAM with (None: it keeps the mask)."""
    call = parse_message(message).calls[0]
    if call.name == "add_bbox":
        return list(call.arguments["bbox_2d"])
    if call.name == "select_region":
        regions = region_boxes(ep.mask, ep.config.region_min_area)[: ep.config.max_regions]
        return regions[call.arguments["region"] - 1][0]
    return None


def agreement(episodes: int, seed: int, image_size: int) -> tuple[int, int, int]:
    """(agreeing episodes, episodes, episodes with more than one target) on the mni-lesion training split."""
    env = InteractiveSegEnv(dataset="mni-lesion", split="train", image_size=image_size)
    ranked, expert = RankedRegionsAgent(), RegionExpertAgent()
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(episodes)]
    agree = several = 0
    for episode_seed in seeds:
        obs, _ = env.reset(seed=episode_seed)
        env.step(ranked.act(obs, env))  # auto_segment: the same first call for both
        ep = env.unwrapped.episode
        several += instruction_rank_and_count(ep.target.instruction)[1] > 1
        agree += chosen_box(ranked.choose(ep), ep) == chosen_box(expert.choose(ep), ep)
    env.close()
    return agree, episodes, several


def extra_regions(split: str, dataset_seed: int, episodes: int, seed: int, image_size: int) -> tuple[int, int, float]:
    """(multi-target episodes, those listing more regions than targets, mean Dice of the automatic mask)."""
    env = InteractiveSegEnv(dataset="mni-lesion", split=split, dataset_seed=dataset_seed, image_size=image_size)
    agent = RankedRegionsAgent()
    multi = extra = 0
    dice = []
    for episode_seed in np.random.SeedSequence(seed + 1).generate_state(episodes):
        obs, _ = env.reset(seed=int(episode_seed))
        env.step(agent.act(obs, env))  # auto_segment
        ep = env.unwrapped.episode
        count = instruction_rank_and_count(ep.target.instruction)[1]
        listed = len(region_boxes(ep.mask, ep.config.region_min_area)[: ep.config.max_regions])
        multi += count > 1
        extra += count > 1 and listed > count
        dice.append(ep.dice)
    env.close()
    return multi, extra, float(np.mean(dice))


def single_target_rule(dataset: str, episodes: int, seed: int, image_size: int) -> tuple[float, float]:
    """Mean final Dice of (ranked-regions, the box-single-target variant) on the same test episodes."""
    from medagent.eval.agent_eval import evaluate_agents

    df = evaluate_agents({"dataset": dataset, "split": "test", "image_size": image_size},
                         [RankedRegionsAgent(), BoxSingleTargetAgent()], episodes=episodes, seed=seed)
    means = df.groupby("agent")["dice"].mean()
    return float(means["ranked-regions"]), float(means["ranked-regions-box-single"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16 training and 8 test episodes")
    parser.add_argument("--train-episodes", type=int, default=80)
    parser.add_argument("--test-episodes", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128, help="the shipped policy's image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="", help="a `medagent train policy` folder: count its teacher episodes too")
    args = parser.parse_args()
    if args.quick:
        args.train_episodes, args.test_episodes = 16, 8

    agree, n, several = agreement(args.train_episodes, args.seed, args.image_size)
    print("\n## ranked-regions vs expert-regions (mni-lesion train split, the same state after auto_segment)\n")
    print("| episodes | of them with several targets | same choice | agreement |")
    print("|---|---|---|---|")
    print(f"| {n} | {several} | {agree} | {100.0 * agree / n:.1f}% |")

    print(f"\n## More regions listed than targets (mni-lesion, {args.test_episodes} episodes per row, after auto_segment)\n")
    print("| split | lesion seed | multi-target episodes | listing more regions than targets | automatic mask Dice |")
    print("|---|---|---|---|---|")
    for split, lesion_seed in (("train", 0), ("train", 45), ("val", 0), ("test", 0)):
        multi, extra, dice = extra_regions(split, lesion_seed, args.test_episodes, args.seed, args.image_size)
        print(f"| {split} | {lesion_seed} | {multi} | {extra} | {dice:.3f} |")

    ranked, copy, differ = shortcut(args.test_episodes, args.seed, args.image_size)
    print(f"\n## The shortcut (mni-lesion test split, {args.test_episodes} episodes, final Dice)\n")
    print("| ranked-regions | copy-rank (select region k) | episodes where they differ |")
    print("|---|---|---|")
    print(f"| {ranked:.3f} | {copy:.3f} | {differ} |")
    if args.recipe:
        print(f"\n## Teacher episodes of {args.recipe} (mni-lesion) where the rule differs from the shortcut\n")
        print("| split | episodes with select_region | naming a region other than k | share |")
        print("|---|---|---|---|")
        for split, (selects, other) in teacher_shares(args.recipe).items():
            print(f"| {split} | {selects} | {other} | {100.0 * other / max(selects, 1):.1f}% |")

    print(f"\n## Single-target rule ({args.test_episodes} test episodes per dataset, final Dice)\n")
    print("| dataset | keep the automatic mask (ranked-regions) | box of the largest region |")
    print("|---|---|---|")
    for dataset in ("mni-lesion", "ct-phantom"):
        keep, box = single_target_rule(dataset, args.test_episodes, args.seed, args.image_size)
        print(f"| {dataset} | {keep:.3f} | {box:.3f} |")


if __name__ == "__main__":
    main()
