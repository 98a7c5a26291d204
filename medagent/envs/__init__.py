"""Gymnasium environment for interactive segmentation with tools, its action parser and renderer.

Importing this package registers `medagent/InteractiveSeg-v0` (text actions) and
`medagent/InteractiveSegDict-v0` (Dict actions) with gymnasium.
"""

import gymnasium

from medagent.envs.config import EnvConfig
from medagent.envs.coords import FRAME_MAX, convert_coords
from medagent.envs.env import DictActionSegEnv, InteractiveSegEnv
from medagent.envs.episode import CallResult, Episode
from medagent.envs.parsing import (
    AUTO_MODELS, POINT_TYPES, TOOL_NAMES, InvalidCall, ParsedMessage, ToolCall, dict_action_to_call, format_call,
    parse_message, validate_call,
)
from medagent.envs.provider import ToolProvider
from medagent.envs.session import PromptSession
from medagent.envs.targets import Target, list_targets
from medagent.envs.trl_adapter import SegToolEnvironment, tool_schema, tool_schema_text

ENV_ID = "medagent/InteractiveSeg-v0"
DICT_ENV_ID = "medagent/InteractiveSegDict-v0"

for _id, _entry in ((ENV_ID, "medagent.envs.env:InteractiveSegEnv"), (DICT_ENV_ID, "medagent.envs.env:DictActionSegEnv")):
    if _id not in gymnasium.registry:
        gymnasium.register(id=_id, entry_point=_entry)

__all__ = [
    "AUTO_MODELS", "CallResult", "DICT_ENV_ID", "DictActionSegEnv", "ENV_ID", "EnvConfig", "Episode", "FRAME_MAX",
    "InteractiveSegEnv", "InvalidCall", "POINT_TYPES", "ParsedMessage", "PromptSession", "SegToolEnvironment",
    "TOOL_NAMES", "Target", "ToolCall", "ToolProvider", "convert_coords", "dict_action_to_call", "format_call",
    "list_targets", "parse_message", "tool_schema", "tool_schema_text", "validate_call",
]
