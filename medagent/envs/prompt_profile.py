"""Prompt profiles: the parts of the conversation format that differ between policies, as one frozen object.

`ConversationRenderer` is the one renderer; a `PromptProfile` only names what it varies: the system text, whether
the tool schema goes through the chat template's `tools=` block, the first user turn, how a call's result comes
back (a `tool` message with medagent's answer, or a `user` message with a fixed text), whether the assistant's
canonical calls are stored as structured `tool_calls`, the image side the model sees, and the coordinate rule the
model writes (mapped into medagent's 0-999 frame at the boundary, `env_action`, before the env validates).

Profiles by name (`PROFILES`, `get_profile`):
- "medagent" (`MEDAGENT`): today's format, byte for byte (what SFT data, the policy and GRPO share).
- "medsam-agent": MedSAM-Agent's released inference format; its texts are read from a local clone
  (`medagent.envs.medsam_agent`), everything else is stated here (docs/policy.md lists every difference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from medagent.envs.coords import OUR_FRAME, CoordFrame
from medagent.envs.parsing import _BLOCK, _as_int, format_call
from medagent.errors import ConfigError

#: medagent's system prompt: short (the tools block comes from the chat template).
SYSTEM_PROMPT = (
    "You segment one target in a medical image by calling tools. Coordinates are integers in a 0-999 frame of "
    "the image width and height. After each call you see the image with the current mask in green and what the "
    "call did. Call stop_action when the mask is right."
)

#: Arguments that hold coordinates of the policy's frame.
COORD_ARGS = ("bbox_2d", "point_2d")


def target_of(instruction: str) -> str:
    """The target named by a medagent instruction: "Segment the lesion nearest ... (1 of 3 ...)." -> "lesion
    nearest ... (1 of 3 ...)" (what a "the target is: ..." template wants); other text is returned stripped."""
    text = instruction.strip()
    if text.startswith("Segment the "):
        text = text[len("Segment the "):]
    return text[:-1] if text.endswith(".") else text


@dataclass(frozen=True)
class PromptProfile:
    """The parts of the conversation format a policy was trained with (module docstring).

    Attributes:
        name: the profile's name.
        system: the system message's text.
        tools_in_template: pass the tool schema to `apply_chat_template(tools=...)` (False: the system text
            carries whatever tool description the policy knows).
        first_turn: the first user turn's text after the image, a `str.format` template with `{instruction}`
            (the env's instruction), `{target}` and `{target_description}` (both `target_of(instruction)`).
        answer_role: "tool" (one tool message per call: the image after it and medagent's answer) or "user"
            (one user message per call: the image after it and `later_turn`; medagent's answer text is not shown).
        later_turn: the user text after a call when `answer_role` is "user"; `{action_num}` = calls so far + 1.
        structured_calls: store an assistant message whose text is the template's rendering of its calls as
            structured `tool_calls` (False: always the verbatim text, as decoded).
        image_size: side of the square image the model is shown (resized bilinearly when the env's differs);
            None shows the env's image as it is.
        frame: the rule from the policy's integer coordinates to pixels (`CoordFrame`); calls are mapped into
            medagent's frame (`env_action`) when it is not medagent's.
        first_call_only: run only the first `<tool_call>` of a message (the rest are dropped before the env).
    """

    name: str
    system: str = SYSTEM_PROMPT
    tools_in_template: bool = True
    first_turn: str = "{instruction}"
    answer_role: Literal["tool", "user"] = "tool"
    later_turn: str | None = None
    structured_calls: bool = True
    image_size: int | None = None
    frame: CoordFrame = OUR_FRAME
    first_call_only: bool = False

    def __post_init__(self) -> None:
        if self.answer_role not in ("tool", "user"):
            raise ConfigError(f"PromptProfile.answer_role must be 'tool' or 'user', got {self.answer_role!r}")
        if self.answer_role == "user" and self.later_turn is None:
            raise ConfigError("PromptProfile with answer_role='user' needs later_turn")
        if self.image_size is not None and self.image_size < 8:
            raise ConfigError(f"PromptProfile.image_size must be >= 8 pixels, got {self.image_size}")
        try:  # a bad template fails here, once, not in the middle of an episode
            self.first_text("Segment the x.")
            self.later_text(0)
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(f"prompt profile {self.name!r}: a turn template has an unknown field ({exc!r})") from exc

    def first_text(self, instruction: str) -> str:
        """The first user turn's text for `instruction`."""
        target = target_of(instruction)
        return self.first_turn.format(instruction=instruction, target=target, target_description=target)

    def later_text(self, calls: int) -> str:
        """The user text after a call (`answer_role` "user"), `calls` = calls run so far."""
        return (self.later_turn or "").format(action_num=calls + 1)

    @property
    def maps_actions(self) -> bool:
        """Whether `env_action` changes anything (False for medagent's own format: the text goes through as is)."""
        return self.frame != OUR_FRAME or self.first_call_only

    def env_action(self, text: str, width: int, height: int) -> str:
        """The policy's message as the env should run it: with `first_call_only`, its first `<tool_call>` only;
        with another `frame`, `bbox_2d` / `point_2d` mapped into medagent's 0-999 frame through the pixels of a
        `width` x `height` image (the episode's original image). Each kept call is rewritten canonically
        (`format_call`); text outside the calls is dropped (the env reads only the calls). A call that does not
        decode, or coordinates that are not integers in 0..frame.high, pass unconverted: the env's validator
        judges them as written. A message with no call passes unchanged (the env ends it with format 0).
        """
        if not self.maps_actions or not isinstance(text, str):
            return text
        blocks = [m.group(1).strip() for m in _BLOCK.finditer(text)]
        if not blocks:
            return text
        if self.first_call_only:
            blocks = blocks[:1]
        return "\n".join(self._map_call(block, width, height) for block in blocks)

    def _map_call(self, block: str, width: int, height: int) -> str:
        raw = "<tool_call>\n" + block + "\n</tool_call>"
        try:
            payload = json.loads(block)
        except (ValueError, RecursionError):
            return raw
        if not isinstance(payload, dict) or not isinstance(payload.get("name"), str):
            return raw
        arguments = payload.get("arguments", {})
        if not isinstance(arguments, dict):
            return raw
        return format_call(payload["name"], {k: self._to_ours(k, v, width, height) for k, v in arguments.items()})

    def _to_ours(self, key: str, value: Any, width: int, height: int) -> Any:
        if key not in COORD_ARGS or not isinstance(value, list) or not value or len(value) % 2:
            return value
        ints = [_as_int(v) for v in value]
        if any(v is None or not 0 <= v <= self.frame.high for v in ints):
            return value
        return [int(v) for v in self.frame.to_ours(ints, width, height)]

    def show(self, image: Any) -> Any:
        """`image` (PIL or uint8 array) at the profile's `image_size` (bilinear), or unchanged."""
        if self.image_size is None:
            return image
        from PIL import Image
        import numpy as np

        pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
        size = (self.image_size, self.image_size)
        return pil if pil.size == size else pil.convert("RGB").resize(size, Image.BILINEAR)


#: medagent's own format (the default everywhere).
MEDAGENT = PromptProfile("medagent")

#: MedSAM-Agent's inference script maps a 0-999 value v to pixel round(v / 999 * W) of the W-wide original
#: (`infer/unibiomed_inference_toolusing.py`, Python's round: half to even).
MEDSAM_AGENT_FRAME = CoordFrame(divisor=999, offset=0, rounding="half_even")


def medsam_agent_profile(source: str | Path | None = None) -> PromptProfile:
    """MedSAM-Agent's released inference format (`infer/models/model_loader.py` and
    `infer/unibiomed_inference_toolusing.py` of its repository): its system text with the three tools pasted in,
    no `tools=` block, the image then its first-turn text, one user message per call (the image with the new
    mask in green and its fixed text), verbatim assistant text, 512 x 512 images, its pixel rule, the first call
    of a message only. The texts are read from a local clone (`source`, see `medagent.envs.medsam_agent`)."""
    from medagent.envs.medsam_agent import read_released_prompt

    released = read_released_prompt(source)
    return PromptProfile("medsam-agent", system=released.system, tools_in_template=False,
                         first_turn=released.first_turn, answer_role="user", later_turn=released.later_turn,
                         structured_calls=False, image_size=512, frame=MEDSAM_AGENT_FRAME, first_call_only=True)


#: Profile name -> builder (its argument: where the profile's texts come from, when it reads any).
PROFILES: dict[str, Callable[[str | Path | None], PromptProfile]] = {
    "medagent": lambda source=None: MEDAGENT,
    "medsam-agent": medsam_agent_profile,
}


def get_profile(profile: str | PromptProfile | None = None, source: str | Path | None = None) -> PromptProfile:
    """A `PromptProfile` by name (`PROFILES`), or `profile` itself; None is "medagent"."""
    if isinstance(profile, PromptProfile):
        return profile
    name = "medagent" if profile is None else str(profile)
    if name not in PROFILES:
        raise ConfigError(f"unknown prompt profile {name!r}; choose from {', '.join(PROFILES)}")
    return PROFILES[name](source)
