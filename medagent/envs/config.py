"""`EnvConfig`: every setting of `InteractiveSegEnv`, with defaults that run on a CPU."""

from __future__ import annotations

from dataclasses import dataclass, field

from medagent.errors import ConfigError
from medagent.rewards import RewardConfig


@dataclass
class EnvConfig:
    """Settings of the interactive segmentation environment.

    Attributes:
        dataset: builtin dataset name (`medagent.data.builtin`), used when `data_dir` is None.
        data_dir: a user dataset folder (`medagent.data.layouts.load_folder`), or None.
        skip_bad: with `data_dir`, leave unreadable files out (listed in `Dataset.skipped`) instead of failing.
        split: which split episodes come from ("train", "val", "test", "all").
        dataset_seed: seed of procedural builtin datasets.
        image_size: side of the square image the policy sees, pixels (tools see the original resolution).
        max_turns: truncation after this many calls (every call is one turn, stop_action included).
        max_invalid: terminate after this many error observations in a row.
        min_area: targets smaller than this many pixels are skipped.
        seed: seed of the first `reset()` when it is called without one.
        reward: the reward composition.
        alpha: opacity of the mask overlay.
        instruction_max_chars / history_max_chars: lengths of the Text observations (history keeps its tail).
        message_max_chars: length of the Text action space (longer messages are still accepted; the parser
            reads the first 20,000 characters).
        prompt_tool: registry name of the promptable segmenter behind add_bbox / add_point.
        prompt_previous_logits: send the previous mask logits with every prompt (the contract, as MedSAM-Agent
            trains); False sends box + all clicks only, which the shipped tiny SAM answers better (docs/sam.md).
        refine_tool / cps_tool / adapt_tool: registry names behind refine, cps and adapt.
        n_references: reference exemplars (train-split cases with the target class) given to cps.
        load_tools: build tools missing from `tools=` with `medagent.tools.load_tool`.
        max_regions: a tool's answer lists the boxes (0-999 frame) and areas of up to this many regions of the
            new mask, nearest the top-left first (`medagent.envs.regions`); 0 turns the list off.
        region_min_area: regions smaller than this many pixels are not listed.
        region_size_ranks: each listed region also gives its rank by area among the listed ones ("size rank 1" is
            the largest), so choosing among the n largest is a match of small labels (docs/policy.md).
    """

    dataset: str = "mni-tissue"
    data_dir: str | None = None
    skip_bad: bool = False
    split: str = "train"
    dataset_seed: int = 0
    image_size: int = 512
    max_turns: int = 5
    max_invalid: int = 3
    min_area: int = 16
    seed: int | None = None
    reward: RewardConfig = field(default_factory=RewardConfig)
    alpha: float = 0.5
    instruction_max_chars: int = 256
    history_max_chars: int = 2048
    message_max_chars: int = 4096
    prompt_tool: str = "sam"
    prompt_previous_logits: bool = True
    refine_tool: str = "refine"
    cps_tool: str = "cps"
    adapt_tool: str = "mgipt"
    n_references: int = 1
    load_tools: bool = True
    max_regions: int = 5
    region_min_area: int = 8
    region_size_ranks: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):
            self.reward = RewardConfig(**self.reward)
        if self.image_size < 8:
            raise ConfigError(f"EnvConfig.image_size must be >= 8 pixels, got {self.image_size}")
        if self.max_turns < 1:
            raise ConfigError(f"EnvConfig.max_turns must be >= 1, got {self.max_turns}")
        if self.max_invalid < 1:
            raise ConfigError(f"EnvConfig.max_invalid must be >= 1, got {self.max_invalid}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"EnvConfig.alpha must be in [0, 1], got {self.alpha}")
        if min(self.instruction_max_chars, self.history_max_chars, self.message_max_chars) < 16:
            raise ConfigError("EnvConfig text lengths must be >= 16 characters")
