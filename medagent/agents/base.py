"""The agent protocol and the loop that plays one episode.

Every agent acts by writing the same text message a policy would (`<tool_call>{...}</tool_call>`), so
expert trajectories, baselines and learned policies all pass through the env's one parser. Agents marked
`uses_ground_truth` (the expert and the oracle box) read the episode's target mask from
`env.unwrapped.episode`; the others see only the observation and, for MeanBoxAgent, training-split labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medagent.envs.episode import Episode


class Agent:
    """Base class: `reset(env, seed)` at the start of an episode, then `act(observation, env) -> message`."""

    name: str = "agent"
    #: True for agents that read the ground truth (experts, oracles): never report them as policies.
    uses_ground_truth: bool = False

    def reset(self, env: Any, seed: int | None = None) -> None:
        """Called after `env.reset`; `seed` makes the agent's own randomness reproducible."""

    def act(self, observation: dict[str, Any], env: Any) -> str:
        raise NotImplementedError

    @staticmethod
    def episode(env: Any) -> Episode:
        """The live episode of an (optionally wrapped) InteractiveSegEnv."""
        return env.unwrapped.episode


@dataclass
class Step:
    """One step of a played episode: the observation the agent saw, its message and what followed."""

    observation: dict[str, Any]
    action: str
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]
    #: One `medagent.envs.ToolTurn` per call the message ran (its answer and the image after it).
    tool_turns: list[Any] = field(default_factory=list)


@dataclass
class EpisodeResult:
    """A played episode: its steps and final numbers."""

    steps: list[Step] = field(default_factory=list)
    reset_info: dict[str, Any] = field(default_factory=dict)
    final_observation: dict[str, Any] | None = None

    @property
    def total_reward(self) -> float:
        return float(sum(s.reward for s in self.steps))

    @property
    def final_info(self) -> dict[str, Any]:
        return self.steps[-1].info if self.steps else self.reset_info

    @property
    def dice(self) -> float:
        return float(self.final_info.get("dice", 0.0))

    @property
    def iou(self) -> float:
        return float(self.final_info.get("iou", 0.0))

    @property
    def turns(self) -> int:
        return int(self.final_info.get("turns", 0))

    @property
    def score(self) -> float:
        return float(self.final_info.get("episode_score", 0.0))


def run_episode(env: Any, agent: Agent, seed: int | None = None, options: dict[str, Any] | None = None,
                max_steps: int = 64) -> EpisodeResult:
    """Reset `env`, let `agent` act until the episode ends, and return every step.

    The agent's seed is derived from `seed`, so (env, agent, seed) replays identically.
    """
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(env, None if seed is None else int(np.random.SeedSequence(seed).generate_state(1)[0]))
    result = EpisodeResult(reset_info=info)
    for _ in range(max_steps):
        action = agent.act(obs, env)
        next_obs, reward, terminated, truncated, info = env.step(action)
        turns = list(getattr(env.unwrapped, "tool_turns", []))
        result.steps.append(Step(obs, action, float(reward), bool(terminated), bool(truncated), info, turns))
        obs = next_obs
        if terminated or truncated:
            break
    result.final_observation = obs
    return result
