"""Prompt datasets for GRPO and grounding rows for SFT, both made from env episodes.

GRPO prompts: one row per (case, target) of a split, with the `seed`, `case_index` and `target_index`
`SegToolEnvironment.reset` reads, so all generations of one GRPO group see the same image and target. The
"prompt" column holds the system message and an empty user turn: TRL appends the first image and the
instruction that `reset` returns, which makes the prompt the renderer's `start(image, instruction)`.

Grounding rows (SFT stage "grounding"): image + instruction -> one `add_bbox` call with the target's tight box,
rendered by the same renderer; drawn from the builtin training splits, and for procedural datasets from new
dataset seeds (fresh lesions on every seed), so there is no practical limit on their number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from medagent.errors import ConfigError, DataError


def prompt_messages() -> list[dict[str, Any]]:
    """[system, user with no content yet]: TRL adds the reset observation to the user turn."""
    from medagent.envs.conversation import ConversationRenderer

    return [ConversationRenderer().system_message(), {"role": "user", "content": []}]


def episode_rows(env: Any, seed: int = 0, limit: int | None = None) -> Iterator[dict[str, Any]]:
    """(case, target) rows of `env`'s split in a seeded order: case_index, target_index, seed, subject, dataset.

    Each row's `seed` makes the env draw the same slice of a 3D case on every reset.
    """
    from medagent.envs.targets import list_targets

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(env.cases))
    count = 0
    for index in order:
        row_seed = int(rng.integers(2**31 - 1))
        env.reset(seed=row_seed, options={"case_index": int(index), "target_index": 0})
        case = env.episode.case
        for target_index in range(len(list_targets(case, env.config.min_area))):
            yield {"seed": row_seed, "case_index": int(index), "target_index": target_index,
                   "subject": str(case.subject), "dataset": env.dataset.info.name}
            count += 1
            if limit is not None and count >= limit:
                return


def build_prompt_dataset(env_settings: dict[str, Any], limit: int | None = None, seed: int = 0) -> Any:
    """A `datasets.Dataset` of GRPO prompts (module docstring) for the env `InteractiveSegEnv(**env_settings)`.

    Raises:
        DataError: the split has no target.
    """
    import datasets

    from medagent.envs import InteractiveSegEnv

    env = InteractiveSegEnv(**{**env_settings, "load_tools": False})
    rows = [{**row, "prompt": prompt_messages()} for row in episode_rows(env, seed, limit)]
    if not rows:
        raise DataError(f"no target found in split {env.config.split!r} of {env.dataset.info.name!r}")
    return datasets.Dataset.from_list(rows)


#: Builtin datasets whose dataset seed draws new targets (lesions are inserted afresh for every seed).
PROCEDURAL = ("mni-lesion",)


@dataclass
class GroundingConfig:
    """Which grounding rows to draw.

    Attributes:
        datasets: builtin dataset names (their training splits).
        rows: number of rows in all (split evenly over datasets).
        dataset_seeds: dataset seeds cycled through for procedural datasets (new lesions per seed); others use
            seed 0 only.
        image_size: side of the image the policy sees (must match the env of later stages).
        seed: seed of the draw.
    """

    datasets: tuple[str, ...] = ("mni-lesion", "nuclei", "ct-phantom")
    rows: int = 2000
    dataset_seeds: tuple[int, ...] = tuple(range(8))
    image_size: int = 224
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or not self.datasets:
            raise ConfigError("GroundingConfig needs rows >= 1 and at least one dataset")


def grounding_examples(config: GroundingConfig) -> list[dict[str, Any]]:
    """SFT examples {"messages", "images", "subject"}: the env's first observation -> add_bbox(tight box)."""
    from medagent.envs import InteractiveSegEnv, convert_coords, format_call
    from medagent.envs.conversation import ConversationRenderer
    from medagent.trajectories.export import storable

    renderer = ConversationRenderer()
    per_dataset = -(-config.rows // len(config.datasets))
    examples: list[dict[str, Any]] = []
    rng = np.random.default_rng(config.seed)
    for name in config.datasets:
        seeds = config.dataset_seeds if name in PROCEDURAL else (0,)
        envs = [InteractiveSegEnv(dataset=name, dataset_seed=int(s), split="train", image_size=config.image_size,
                                  load_tools=False) for s in seeds]
        for k in range(per_dataset):
            env = envs[k % len(envs)]
            obs, _ = env.reset(seed=int(rng.integers(2**31 - 1)))
            ep = env.episode
            ys, xs = np.nonzero(ep.gt)
            box = convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], ep.width, ep.height, to="frame").tolist()
            messages = renderer.start(None, obs["instruction"]) + [renderer.assistant_message(format_call("add_bbox", {"bbox_2d": box}))]
            examples.append({"messages": [storable(m) for m in messages], "images": [obs["image"]],
                             "subject": f"{name}:{ep.case.subject}"})
    return examples[: config.rows]


def save_grounding(config: GroundingConfig, out: str) -> Any:
    """Write the grounding rows as a `datasets.DatasetDict({"train": ...})` to `out` (the SFT data layout)."""
    import datasets

    from medagent.trajectories.export import message_features

    features = datasets.Features({"messages": message_features(), "images": datasets.Sequence(datasets.Image()),
                                  "subject": datasets.Value("string")})
    data = datasets.DatasetDict({"train": datasets.Dataset.from_list(grounding_examples(config), features=features)})
    data.save_to_disk(out)
    return data
