"""Agents that play InteractiveSegEnv by writing tool-call messages: the expert and honest baselines.

    from medagent.agents import ExpertAgent, run_episode
    result = run_episode(env, ExpertAgent(), seed=0)
    result.dice, result.turns, result.score
"""

from medagent.agents.base import Agent, EpisodeResult, Step, run_episode
from medagent.agents.baselines import AutoAgent, MeanBoxAgent, OracleBoxAgent, RandomAgent
from medagent.agents.expert import ExpertAgent, ExpertConfig, interior_point, largest_error_regions
from medagent.agents.regions import BlobAgent, RankedRegionsAgent, RegionExpertAgent, instruction_rank
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
    "expert-regions": RegionExpertAgent,
    "ranked-regions": RankedRegionsAgent,
    "blob": BlobAgent,
}


def make_agent(name: str, **kwargs) -> Agent:
    """Build an agent by name: one of `AGENTS`, "vlm" (a VLM policy; kwargs: model=folder, ...) or "policy" (the
    trained policy; kwargs: policy="shipped" for `medagent/weights/policy-tiny`, or a local model folder).

    The VLM agents are imported only when asked for, since transformers is slow to import.
    """
    if name in ("vlm", "policy"):
        from medagent.agents.vlm import VLMPolicyAgent

        if name == "policy":
            policy = kwargs.pop("policy", "shipped")
            if policy in (None, "shipped"):
                from medagent.weights import weights_path

                policy = weights_path("policy-tiny")
            kwargs["model"] = policy
        agent = VLMPolicyAgent(**kwargs)
        agent.name = name
        return agent
    if name not in AGENTS:
        raise ConfigError(f"unknown agent {name!r}; choose from {', '.join([*AGENTS, 'vlm', 'policy'])}")
    return AGENTS[name](**kwargs)


__all__ = [
    "AGENTS", "Agent", "AutoAgent", "BlobAgent", "BoxExpertAgent", "RankedRegionsAgent", "RegionExpertAgent", "instruction_rank", "EpisodeResult", "ExpertAgent", "ExpertConfig", "MeanBoxAgent", "OracleBoxAgent",
    "RandomAgent", "Step", "interior_point", "largest_error_regions", "make_agent", "run_episode",
]
