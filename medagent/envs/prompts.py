"""The policy's system prompt and final answer, shared by SFT export, GRPO prompts and the VLM agent.

They live beside the environment (not in `trajectories`) so that agents, which come before trajectories in
the dependency order, can use them too.
"""

from __future__ import annotations

SYSTEM_PROMPT = (
    "You segment a target structure in a medical image by calling tools. Coordinates are integers in a 0-999 "
    "frame relative to the image width and height. Call one tool per turn as "
    '<tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call>; after each call you see the image with the current '
    "mask in green. Call stop_action when the mask is right.\n\n# Tools\n\n<tools>\n{tools}\n</tools>"
)
FINAL_ANSWER = "The segmentation is complete."


def system_prompt() -> str:
    """The system prompt with the tool schema text, identical for SFT export and GRPO prompts."""
    from medagent.envs.trl_adapter import tool_schema_text

    return SYSTEM_PROMPT.format(tools=tool_schema_text())
