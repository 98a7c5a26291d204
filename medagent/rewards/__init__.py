"""Reward terms (outcome, process) and their composition into the episode score.

    from medagent.rewards import EpisodeTrace, CallRecord, RewardConfig, episode_score, PotentialReward
    trace = EpisodeTrace([CallRecord("add_bbox", "segment", iou=0.6, dice=0.75), CallRecord("stop_action", "stop")])
    episode_score(trace)   # MedSAM-Agent's released formula by default

Per-step rewards are potential differences of the episode score, so they sum to it (see `score`).
"""

from medagent.rewards.config import DEFAULT_TOOL_COSTS, RewardConfig
from medagent.rewards.score import PotentialReward, episode_score, medsam_agent_score, reward_terms
from medagent.rewards.trace import CALL_OUTCOMES, CallRecord, EpisodeTrace

__all__ = [
    "CALL_OUTCOMES", "CallRecord", "DEFAULT_TOOL_COSTS", "EpisodeTrace", "PotentialReward", "RewardConfig",
    "episode_score", "medsam_agent_score", "reward_terms",
]
