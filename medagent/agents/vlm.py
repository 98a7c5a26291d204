"""A tiny offline Qwen3-VL policy: model, processor and the agent that plays InteractiveSegEnv with it.

Everything is built on this machine with no download:
- a byte-level BPE tokenizer trained here (`tokenizers`) on text medagent itself produces (the system prompt,
  the tool schema, instructions, tool calls in the 0-999 frame, tool answers), with Qwen's control tokens and
  every integer 0-999 as one token;
- `Qwen2VLImageProcessor` (patch 16, merge 2: what Qwen3-VL uses) and `Qwen3VLProcessor`;
- the chat template: TRL's `qwen3_vl.jinja`, read at runtime from the installed `trl` package, byte for byte.
  TRL recognises templates by exact string, so only this text gets assistant-only loss (its training variant
  with `{% generation %}` markers) and tool-call parsing (`add_response_schema`);
- `Qwen3VLForConditionalGeneration` from a small config (random weights, seeded).

    from medagent.agents.vlm import TinyVLMConfig, save_tiny_vlm, load_vlm, VLMPolicyAgent
    path = save_tiny_vlm("runs/tiny-vlm", TinyVLMConfig(seed=0))
    agent = VLMPolicyAgent(path)                   # or VLMPolicyAgent(model, processor)
    result = run_episode(env, agent, seed=0)        # its text goes through the env's one parser

The agent builds its conversation with the one renderer (`medagent.envs.conversation`) that the SFT export
and GRPO use, so a policy sees at inference exactly the token ids it was trained on (a test holds them equal).
"""

from __future__ import annotations

import importlib.resources
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence


from medagent.agents.base import Agent
from medagent.errors import CheckpointError, ConfigError

#: Qwen's control tokens (special: never produced by merges, skipped when decoding).
SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)
#: Tags the Qwen3 templates and TRL's response parser read; added as whole tokens but not special, so a
#: decoded generation keeps them (the env parses `<tool_call>` blocks from the text).
TAG_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")

#: Every integer of the 0-999 frame as one token (added tokens match longest-first: "539" is one token).
NUMBER_TOKENS = tuple(str(i) for i in range(1000))

#: Name of the file, inside a saved model folder, that records how the tiny model was built.
BUILD_FILE = "medagent_vlm.json"


def qwen3_vl_chat_template() -> str:
    """TRL's `qwen3_vl.jinja` as the installed trl ships it (read from the package, never copied here)."""
    try:
        return (importlib.resources.files("trl") / "chat_templates" / "qwen3_vl.jinja").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise CheckpointError(f"trl's chat_templates/qwen3_vl.jinja was not found in the installed trl ({exc}); "
                              "install trl>=1.16") from exc


@dataclass
class TinyVLMConfig:
    """Shape of the tiny Qwen3-VL policy (defaults: about 0.3 M parameters, trains at CPU speed).

    Attributes:
        vocab_size: target size of the BPE vocabulary (the trained size can be a little smaller).
        hidden_size / intermediate_size / num_layers / num_heads / num_kv_heads / head_dim: text decoder.
            Rule: `mrope_section` sums to head_dim / 2.
        mrope_section: (t, h, w) rotary sections of the multimodal RoPE.
        vision_hidden_size / vision_intermediate_size / vision_depth / vision_heads: vision tower.
        deepstack_visual_indexes: vision layers whose features are also fed to the decoder (each < vision_depth).
        num_position_embeddings: learned vision position grid (a square number; interpolated to the image).
        tie_word_embeddings: share the input embedding and the output head (as Qwen3-VL 2B does). Tied, a
            token the model attends to in its context scores high at its output, which is what copying a
            coordinate from a tool answer needs; each of the 1000 number tokens is then trained by every use
            as input, not only by the few times it is the answer.
        min_pixels / max_pixels: image area bounds of the image processor, pixels. The image is resized to a
            multiple of 32 per side within them; each 32x32 block is one image token (patch 16, merge 2).
        seed: seed of the tokenizer corpus and of the random weights.
    """

    vocab_size: int = 2048
    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 16
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_depth: int = 2
    vision_heads: int = 2
    deepstack_visual_indexes: tuple[int, ...] = (0,)
    num_position_embeddings: int = 64
    tie_word_embeddings: bool = False
    min_pixels: int = 32 * 32
    max_pixels: int = 128 * 128
    seed: int = 0

    def __post_init__(self) -> None:
        self.mrope_section = tuple(int(v) for v in self.mrope_section)
        self.deepstack_visual_indexes = tuple(int(v) for v in self.deepstack_visual_indexes)
        if len(self.mrope_section) != 3 or sum(self.mrope_section) * 2 != self.head_dim:
            raise ConfigError(f"TinyVLMConfig.mrope_section {self.mrope_section} must be 3 numbers summing to "
                              f"head_dim / 2 = {self.head_dim / 2}")
        if any(not 0 <= i < self.vision_depth for i in self.deepstack_visual_indexes):
            raise ConfigError(f"TinyVLMConfig.deepstack_visual_indexes {self.deepstack_visual_indexes} must be below "
                              f"vision_depth={self.vision_depth}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError("TinyVLMConfig.num_heads must be a multiple of num_kv_heads")
        if int(round(self.num_position_embeddings ** 0.5)) ** 2 != self.num_position_embeddings:
            raise ConfigError(f"TinyVLMConfig.num_position_embeddings must be a square, got {self.num_position_embeddings}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ConfigError("TinyVLMConfig needs 0 < min_pixels <= max_pixels")
        if self.vocab_size < 300:
            raise ConfigError("TinyVLMConfig.vocab_size must be >= 300 (256 byte symbols plus control tokens)")


# --------------------------------------------------------------------------------------------- tokenizer


#: Tokens only the processor may place (image and video framing): a sampled one would not match any image features
#: (Qwen3-VL's rope index then fails), so generation never emits them.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer: Any) -> list[int]:
    """Ids of `VISION_TOKENS` the tokenizer has (for `generate(suppress_tokens=...)`)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]
    return [i for i in ids if isinstance(i, int) and i != unk]


def corpus_texts(seed: int = 0, n_calls: int = 400, extra: Iterable[str] = ()) -> list[str]:
    """Text medagent produces, to train the tokenizer on: the system prompt with the tool schema, instructions,
    tool calls with random 0-999 coordinates, tool answers, the final answer, and the chat template's framing.

    Args:
        seed: seed of the random calls.
        n_calls: number of random tool calls.
        extra: more texts (e.g. instructions and actions from a trajectory folder).
    """
    from medagent.envs import AUTO_MODELS, FINAL_ANSWER, POINT_TYPES, SYSTEM_PROMPT, format_call, tool_schema

    rng = random.Random(seed)
    # The system turn with the tools block is in every prompt: repeated, BPE merges it into ~100 tokens.
    texts = [system_block()] * 20 + [SYSTEM_PROMPT, FINAL_ANSWER, *(json.dumps(t) for t in tool_schema())]
    names = ("lesion", "white matter", "grey matter", "brain", "nucleus", "nuclei", "syringe", "phantom",
             "ellipse", "square", "disk", "skull", "ventricle", "tumour", "organ", "cell", "vessel")
    for name in names:
        texts.append(f"Segment the {name}.")
        k = rng.randint(2, 9)
        texts.append(f"Segment the {name} nearest the top-left corner (1 of {k} {name} instances).")
        texts.append(f"Segment the {name} {rng.choice(['second', 'third', '4th'])} nearest the top-left corner "
                     f"(2 of {k} {name} instances).")
    for _ in range(n_calls):
        kind = rng.randrange(8)
        if kind < 3:
            x1, y1 = rng.randint(0, 900), rng.randint(0, 900)
            call = format_call("add_bbox", {"bbox_2d": [x1, y1, rng.randint(x1, 999), rng.randint(y1, 999)]})
        elif kind < 6:
            call = format_call("add_point", {"point_2d": [rng.randint(0, 999), rng.randint(0, 999)],
                                             "point_type": rng.choice(list(POINT_TYPES))})
        else:
            call = rng.choice([format_call("stop_action"), format_call("cps"), format_call("adapt"),
                               format_call("refine"), format_call("undo"),
                               format_call("select_region", {"region": rng.randint(1, 5)}),
                               format_call("auto_segment", {"model": rng.choice(list(AUTO_MODELS))})])
        texts.append(call)
        texts.append(f"<tool_response>\nThe mask now covers {rng.uniform(0, 60):.1f}% of the image in 2 regions, nearest "
                     "the top-left first: 1: [1, 2, 3, 4] 52 px; 2: [5, 6, 7, 8] 9 px.\n</tool_response>")
    texts += [
        "Segmentation finished.", "Back to the previous mask (nothing (empty mask)).", "undo error: nothing to undo",
        "refine error: there is no mask to refine yet", "(no parseable <tool_call>: episode over)",
        "cps error: no reference exemplar of this class in the training split", "adapt is unavailable here",
        "add_point error: point_2d must be two integers in 0-999", "The episode is over; no more calls are run.",
        "<|im_start|>system\n", "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n",
        "<|vision_start|><|image_pad|><|vision_end|>",
    ]
    texts.extend(extra)
    return texts


def system_block() -> str:
    """The system turn as the chat template renders it with every tool (`SYSTEM_PROMPT` + the tools block)."""
    import jinja2

    from medagent.envs import ConversationRenderer

    renderer = ConversationRenderer()
    template = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    template.filters["tojson"] = lambda value: json.dumps(value, ensure_ascii=False)
    return template.from_string(qwen3_vl_chat_template()).render(messages=[renderer.system_message()], tools=renderer.tools)


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048) -> Any:
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers (`PreTrainedTokenizerFast`).

    Qwen's control tokens are special tokens; the `<tool_call>`-style tags are whole, non-special tokens, and
    so is every integer 0-999 (`NUMBER_TOKENS`): a coordinate of the 0-999 frame is always exactly one token
    ("539" never splits into "53" + "9"), which a small policy needs to copy boxes from tool answers.
    eos = `<|im_end|>` (ends an assistant turn), pad = `<|endoftext|>`, no BOS (like Qwen).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # No regex pre-split: merges may span words, so the long fixed texts (the tools block) compress to few tokens.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(texts), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      additional_special_tokens=list(SPECIAL_TOKENS[1:]))
    wrapped.add_tokens(list(TAG_TOKENS) + list(NUMBER_TOKENS), special_tokens=False)
    wrapped.model_max_length = 32768
    return wrapped


# --------------------------------------------------------------------------------------------- model + processor


def build_processor(config: TinyVLMConfig | None = None, tokenizer: Any = None) -> Any:
    """`Qwen3VLProcessor` = Qwen2VLImageProcessor (patch 16, merge 2) + tokenizer + TRL's qwen3_vl template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor

    cfg = config or TinyVLMConfig()
    tokenizer = tokenizer if tokenizer is not None else train_tokenizer(corpus_texts(cfg.seed), cfg.vocab_size)
    image_processor = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels},
    )
    try:
        from transformers import Qwen3VLVideoProcessor

        video_processor = Qwen3VLVideoProcessor(patch_size=16, merge_size=2, temporal_patch_size=2,
                                                size={"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels})
    except ImportError:  # video needs torchvision; images do not
        video_processor = None
    return Qwen3VLProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                            chat_template=qwen3_vl_chat_template())


def build_tiny_vlm(config: TinyVLMConfig | None = None) -> tuple[Any, Any]:
    """Build `(model, processor)`: a random-weight Qwen3-VL from `config` and its processor; no download.

    The weights are drawn under `config.seed` without touching torch's global random state.
    """
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = config or TinyVLMConfig()
    processor = build_processor(cfg)
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    model_config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(tok), "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": list(cfg.mrope_section), "mrope_interleaved": True},
            "pad_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        },
        vision_config={
            "depth": cfg.vision_depth, "hidden_size": cfg.vision_hidden_size,
            "intermediate_size": cfg.vision_intermediate_size, "num_heads": cfg.vision_heads, "patch_size": 16,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": cfg.hidden_size,
            "num_position_embeddings": cfg.num_position_embeddings,
            "deepstack_visual_indexes": list(cfg.deepstack_visual_indexes),
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=cfg.tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = Qwen3VLForConditionalGeneration(model_config)
    model.generation_config.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = None
    model._medagent_build = asdict(cfg)  # recorded by save_tiny_vlm
    return model, processor


def save_vlm(model: Any, processor: Any, out: str | Path) -> Path:
    """Save a model and its processor into one folder (safetensors + configs + tokenizer + template)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    build = getattr(model, "_medagent_build", None)
    if build is not None:
        (out / BUILD_FILE).write_text(json.dumps(build, indent=2) + "\n")
    return out


def save_tiny_vlm(out: str | Path, config: TinyVLMConfig | None = None) -> Path:
    """Build the tiny VLM (`build_tiny_vlm`) and save it to `out`; returns `out`."""
    model, processor = build_tiny_vlm(config)
    return save_vlm(model, processor, out)


#: `load_vlm(dtype=...)` values besides None: the checkpoint's stored dtype, or one torch dtype.
DTYPES = ("auto", "bfloat16", "float16", "float32")
#: Files of a Hub VLM repository worth downloading: weights, configs, tokenizer and template files, the card.
VLM_HUB_PATTERNS = ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.md")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?")


def vlm_folder(path: str | Path) -> Path:
    """The local folder of a VLM reference: an existing folder, or a Hugging Face Hub id ("owner/name[@revision]"
    or "hf://owner/name[@revision]") downloaded once into the Hub cache (`huggingface_hub.snapshot_download`;
    offline, taken from that cache). A local path wins over a Hub id of the same spelling.

    Raises:
        CheckpointError: neither a local folder nor a Hub id that can be had (the message says which and why).
    """
    from medagent.tools.checkpoint import HUB_PREFIX, is_hub_id, resolve_checkpoint

    text = str(path)
    local = Path(text).expanduser()
    if local.exists() or not (is_hub_id(text) or _HUB_ID.fullmatch(text)):
        return local
    reference = text if is_hub_id(text) else HUB_PREFIX + text
    try:
        return resolve_checkpoint(reference, needs=("config.json",), kind="VLM", patterns=VLM_HUB_PATTERNS)
    except CheckpointError as exc:
        raise CheckpointError(f"{text}: no local folder of that name, and as a Hub id: {exc}") from exc


def _torch_dtype(dtype: str | None, device: str | None) -> str:
    """The `from_pretrained(dtype=...)` value of `load_vlm`'s `dtype` (None: float32 unless on CUDA)."""
    if dtype is None:
        # float32 on the CPU whatever the stored dtype (shipped tiny weights are float16 to halve their size)
        return "auto" if (device or "").startswith("cuda") else "float32"
    if dtype not in DTYPES:
        raise ConfigError(f"VLM dtype must be one of {', '.join(DTYPES)} (or None), got {dtype!r}")
    return dtype


def load_vlm(path: str | Path, device: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Load `(model, processor)`: a folder saved by `save_vlm` / `save_tiny_vlm` / `run_sft`, or any Qwen3-VL-style
    model folder or Hub id (`vlm_folder`), from local files only once resolved.

    Args:
        path: the model folder, or a Hub id such as "Saint-lsy/MedSAM-Agent-Qwen3-VL-8B-MedSAM2".
        device: torch device to move the model to (None: where it loads, the CPU).
        dtype: the weights' dtype. None (default): float32, except on a CUDA device, where the checkpoint's
            stored dtype is kept (shipped tiny weights are stored float16 and run float32 on the CPU); "auto": the
            stored dtype on any device; "bfloat16" / "float16" / "float32": that dtype (an 8B model in bf16 needs
            about 17 GB of memory instead of 33 GB in float32, on a host or a GPU).

    Raises:
        CheckpointError: `path` is not a folder with config.json and a processor, or a Hub id that cannot be had.
        ConfigError: an unknown `dtype`.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch_dtype = _torch_dtype(dtype, device)
    path = vlm_folder(path)
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} is not a saved VLM folder (no config.json); build one with save_tiny_vlm")
    try:
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        if not getattr(processor, "chat_template", None):  # shipped folders leave TRL's template out: read it from trl
            processor.chat_template = qwen3_vl_chat_template()
        model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot load the VLM in {path}: {str(exc).splitlines()[0]}") from exc
    if device:
        model = model.to(device)
    model.eval()
    return model, processor


# --------------------------------------------------------------------------------------------- the agent


class VLMPolicyAgent(Agent):
    """Plays InteractiveSegEnv with a vision-language model: the conversation is built by the one renderer
    (`medagent.envs.conversation.ConversationRenderer`, the same as SFT data and GRPO rollouts), the model
    generates, and the decoded text is the action. The env's parser judges it.

    Args:
        model: a Qwen3-VL-style model, or a folder saved by `save_vlm` / `run_sft` / `run_grpo` (then `processor`
            is loaded).
        processor: its processor (chat template, tokenizer, image processor).
        system: system prompt; default: the profile's (`medagent.envs.SYSTEM_PROMPT`, what SFT data and GRPO
            prompts use, for "medagent").
        max_new_tokens: generation budget per turn, tokens.
        do_sample / temperature / top_p: sampling; greedy by default (then `reset`'s seed does not matter).
        device: torch device for the model (None keeps it where it is).
        profile: the prompt format the model was trained with (`medagent.envs.prompt_profile`: "medagent", the
            default, or "medsam-agent" for MedSAM-Agent's released policy, or a `PromptProfile`). The conversation
            keeps the model's own text; the env runs `profile.env_action` of it (its calls in medagent's frame).
        prompt_source: where the profile reads its texts (medsam-agent: a MedSAM-Agent clone; `$MEDAGENT_MEDSAM_AGENT`).
        dtype: weights' dtype when `model` is a folder or Hub id (`load_vlm`: None, "auto", "bfloat16", ...).
    """

    name = "vlm"
    uses_ground_truth = False

    def __init__(self, model: Any, processor: Any = None, *, system: str | None = None, max_new_tokens: int = 64,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 device: str | None = None, profile: Any = None, prompt_source: str | None = None,
                 dtype: str | None = None) -> None:
        from medagent.envs.conversation import ConversationRenderer

        # the profile first: a missing prompt source fails before a large model loads
        renderer = ConversationRenderer(system, profile=profile, prompt_source=prompt_source)
        if isinstance(model, (str, Path)):
            model, loaded = load_vlm(model, device=device, dtype=dtype)
            processor = processor or loaded
        elif device:
            model = model.to(device)
        if processor is None:
            raise ConfigError("VLMPolicyAgent needs a processor with the model (or a saved model folder)")
        if max_new_tokens < 1:
            raise ConfigError(f"VLMPolicyAgent.max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model, self.processor = model, processor
        self.renderer = renderer
        self.max_new_tokens = int(max_new_tokens)
        self.do_sample, self.temperature, self.top_p = bool(do_sample), float(temperature), float(top_p)
        self.messages: list[dict[str, Any]] = []
        self._last_action: str | None = None
        self._seed: int | None = None
        self._calls = 0

    def reset(self, env: Any, seed: int | None = None) -> None:
        self.messages, self._last_action, self._seed, self._calls = [], None, seed, 0

    def observe(self, observation: dict[str, Any], env: Any) -> list[dict[str, Any]]:
        """Extend the conversation with what happened since the last call and return it (PIL images inline).

        First call: system + user (image, instruction). Later calls: the agent's previous message and one tool
        message per call it ran (`env.unwrapped.tool_turns`: each call's answer and the image after it).
        """
        if not self.messages:
            self.messages = self.renderer.start(observation["image"], str(observation.get("instruction", "")))
        elif self._last_action is not None:
            turns = env.unwrapped.tool_turns
            self.messages += self.renderer.step_messages(self._last_action, turns, calls=self._calls)
            self._calls += len(turns)
            self._last_action = None
        return self.messages

    def generate(self, messages: list[dict[str, Any]]) -> str:
        """Generate the assistant's next message for `messages`; returns the decoded text (special tokens dropped)."""
        return self.generate_batch([messages])[0]

    def generate_batch(self, conversations: list[list[dict[str, Any]]], seed: int | None = None) -> list[str]:
        """Generate the next message of several conversations in one batched `generate` (left padding)."""
        import torch

        tok = self.processor.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            inputs = self.renderer.render(self.processor, conversations, add_generation_prompt=True, return_tensors="pt",
                                          processor_kwargs={"padding": len(conversations) > 1})
        finally:
            tok.padding_side = side
        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample,
                                  "suppress_tokens": vision_token_ids(tok)}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        seed = self._seed if seed is None else seed
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            if self.do_sample and seed is not None:
                torch.manual_seed(seed + sum(len(c) for c in conversations))
            out = self.model.generate(**inputs, **kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [tok.decode(row, skip_special_tokens=True) for row in new_tokens]

    def act(self, observation: dict[str, Any], env: Any) -> str:
        """The model's next message; the env gets it as the profile maps it (`env_action`: unchanged for
        medagent's own format), while the conversation keeps what the model wrote."""
        action = self.generate(self.observe(observation, env))
        self._last_action = action
        return env_action(self.renderer, action, env)


def env_action(renderer: Any, text: str, env: Any) -> str:
    """`renderer.profile.env_action(text, W, H)` for the env's current episode (its original image's size)."""
    profile = renderer.profile
    if not profile.maps_actions:
        return text
    episode = env.unwrapped.episode
    return profile.env_action(text, episode.width, episode.height)


def play_batched(envs: Sequence[Any], agent: VLMPolicyAgent, seeds: Sequence[int],
                 options: Sequence[dict[str, Any] | None] | None = None, max_steps: int = 64) -> list[Any]:
    """Play one episode in each of `envs` at once: every turn, the conversations of the episodes still going
    are generated in one batch. Returns one `EpisodeResult` per env (the same fields as `run_episode`).

    Each env needs its own agent state, so the agent is used only for its model and renderer here.
    """
    from medagent.agents.base import EpisodeResult, Step

    if len(envs) != len(seeds):
        raise ConfigError(f"play_batched got {len(envs)} envs and {len(seeds)} seeds")
    options = list(options) if options is not None else [None] * len(envs)
    results, observations, conversations, calls = [], [], [], [0] * len(envs)
    for env, seed, option in zip(envs, seeds, options):
        obs, info = env.reset(seed=int(seed), options=option)
        results.append(EpisodeResult(reset_info=info))
        observations.append(obs)
        conversations.append(agent.renderer.start(obs["image"], str(obs.get("instruction", ""))))
    live = list(range(len(envs)))
    for _ in range(max_steps):
        if not live:
            break
        actions = agent.generate_batch([conversations[i] for i in live], seed=int(seeds[live[0]]))
        still = []
        for i, action in zip(live, actions):
            env = envs[i]
            sent = env_action(agent.renderer, action, env)
            obs, reward, terminated, truncated, info = env.step(sent)
            turns = env.unwrapped.tool_turns
            results[i].steps.append(Step(observations[i], sent, float(reward), bool(terminated), bool(truncated), info,
                                         list(turns)))
            observations[i] = obs
            conversations[i] = conversations[i] + agent.renderer.step_messages(action, turns, calls=calls[i])
            calls[i] += len(turns)
            if not (terminated or truncated):
                still.append(i)
        live = still
    for i, result in enumerate(results):
        result.final_observation = observations[i]
    return results


def policy_config(seed: int = 0) -> TinyVLMConfig:
    """The shape of the shipped tiny policy (about 1.3 M parameters): text decoder 4 x 128 with tied embeddings,
    vision tower 2 x 64, 128 x 128 images (16 image tokens each: the policy reads boxes from tool answers more
    than pixels)."""
    return TinyVLMConfig(hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                         mrope_section=(4, 6, 6), vision_hidden_size=64, vision_intermediate_size=128, vision_depth=2,
                         vision_heads=2, deepstack_visual_indexes=(1,), num_position_embeddings=64,
                         min_pixels=128 * 128, max_pixels=128 * 128, tie_word_embeddings=True, seed=seed)
