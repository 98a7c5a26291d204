"""The adapter TRL's GRPOTrainer instantiates through `environment_factory`.

TRL lists an environment's public methods (except `reset` and `get_reward`) with
`inspect.getmembers(type(env), inspect.isfunction)`, turns each into a tool with transformers'
`get_json_schema` (signature + Google-style docstring), calls `reset(**dataset_row)` before a rollout, calls
the methods the policy names, and calls `get_reward()` after the rollout. Here every tool method is generated
from its declaration in `medagent.envs.tool_specs` (so its schema equals `tool_schema()`, tested) and drives
the wrapped `InteractiveSegEnv.step` with the call, so GRPO sees exactly the env's transitions:
- invalid arguments (wrong names included: the methods take `**arguments`) give the env's error answer and
  count as invalid calls; max turns and too many errors in a row end the episode as in the env;
- a rollout that ends while the episode is still going (the policy wrote a message with no tool call) is
  scored as the env scores a message with no parseable call: format 0. (A tool turn TRL rolls back for
  overflowing `max_completion_length` also lands here.)
- the answer of each call is the env's `ToolTurn` rendered by `medagent.envs.conversation`, so the text and
  image rules (text only once the episode is over) are those of SFT data and of the policy at inference.

    from functools import partial
    trainer = GRPOTrainer(..., environment_factory=partial(SegToolEnvironment, dataset="mni-lesion"))
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from medagent.envs.conversation import ConversationRenderer
from medagent.envs.parsing import format_call
from medagent.envs.tool_specs import ArgSpec, ToolSpec, tool_specs

#: Answer of a call made after the episode is over (TRL runs every call of a message; the env drops them).
AFTER_END = "The episode is over; no more calls are run."


class SegToolEnvironment:
    """One rollout's environment for TRL; its tool methods are generated from `tool_specs()` (module docstring).

    Args:
        env: an `InteractiveSegEnv` to drive, or None to build one from `env_kwargs` at the first `reset`.
        **env_kwargs: keyword arguments of `InteractiveSegEnv` (dataset, split, tools, image_size, ...).
    """

    def __init__(self, env: Any = None, **env_kwargs: Any) -> None:
        self.env = env
        self._env_kwargs = env_kwargs
        self._renderer = ConversationRenderer()

    # -- TRL hooks ------------------------------------------------------------------------------
    def reset(self, **row: Any) -> list[dict[str, Any]]:
        """Start an episode. Reads `seed`, `case_index` and `target_index` from the dataset row (other columns
        are ignored) and returns the first image plus the instruction, which TRL appends to the user turn."""
        if self.env is None:
            from medagent.envs.env import InteractiveSegEnv

            self.env = InteractiveSegEnv(**self._env_kwargs)
        options = {k: int(row[k]) for k in ("case_index", "target_index") if row.get(k) is not None}
        seed = row.get("seed")
        obs, _ = self.env.reset(seed=None if seed is None else int(seed), options=options or None)
        return self._renderer.user_message(obs["image"], obs["instruction"])["content"]

    def get_reward(self) -> float:
        """The env's episode score (`info["episode_score"]`); an episode still going is first ended as the env
        ends a message with no parseable call (format 0)."""
        episode = self.episode
        if episode is None:
            return 0.0
        if not episode.done:
            self.env.step("")
        return float(episode.score)

    # -- read-only views (properties, so TRL does not list them as tools) -------------------------
    @property
    def episode(self) -> Any:
        """The live `Episode`, or None before the first reset."""
        return None if self.env is None else self.env.episode

    @property
    def terms(self) -> dict[str, float]:
        """The episode's reward terms (`Episode.terms()`: format, quality, overshoot, turn cost, gain, ...)."""
        episode = self.episode
        return {} if episode is None else episode.terms()

    # -- the one path every tool method takes -----------------------------------------------------
    def _call(self, name: str, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        episode = self.episode
        if episode is None:
            return [{"type": "text", "text": "error: the environment was not reset"}]
        if episode.done:
            return [{"type": "text", "text": AFTER_END}]
        self.env.step(format_call(name, arguments))
        turns = self.env.tool_turns
        if not turns:  # cannot happen for a well-formed call; kept so a tool never raises into TRL
            return [{"type": "text", "text": f"{name} error: the call was not run"}]
        return self._renderer.tool_message(turns[0])["content"]


_PYTHON_TYPES = {"coords": list[int], "integer": int}


def _annotation(arg: ArgSpec) -> Any:
    return _PYTHON_TYPES[arg.kind] if arg.kind in _PYTHON_TYPES else Literal[arg.choices]  # type: ignore[valid-type]


def _tool_method(spec: ToolSpec) -> Any:
    """A method `spec.name(self, **arguments)` whose signature, type hints and docstring state `spec`.

    It accepts any keyword arguments, so wrong argument names reach the env's validator (and count as an
    invalid call there) instead of failing inside TRL before the env sees them. No return annotation:
    `get_json_schema` would add it to the schema.
    """

    def method(self: SegToolEnvironment, **arguments: Any):  # noqa: ANN202 (see docstring)
        return self._call(spec.name, arguments)

    method.__name__ = method.__qualname__ = spec.name
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(a.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_annotation(a)) for a in spec.args]
    method.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    method.__annotations__ = {a.name: _annotation(a) for a in spec.args}
    doc = spec.description
    if spec.args:
        doc += "\n\nArgs:\n" + "\n".join(f"    {a.name}: {a.description}" for a in spec.args)
    method.__doc__ = doc + "\n"
    return method


for _spec in tool_specs():  # auto_segment's model enum includes plugins installed when this module is imported
    setattr(SegToolEnvironment, _spec.name, _tool_method(_spec))


def tool_method_names() -> list[str]:
    """The adapter's tool methods, found exactly as TRL finds them (sorted by name)."""
    return [name for name, _ in inspect.getmembers(SegToolEnvironment, predicate=inspect.isfunction)
            if name not in ("reset", "get_reward") and not name.startswith("_")]
