"""`InteractiveSegEnv`: segment one target in one image by calling tools over several turns.

    import gymnasium as gym, medagent
    env = gym.make("medagent/InteractiveSeg-v0", dataset="phantom", image_size=256)
    obs, info = env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step(
        '<tool_call>{"name": "add_bbox", "arguments": {"bbox_2d": [100, 120, 640, 700]}}</tool_call>')

Observation: Dict(image uint8 (S, S, 3): the image at the policy's size with the current mask overlaid in
green at alpha 0.5 (the raw image before any mask); instruction; history (every call so far and what it
did, newest last, truncated from the front); turn). Action: the policy's message text (Text space,
printable charset). `DictActionSegEnv` takes structured actions through the same parser core.
Transitions live in `medagent.envs.episode.Episode`; the TRL adapter drives this env's `step`, so every path
has the same transitions. After each step `env.tool_turns` holds one `ToolTurn` per call it ran (the call's
answer and the image after it), which `medagent.envs.conversation` turns into tool messages.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from medagent.data.case import Case
from medagent.data.dataset import Dataset
from medagent.data.intensity import to_display_rgb
from medagent.envs.config import EnvConfig
from medagent.envs.conversation import ToolTurn, tool_turn
from medagent.envs.episode import CallResult, Episode
from medagent.envs.parsing import dict_action_to_call
from medagent.envs.tool_specs import POINT_TYPES, TOOL_NAMES, auto_models
from medagent.envs.provider import ToolProvider
from medagent.envs.render import CHARSET, draw_prompts, overlay, resize_mask, resize_rgb, sanitize_text
from medagent.envs.targets import Target, list_targets
from medagent.errors import ConfigError, DataError

#: How many random cases `reset` draws before giving up on a split with no usable target.
_MAX_DRAWS = 200


def load_dataset(config: EnvConfig) -> Dataset:
    """The dataset named by the config: a user folder (`data_dir`) or a builtin dataset."""
    if config.data_dir:
        from medagent.data.layouts import load_folder

        return load_folder(config.data_dir, skip_bad=config.skip_bad)
    from medagent.data.builtin import load_builtin

    return load_builtin(config.dataset, seed=config.dataset_seed)


class InteractiveSegEnv(gym.Env):
    """Interactive segmentation with text actions (see module docstring).

    Args:
        config: all settings; keyword `overrides` replace single fields (e.g. `image_size=256`).
        dataset: a `Dataset` object to use instead of `config.dataset` / `config.data_dir`.
        tools: name -> tool object or factory, used before the registry ("sam", "unet", "refine", "cps",
            "mgipt", ...); see `ToolProvider`.
        render_mode: None or "rgb_array".
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(self, config: EnvConfig | None = None, *, dataset: Dataset | str | None = None,
                 tools: Mapping[str, Any] | ToolProvider | None = None, render_mode: str | None = None,
                 **overrides: Any) -> None:
        config = config or EnvConfig()
        if isinstance(dataset, str):
            overrides["dataset"] = dataset
            dataset = None
        unknown = set(overrides) - {f.name for f in dataclasses.fields(EnvConfig)}
        if unknown:
            raise ConfigError(f"InteractiveSegEnv got unknown setting(s) {sorted(unknown)}; see EnvConfig")
        self.config = dataclasses.replace(config, **overrides) if overrides else config
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.dataset = dataset if dataset is not None else load_dataset(self.config)
        self.cases = self.dataset.cases(self.config.split)
        if len(self.cases) == 0:
            raise DataError(f"dataset {self.dataset.info.name!r} has no cases in split {self.config.split!r}")
        name = self.dataset.info.name
        self.provider = tools if isinstance(tools, ToolProvider) else ToolProvider(tools, self.config.load_tools, name)
        size = self.config.image_size
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (size, size, 3), np.uint8),
            "instruction": spaces.Text(self.config.instruction_max_chars, min_length=0, charset=CHARSET),
            "history": spaces.Text(self.config.history_max_chars, min_length=0, charset=CHARSET),
            "turn": spaces.Discrete(self.config.max_turns + 1),
        })
        self.action_space = self._make_action_space()
        self.episode: Episode | None = None
        self.tool_turns: list[ToolTurn] = []
        self._base_image: np.ndarray | None = None
        self._case_index = -1
        self._first_seed = self.config.seed
        self._loaded: tuple[int, Case] | None = None  # the last case load_case read (index, case)

    def _make_action_space(self) -> spaces.Space:
        return spaces.Text(self.config.message_max_chars, min_length=0, charset=CHARSET)

    # -- gymnasium API ------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Start an episode on a random (or chosen) case and target.

        Options:
            case_index: index of the case in the split (default: drawn with the env's RNG).
            slice_index: with case_index, for a 3D case: play the slice at this index along its coarsest axis
                (`Case.default_slice_axis`) instead of a random labelled one (a volume evaluation plays each slice).
            target_index: index into `list_targets(case)` (default: drawn).
            target: with case_index, the target by identity instead of target_index: (class_index, instance),
                instance 0 for a whole class; found among the case's targets of any size (`list_targets` with
                min_area 1), so a slice holding only a few pixels of a volume's target can be played too.
        """
        if seed is None and self._first_seed is not None:
            seed = self._first_seed
        self._first_seed = None
        super().reset(seed=seed)
        options = dict(options or {})
        case, target, index = self._draw(options)
        self._case_index = index
        self.tool_turns = []
        self.episode = Episode(case, target, self.provider, self.config, references=lambda: self._references(case, target))
        self._base_image = resize_rgb(to_display_rgb(case.image, case.modality), self.config.image_size)
        return self._observation(), self._info([])

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, bool, dict[str, Any]]:
        if self.episode is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        if self.episode.done:
            self.tool_turns = []
            return self._observation(), 0.0, self.episode.terminated, self.episode.truncated, self._info([])
        self.tool_turns = []
        results, reward = self._run(action)
        ep = self.episode
        return self._observation(), float(reward), ep.terminated, ep.truncated, self._info(results)

    def _run(self, action: Any) -> tuple[list[CallResult], float]:
        return self.episode.run_message(action, after_call=self._record_turn)

    def _record_turn(self, result: CallResult) -> None:
        """The `ToolTurn` of one call: its answer and the image after it (text only once the episode is over)."""
        ep = self.episode
        image = None if ep.done else self._observation()["image"]
        self.tool_turns.append(tool_turn(getattr(result.call, "name", "") or "tool", result.text, image, ep.done, result.outcome))

    def render(self) -> np.ndarray | None:
        """The current overlay at the policy's size with the box (yellow) and clicks (blue +, red -) drawn."""
        if self.episode is None or self._base_image is None:
            return None
        image = self._observation()["image"]
        box, points, labels = self.episode.prompts()
        size = self.config.image_size
        scale = (size / self.episode.width, size / self.episode.height)
        return draw_prompts(image, box, points, labels, scale)

    # -- helpers --------------------------------------------------------------------------------------
    def tool_schema(self) -> list[dict[str, Any]]:
        """The tool schema (JSON-schema dicts from `medagent.envs.tool_specs`), as given to the chat template."""
        from medagent.envs.tool_specs import tool_schema

        return tool_schema()

    def _draw(self, options: dict[str, Any]) -> tuple[Case, Target, int]:
        n = len(self.cases)
        if "case_index" in options:
            index = int(options["case_index"])
            if not 0 <= index < n:
                raise ConfigError(f"reset option case_index={index} outside 0..{n - 1}")
            case = self._as_2d(self.load_case(index), options.get("slice_index"))
            if options.get("target") is not None:
                return case, self._target_by_key(case, options["target"]), index
            targets = list_targets(case, self.config.min_area)
            if not targets:
                raise DataError(f"case {case.id!r} has no target of >= {self.config.min_area} pixels")
            t = options.get("target_index")
            t = int(self.np_random.integers(len(targets))) if t is None else int(t)
            if not 0 <= t < len(targets):
                raise ConfigError(f"reset option target_index={t} outside 0..{len(targets) - 1} for case {case.id!r}")
            return case, targets[t], index
        for _ in range(_MAX_DRAWS):
            index = int(self.np_random.integers(n))
            case = self._as_2d(self.load_case(index))
            targets = list_targets(case, self.config.min_area)
            if targets:
                return case, targets[int(self.np_random.integers(len(targets)))], index
        raise DataError(f"no case with a target of >= {self.config.min_area} pixels found in {_MAX_DRAWS} draws "
                        f"from split {self.config.split!r} of {self.dataset.info.name!r}")

    def load_case(self, index: int) -> Case:
        """Case `index` of the split, kept until another index is asked for: a volume evaluation plays many
        slices of one volume in a row, and reading the volume file again for each would dominate its time."""
        if self._loaded is None or self._loaded[0] != index:
            self._loaded = (index, self.cases[index])
        return self._loaded[1]

    def _as_2d(self, case: Case, slice_index: int | None = None) -> Case:
        """3D cases become a random slice (along the coarsest axis) that holds labelled pixels, or the slice
        `slice_index` along that axis when one is given."""
        if slice_index is None:
            return case.random_labelled_slice(self.np_random, self.config.min_area)
        if case.ndim != 3:
            raise ConfigError(f"reset option slice_index={slice_index} needs a 3D case; case {case.id!r} is 2D")
        axis, index = case.default_slice_axis(), int(slice_index)
        if not 0 <= index < case.shape[axis]:
            raise ConfigError(f"reset option slice_index={index} outside 0..{case.shape[axis] - 1} for case {case.id!r}")
        return case.slice(index, axis)

    def _target_by_key(self, case: Case, key: Any) -> Target:
        """The target (class_index, instance) of `case` (the reset option `target`), of any size."""
        try:
            class_index, instance = (int(v) for v in key)
        except (TypeError, ValueError):
            raise ConfigError(f"reset option target must be (class_index, instance), got {key!r}") from None
        for target in list_targets(case, min_area=1):
            if target.instance == instance and (instance or target.class_index == class_index):
                return target
        what = f"instance {instance}" if instance else f"class {class_index}"
        raise DataError(f"case {case.id!r} has no target {what} (reset option target={list(key)})")

    def _references(self, case: Case, target: Target) -> list[Case]:
        """Up to `n_references` train-split cases of other subjects holding the target class, binary-labelled.

        Only cases on the target's grid (same shape and channels) qualify: few-shot tools match features
        on one grid, and MNI slices of other orientations have other shapes.
        """
        try:
            pool = self.dataset.cases("train")
        except DataError:
            return []
        refs: list[Case] = []
        order = np.random.default_rng(zlib.crc32(f"{case.id}|{target.class_name}".encode())).permutation(len(pool))
        for i in order[: 200]:
            if pool.subjects[i] == case.subject:
                continue
            ref = self._as_2d(pool[int(i)])
            if ref.shape != case.shape or ref.channels != case.channels:
                continue
            index = next((k for k, v in ref.class_names.items() if v == target.class_name), None)
            if index is None or ref.label is None or np.count_nonzero(ref.label == index) < self.config.min_area:
                continue
            refs.append(ref.replace(label=(ref.label == index).astype(np.uint8), instances=None,
                                    class_names={0: "background", 1: target.class_name}))
            if len(refs) >= self.config.n_references:
                break
        return refs

    def _observation(self) -> dict[str, Any]:
        ep = self.episode
        cfg = self.config
        mask = resize_mask(ep.mask, cfg.image_size) if ep.mask.any() else None
        return {
            "image": overlay(self._base_image, mask, cfg.alpha),
            "instruction": sanitize_text(ep.target.instruction, cfg.instruction_max_chars),
            "history": sanitize_text("\n".join(ep.history), cfg.history_max_chars, keep="tail"),
            "turn": min(ep.turns, cfg.max_turns),
        }

    def _info(self, results: list[CallResult]) -> dict[str, Any]:
        ep = self.episode
        return {
            "case_id": ep.case.id,
            "case_index": self._case_index,
            "subject": ep.case.subject,
            "class_name": ep.target.class_name,
            "instance": ep.target.instance,
            "dice": ep.dice,
            "iou": ep.iou,
            "episode_score": ep.score,
            "reward_terms": ep.terms(),
            "turns": ep.turns,
            "calls": [r.call.describe() for r in results],
            "outcomes": [r.outcome for r in results],
            "results": [r.text for r in results],
        }


class DictActionSegEnv(InteractiveSegEnv):
    """The same environment with structured actions for non-text agents.

    Action: Dict(tool: Discrete(9) over `TOOL_NAMES`, bbox_2d: Box(0, 999, (4,), int64), point_2d:
    Box(0, 999, (2,), int64), point_type: Discrete(2) (0 positive, 1 negative), model: Discrete(3) over
    `auto_models()` (more with automatic tools from outside medagent), region: Discrete(9) (0 is region 1)). Only the chosen tool's fields are read;
    validation is `parsing.validate_call`.
    """

    def _make_action_space(self) -> spaces.Space:
        return spaces.Dict({
            "tool": spaces.Discrete(len(TOOL_NAMES)),
            "bbox_2d": spaces.Box(0, 999, (4,), np.int64),
            "point_2d": spaces.Box(0, 999, (2,), np.int64),
            "point_type": spaces.Discrete(len(POINT_TYPES)),
            "model": spaces.Discrete(len(auto_models())),
            "region": spaces.Discrete(9),
        })

    def _run(self, action: Any) -> tuple[list[CallResult], float]:
        call = dict_action_to_call(action) if isinstance(action, Mapping) else dict_action_to_call({})
        result = self.episode.run_call(call)
        self._record_turn(result)
        return [result], result.reward
