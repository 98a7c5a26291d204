"""The one conversation renderer: every path (SFT export, the policy at inference, GRPO) builds its chat
messages here, so the token ids they produce agree where they overlap (a test holds them equal).

Layout of an episode (the Qwen3-VL chat template renders it; the tool schema goes through the template's
own `tools=` block, never into the system text):

    system     SYSTEM_PROMPT
    user       [image, instruction]
    assistant  content "" + tool_calls [{name, arguments}]        (the policy's message, one or more calls)
    tool       [image after the call, what the call did]          (one tool message per call, as TRL does)
    ...
    assistant  FINAL_ANSWER                                        (no call: the episode is over)

Rules that hold on every path:
- once the episode is over (stop_action, max turns, too many errors in a row), a tool message carries text
  only; when it ended by anything but stop_action, the text ends with `EPISODE_OVER`;
- an assistant message whose text is exactly the template's rendering of its calls is stored as structured
  `tool_calls` (so other chat templates render it their own way); any other text is kept verbatim as content,
  which renders to the same bytes the policy wrote.

Other policies' formats are named profiles of this renderer (`medagent.envs.prompt_profile.PromptProfile`:
`ConversationRenderer(profile="medsam-agent", prompt_source=...)`); the default, "medagent", is the layout above.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from medagent.envs.parsing import format_call
from medagent.envs.prompt_profile import SYSTEM_PROMPT, PromptProfile, get_profile  # noqa: F401 (SYSTEM_PROMPT: re-exported)
#: The assistant's last message, after the episode is over.
FINAL_ANSWER = "The segmentation is complete."
#: Appended to a call's answer when that call ended the episode other than by stop_action.
EPISODE_OVER = " The episode is over."

_CALL_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


@dataclass(frozen=True)
class ToolTurn:
    """What one call gave back to the policy: the tool's name, its answer text, and the image after it
    (uint8 (S, S, 3) at the policy's size), or None once the episode is over."""

    name: str
    text: str
    image: np.ndarray | None = None


def tool_turn(name: str, text: str, image: np.ndarray | None, episode_done: bool, outcome: str) -> ToolTurn:
    """The `ToolTurn` of one call under the rules in the module docstring."""
    if not episode_done:
        return ToolTurn(name, text, image)
    return ToolTurn(name, text if outcome == "stop" else text + EPISODE_OVER, None)


def _pil(image: Any) -> Any:
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def parse_calls(text: str) -> tuple[str, list[dict[str, Any]]] | None:
    """(content, tool_calls) when `text` is exactly `content` + the template's rendering of its calls, else None.

    tool_calls: [{"type": "function", "function": {"name": str, "arguments": dict}}].
    """
    first = text.find("<tool_call>")
    if first < 0:
        return None
    content = text[:first]
    if content.endswith("\n"):
        content = content[:-1]
    calls = []
    for match in _CALL_BLOCK.finditer(text, first):
        try:
            payload = json.loads(match.group(1))
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str) or not isinstance(payload.get("arguments", {}), dict):
            return None
        calls.append({"type": "function", "function": {"name": payload["name"], "arguments": payload.get("arguments", {})}})
    if not calls or render_calls(content, calls) != text:
        return None
    return content, calls


def render_calls(content: str, tool_calls: Sequence[dict[str, Any]]) -> str:
    """The assistant text the Qwen3-VL template writes for `content` + `tool_calls` (before <|im_end|>)."""
    parts = [format_call(c["function"]["name"], c["function"]["arguments"]) for c in tool_calls]
    return content + ("\n" if content else "") + "\n".join(parts)


class ConversationRenderer:
    """Builds chat messages for one episode and renders them through a processor's chat template.

    Args:
        system: the system prompt (default: the profile's, `SYSTEM_PROMPT` for "medagent").
        tools: the JSON tool schema handed to `apply_chat_template(tools=...)` (default: every tool,
            `medagent.envs.tool_specs.tool_schema()`); not passed when the profile keeps tools out of the template.
        profile: the prompt format, a `PromptProfile` or its name ("medagent", the default, or "medsam-agent").
        prompt_source: where a profile that reads its texts finds them (medsam-agent: a MedSAM-Agent clone).
    """

    def __init__(self, system: str | None = None, tools: list[dict[str, Any]] | None = None,
                 profile: str | PromptProfile | None = None, prompt_source: str | None = None) -> None:
        from medagent.envs.tool_specs import tool_schema

        self.profile = get_profile(profile, prompt_source)
        self.system = self.profile.system if system is None else system
        self.tools = tool_schema() if tools is None else tools

    @property
    def template_tools(self) -> list[dict[str, Any]] | None:
        """What `apply_chat_template(tools=...)` gets: the schema, or None when the profile's system text has it."""
        return self.tools if self.profile.tools_in_template else None

    # -- messages -------------------------------------------------------------------------------
    def system_message(self) -> dict[str, Any]:
        return {"role": "system", "content": [_text(self.system)]}

    def user_message(self, image: Any, instruction: str) -> dict[str, Any]:
        """The first user turn: the image (PIL or uint8 array; None leaves an image placeholder) + the instruction
        (as the profile's first-turn text)."""
        block = {"type": "image", "image": None if image is None else _pil(self.profile.show(image))}
        return {"role": "user", "content": [block, _text(self.profile.first_text(instruction))]}

    def start(self, image: Any, instruction: str) -> list[dict[str, Any]]:
        """[system, user]: what the policy sees before its first message."""
        return [self.system_message(), self.user_message(image, instruction)]

    def assistant_message(self, text: str) -> dict[str, Any]:
        """The policy's message: structured tool_calls when canonical (and the profile stores them), else the
        verbatim text (module docstring)."""
        parsed = parse_calls(text) if self.profile.structured_calls else None
        if parsed is None:
            return {"role": "assistant", "content": [_text(text)] if text else []}
        content, calls = parsed
        return {"role": "assistant", "content": [_text(content)] if content else [], "tool_calls": calls}

    def tool_message(self, turn: ToolTurn, with_image: bool = True, calls: int = 0) -> dict[str, Any]:
        """One call's answer; `with_image=False` leaves an image placeholder (datasets store images apart).

        Under a profile whose answers are user turns, a user message with the image after the call and the
        profile's fixed text (`calls` = calls run before this one) instead of a tool message with medagent's answer.
        """
        content: list[dict[str, Any]] = []
        if turn.image is not None:
            content.append({"type": "image", "image": _pil(self.profile.show(turn.image)) if with_image else None})
        if self.profile.answer_role == "user":
            return {"role": "user", "content": [*content, _text(self.profile.later_text(calls))]}
        content.append(_text(turn.text))
        return {"role": "tool", "name": turn.name, "content": content}

    def step_messages(self, action: str, turns: Iterable[ToolTurn], with_images: bool = True,
                      calls: int = 0) -> list[dict[str, Any]]:
        """One policy step: its assistant message and one answer message per call it ran (`calls` = calls run
        before this step, for profiles whose answer text counts them)."""
        return [self.assistant_message(action), *(self.tool_message(t, with_images, calls + i) for i, t in enumerate(turns))]

    def final_message(self) -> dict[str, Any]:
        return {"role": "assistant", "content": [_text(FINAL_ANSWER)]}

    # -- rendering ------------------------------------------------------------------------------
    def render(self, processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False,
               chat_template: str | None = None, **kwargs: Any) -> Any:
        """`processor.apply_chat_template(messages, tools=self.template_tools, tokenize=True, return_dict=True, ...)`."""
        return processor.apply_chat_template(messages, tools=self.template_tools, add_generation_prompt=add_generation_prompt,
                                             tokenize=True, return_dict=True, chat_template=chat_template, **kwargs)

    def text(self, processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The rendered text of `messages` (no tokenisation), for reading and debugging."""
        return processor.apply_chat_template(messages, tools=self.template_tools, add_generation_prompt=add_generation_prompt,
                                             tokenize=False)


def images_of(messages: Iterable[dict[str, Any]]) -> list[Any]:
    """The images of `messages` in placeholder order (PIL images; None for empty placeholders)."""
    return [block.get("image") for m in messages for block in (m.get("content") or [])
            if isinstance(block, dict) and block.get("type") == "image"]
