"""Agents that play InteractiveSegEnv by writing tool-call messages: the expert and honest baselines.

    from medagent.agents import ExpertAgent, run_episode
    result = run_episode(env, ExpertAgent(), seed=0)
    result.dice, result.turns, result.score
"""

from medagent.agents.base import Agent, EpisodeResult, Step, run_episode
from medagent.agents.baselines import AutoAgent, MeanBoxAgent, OracleBoxAgent, RandomAgent
from medagent.agents.expert import ExpertAgent, ExpertConfig, interior_point, largest_error_regions
from medagent.errors import ConfigError

class BoxExpertAgent(ExpertAgent):
    """The expert without click-only episodes: every episode starts from a box, then corrective clicks."""

    name = "expert-box"

    def __init__(self, config: ExpertConfig | None = None, **overrides) -> None:
        super().__init__(config, **{"click_only_ratio": 0.0, **overrides})


AGENTS = {
    "expert": ExpertAgent,
    "expert-box": BoxExpertAgent,
    "oracle-box": OracleBoxAgent,
    "mean-box": MeanBoxAgent,
    "auto": AutoAgent,
    "random": RandomAgent,
}


def make_agent(name: str, **kwargs) -> Agent:
    """Build an agent by name: one of `AGENTS`, or "vlm" (a VLM policy; kwargs: model=folder, ...).

    The VLM agent is imported only when asked for, since transformers is slow to import.
    """
    if name == "vlm":
        from medagent.agents.vlm import VLMPolicyAgent

        return VLMPolicyAgent(**kwargs)
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; choose from {', '.join([*AGENTS, 'vlm'])}")
    return AGENTS[name](**kwargs)


__all__ = [
    "AGENTS", "Agent", "AutoAgent", "BoxExpertAgent", "EpisodeResult", "ExpertAgent", "ExpertConfig", "MeanBoxAgent", "OracleBoxAgent",
    "RandomAgent", "Step", "interior_point", "largest_error_regions", "make_agent", "run_episode",
]
