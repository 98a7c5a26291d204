"""Play episodes with an agent and keep what a person wants to look at: numbers and frames.

    from medagent.agents.play import play
    rows = play({"dataset": "mni-lesion"}, agent="expert", episodes=5, out="play-out")

Each episode gets a folder `out/episode-XX/` with the observation the agent saw at every step
(`step-YY.png`), the final rendered overlay with its prompts (`final.png`) and `actions.json`; `out/episodes.json`
holds the per-episode numbers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def play(env_settings: dict[str, Any], agent: str = "expert", episodes: int = 5, out: str | Path | None = None,
         seed: int = 0, agent_kwargs: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Play `episodes` episodes of `InteractiveSegEnv(**env_settings)` with agent `agent`.

    Returns one dict per episode: case id, instruction, Dice, IoU, turns, episode score, summed reward, actions.
    Frames are written under `out` when given.
    """
    from PIL import Image

    from medagent.agents import make_agent, run_episode
    from medagent.envs import InteractiveSegEnv

    env = InteractiveSegEnv(render_mode="rgb_array", **env_settings)
    policy = make_agent(agent, **(agent_kwargs or {}))
    rows = []
    for index in range(episodes):
        result = run_episode(env, policy, seed=int(np.random.SeedSequence([seed, index]).generate_state(1)[0]))
        episode = env.unwrapped.episode
        row = {
            "episode": index,
            "case": episode.case.id,
            "instruction": result.reset_info.get("instruction", episode.target.instruction if hasattr(episode.target, "instruction") else ""),
            "dice": result.dice,
            "iou": result.iou,
            "turns": result.turns,
            "episode_score": result.score,
            "total_reward": result.total_reward,
            "actions": [s.action for s in result.steps],
        }
        rows.append(row)
        if out is not None:
            folder = Path(out) / f"episode-{index:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for k, step in enumerate(result.steps):
                Image.fromarray(step.observation["image"]).save(folder / f"step-{k:02d}.png")
            Image.fromarray(env.render()).save(folder / "final.png")
            (folder / "actions.json").write_text(json.dumps(
                [{"action": s.action, "reward": s.reward, "dice": s.info.get("dice")} for s in result.steps], indent=2))
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "episodes.json").write_text(json.dumps(rows, indent=2))
    env.close()
    return rows
