"""The adapter TRL's GRPOTrainer instantiates through `environment_factory`, and the tool schema made from it.

TRL lists an environment's public methods (except `reset` and `get_reward`) with
`inspect.getmembers(type(env), inspect.isfunction)`, turns each into a tool with transformers'
`get_json_schema` (type hints + Google-style docstring), calls `reset(**dataset_row)` before a rollout and
`get_reward()` after it. `tool_schema()` builds the schema the same way from the same methods, so the env,
SFT prompts and GRPO show the policy byte-identical tool text. Keep every public method of
`SegToolEnvironment` a tool: any other public method would become a tool too.

    from functools import partial
    trainer = GRPOTrainer(..., environment_factory=partial(SegToolEnvironment, dataset="phantom"))
"""

from __future__ import annotations

import inspect
import json
import types
from typing import Any, Literal

from PIL import Image

from medagent.envs.parsing import validate_call

_NOT_TOOLS = ("reset", "get_reward")


class SegToolEnvironment:
    """One rollout's environment for TRL: each public method is one tool of the interactive segmentation env.

    Every tool returns `[{"type": "image", "image": PIL overlay}, {"type": "text", "text": what happened}]`;
    the tool methods carry no return annotation on purpose (get_json_schema would add it to the schema).

    Args:
        env: an `InteractiveSegEnv` to drive, or None to build one from `env_kwargs` at the first `reset`.
        **env_kwargs: keyword arguments of `InteractiveSegEnv` (dataset, tools, image_size, ...).
    """

    def __init__(self, env: Any = None, **env_kwargs: Any) -> None:
        self._env = env
        self._env_kwargs = env_kwargs

    # -- TRL hooks ------------------------------------------------------------------------------
    def reset(self, **row: Any) -> list[dict[str, Any]]:
        """Start an episode. Reads `seed`, `case_index` and `target_index` from the dataset row (others are
        ignored) and returns the first image plus the instruction, appended to the user turn by TRL."""
        if self._env is None:
            from medagent.envs.env import InteractiveSegEnv

            self._env = InteractiveSegEnv(**self._env_kwargs)
        options = {k: row[k] for k in ("case_index", "target_index") if row.get(k) is not None}
        seed = row.get("seed")
        obs, _ = self._env.reset(seed=None if seed is None else int(seed), options=options or None)
        return [{"type": "image", "image": Image.fromarray(obs["image"])}, {"type": "text", "text": obs["instruction"]}]

    def get_reward(self) -> float:
        """The episode score (MedSAM-Agent's formula by default), the sum of the env's step rewards."""
        episode = getattr(self._env, "episode", None)
        return float(episode.score) if episode is not None else 0.0

    # -- tools (alphabetical, the order TRL lists them) ---------------------------------------------
    def adapt(self):  # noqa: ANN201 (see class docstring)
        """Adapt the automatic segmenter to this image at test time (MGIPT) and segment the target with it.
        """
        return self._call("adapt")

    def add_bbox(self, bbox_2d: list[int]):  # noqa: ANN201 (see class docstring)
        """Prompt the interactive segmenter with a box around the target; a new box replaces the previous one.

        Args:
            bbox_2d: The box [x1, y1, x2, y2] as integers in a 0-999 frame relative to the image width and height, corners included.
        """
        return self._call("add_bbox", bbox_2d=bbox_2d)

    def add_point(self, point_2d: list[int], point_type: Literal["positive", "negative"]):  # noqa: ANN201 (see class docstring)
        """Prompt the interactive segmenter with a click; all clicks so far and the box are used together.

        Args:
            point_2d: The point [x, y] as integers in a 0-999 frame relative to the image width and height.
            point_type: "positive" for a point on the target, "negative" for a point that must be excluded.
        """
        return self._call("add_point", point_2d=point_2d, point_type=point_type)

    def auto_segment(self, model: Literal["unet", "ifunet", "allukan"]):  # noqa: ANN201 (see class docstring)
        """Segment the target with a trained automatic segmentation model, replacing the current mask.

        Args:
            model: Which model to run.
        """
        return self._call("auto_segment", model=model)

    def cps(self):  # noqa: ANN201 (see class docstring)
        """Segment the target few-shot from reference images of the same structure (conditional point sparsification).
        """
        return self._call("cps")

    def refine(self):  # noqa: ANN201 (see class docstring)
        """Refine the current mask with the diffusion refiner.
        """
        return self._call("refine")

    def stop_action(self):  # noqa: ANN201 (see class docstring)
        """Finish: the current mask is the answer.
        """
        return self._call("stop_action")

    def undo(self):  # noqa: ANN201 (see class docstring)
        """Go back to the mask (and prompts) before the last change.
        """
        return self._call("undo")

    # -- internals ------------------------------------------------------------------------------
    def _call(self, name: str, **arguments: Any) -> list[dict[str, Any]]:
        if self._env is None or self._env.episode is None:
            return [{"type": "text", "text": "error: the environment was not reset"}]
        episode = self._env.episode
        result = episode.run_call(validate_call(name, arguments, raw=json.dumps({"name": name, "arguments": arguments}, default=str)))
        obs = self._env._observation()
        text = result.text
        if episode.done and result.outcome != "stop":
            text += " The episode is over."
        return [{"type": "image", "image": Image.fromarray(obs["image"])}, {"type": "text", "text": text}]


def tool_method_names() -> list[str]:
    """The adapter's tool methods, found exactly as TRL finds them (sorted by name)."""
    return [name for name, _ in inspect.getmembers(SegToolEnvironment, predicate=inspect.isfunction)
            if name not in _NOT_TOOLS and not name.startswith("_")]


def tool_schema() -> list[dict[str, Any]]:
    """JSON schemas of the tools (transformers' `get_json_schema` of the adapter's bound methods)."""
    from transformers.utils import get_json_schema

    probe = object.__new__(SegToolEnvironment)  # bound methods without building an env
    return [get_json_schema(types.MethodType(getattr(SegToolEnvironment, name), probe)) for name in tool_method_names()]


def tool_schema_text() -> str:
    """The schema as prompt text: one JSON object per line (the layout of Qwen chat templates' <tools> block)."""
    return "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tool_schema())
