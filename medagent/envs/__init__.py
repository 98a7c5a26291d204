"""Gymnasium environment for interactive segmentation with tools: the tool declarations, the action parser,
the conversation renderer every policy path shares, and the TRL adapter.

`import medagent` registers `medagent/InteractiveSeg-v0` (text actions) and `medagent/InteractiveSegDict-v0`
(Dict actions) with gymnasium.
"""

from medagent import DICT_ENV_ID, ENV_ID
from medagent.envs.config import EnvConfig
from medagent.envs.conversation import (
    EPISODE_OVER, FINAL_ANSWER, SYSTEM_PROMPT, ConversationRenderer, ToolTurn, parse_calls, render_calls, tool_turn,
)
from medagent.envs.coords import FRAME_MAX, convert_coords
from medagent.envs.env import DictActionSegEnv, InteractiveSegEnv
from medagent.envs.episode import CallResult, Episode
from medagent.envs.parsing import (
    InvalidCall, ParsedMessage, ToolCall, dict_action_to_call, format_call, parse_message, validate_call,
)
from medagent.envs.provider import ToolProvider
from medagent.envs.session import PromptSession
from medagent.envs.targets import Target, list_targets
from medagent.envs.tool_specs import AUTO_MODELS, POINT_TYPES, TOOL_NAMES, TOOL_SPECS, ArgSpec, ToolSpec, tool_schema

__all__ = [
    "AUTO_MODELS", "ArgSpec", "CallResult", "ConversationRenderer", "DICT_ENV_ID", "DictActionSegEnv", "ENV_ID",
    "EPISODE_OVER", "EnvConfig", "Episode", "FINAL_ANSWER", "FRAME_MAX", "InteractiveSegEnv", "InvalidCall",
    "POINT_TYPES", "ParsedMessage", "PromptSession", "SYSTEM_PROMPT", "TOOL_NAMES", "TOOL_SPECS", "Target", "ToolCall",
    "ToolProvider", "ToolSpec", "ToolTurn", "convert_coords", "dict_action_to_call", "format_call", "list_targets",
    "parse_calls", "parse_message", "render_calls", "tool_schema", "tool_turn", "validate_call",
]
