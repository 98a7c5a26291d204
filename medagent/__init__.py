"""medagent: tool-calling agents for medical image segmentation, and the tools themselves.

Importing the package registers the environments with gymnasium by entry-point strings only (nothing of
torch or of the environment code is imported until `gymnasium.make` builds one):

    import gymnasium, medagent
    env = gymnasium.make("medagent/InteractiveSeg-v0", dataset="phantom")
"""

__version__ = "0.1.0"

ENV_ID = "medagent/InteractiveSeg-v0"
DICT_ENV_ID = "medagent/InteractiveSegDict-v0"


def register_envs() -> None:
    """Register `ENV_ID` (text actions) and `DICT_ENV_ID` (Dict actions) with gymnasium; idempotent."""
    import gymnasium

    for env_id, entry in ((ENV_ID, "medagent.envs.env:InteractiveSegEnv"), (DICT_ENV_ID, "medagent.envs.env:DictActionSegEnv")):
        if env_id not in gymnasium.registry:
            gymnasium.register(id=env_id, entry_point=entry)


try:  # gymnasium is a core dependency; a broken install must not make the package unimportable
    register_envs()
except ImportError:  # pragma: no cover
    pass
