"""Generating, storing and exporting trajectories (all through InteractiveSegEnv).

    from functools import partial
    from medagent.envs import InteractiveSegEnv
    from medagent.trajectories import GenerateConfig, generate, export_trl
    generate(partial(InteractiveSegEnv, dataset="phantom"), "runs/traj", GenerateConfig(episodes=64, workers=2))
    export_trl("runs/traj", "runs/sft")
"""

from medagent.trajectories.export import FINAL_ANSWER, episode_messages, export_trl, is_val_subject, message_features, show
from medagent.trajectories.generate import GenerateConfig, episode_seed, generate, load_trajectories

__all__ = [
    "FINAL_ANSWER", "GenerateConfig", "episode_messages", "episode_seed", "export_trl", "generate", "is_val_subject",
    "load_trajectories", "message_features", "show",
]
