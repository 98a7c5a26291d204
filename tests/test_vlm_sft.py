"""Tiny offline Qwen3-VL policy and SFT on exported expert trajectories (toy env, fake tools, no weights)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from medagent.agents import run_episode
from medagent.agents.vlm import (
    TinyVLMConfig, VLMPolicyAgent, build_tiny_vlm, corpus_texts, load_vlm, qwen3_vl_chat_template, save_tiny_vlm,
    train_tokenizer,
)
from medagent.envs import format_call, parse_message, tool_schema
from medagent.envs.testing import make_env
from medagent.errors import CheckpointError, ConfigError, DataError
from medagent.train.sft import SFTRunConfig, inline_images, make_collator, run_sft
from medagent.trajectories import FINAL_ANSWER, GenerateConfig, export_trl, generate


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """Expert trajectories on the toy env, exported in TRL's VLM messages + images format (all in "train")."""
    root = tmp_path_factory.mktemp("sft")
    generate(make_env, root / "traj", GenerateConfig(agent="expert", episodes=4, shard_size=4, seed=0))
    export_trl(root / "traj", root / "data", val_fraction=0.0)
    return root / "data"


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny", TinyVLMConfig(seed=0))


def test_template_is_trls_qwen3_vl_byte_for_byte_and_survives_save(tiny_vlm):
    from trl.chat_template_utils import get_training_chat_template, qwen3_vl_chat_template as trl_template

    assert qwen3_vl_chat_template() == trl_template
    model, processor = load_vlm(tiny_vlm)
    assert processor.chat_template == trl_template  # TRL recognises templates by exact string
    assert "{% generation %}" in get_training_chat_template(processor).replace("{%- generation -%}", "{% generation %}")
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert json.loads((tiny_vlm / "medagent_vlm.json").read_text())["seed"] == 0


def test_build_is_seeded_and_reloads_offline(tiny_vlm):
    model, processor = build_tiny_vlm(TinyVLMConfig(seed=0))
    loaded, loaded_processor = load_vlm(tiny_vlm)
    state, again = model.state_dict(), loaded.state_dict()
    assert state.keys() == again.keys() and all(torch.equal(state[k], again[k]) for k in state)
    other, _ = build_tiny_vlm(TinyVLMConfig(seed=1))
    assert not torch.equal(other.state_dict()["lm_head.weight"], state["lm_head.weight"])
    tok = loaded_processor.tokenizer
    assert tok.get_vocab() == processor.tokenizer.get_vocab()
    message = format_call("add_bbox", {"bbox_2d": [10, 20, 300, 999]})
    ids = tok(message, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == message
    assert tok.convert_ids_to_tokens(ids)[0] == "<tool_call>"  # one token, kept when decoding
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(str(v) in pieces for v in (10, 20, 300, 999))  # every coordinate is one token
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    with pytest.raises(CheckpointError, match="config.json"):
        load_vlm(tiny_vlm / "missing")


def test_tokenizer_is_trained_on_medagent_text():
    texts = corpus_texts(seed=0)
    assert any("add_bbox" in t for t in texts) and any(t.startswith("Segment the") for t in texts)
    tok = train_tokenizer(texts, vocab_size=600)
    assert len(tok) <= 600 + 16 + 1000  # + one token per integer 0-999
    # Merges learnt from the schema: a tool name is a handful of tokens, not one per byte ...
    assert len(tok.tokenize("stop_action")) <= 5
    # ... and at the default vocabulary the fixed system turn with the whole tools block is ~100 tokens.
    from medagent.agents.vlm import system_block

    block = system_block()
    assert "<tools>" in block and '"add_bbox"' in block
    assert len(train_tokenizer(texts).tokenize(block)) < 200 < len(block) // 10
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"


@pytest.mark.parametrize("bad", [{"mrope_section": (2, 2, 2)}, {"deepstack_visual_indexes": (5,)},
                                 {"num_position_embeddings": 50}, {"min_pixels": 10, "max_pixels": 5}])
def test_tiny_config_rejects_bad_shapes(bad):
    with pytest.raises(ConfigError):
        TinyVLMConfig(**bad)


def test_template_renders_tool_calls_that_trl_and_the_env_parse(tiny_vlm):
    from trl.chat_template_utils import (
        add_response_schema, is_chat_template_prefix_preserving, parse_response, qwen2_5_vl_chat_template,
        supports_tool_calling,
    )

    _, processor = load_vlm(tiny_vlm)
    assert supports_tool_calling(processor)
    assert is_chat_template_prefix_preserving(processor)  # GRPO's tool loop needs it
    add_response_schema(processor)  # raises on a template TRL does not recognise
    tok = processor.tokenizer
    user = [{"role": "user", "content": [{"type": "text", "text": "Segment the lesion."}]}]
    call = {"type": "function", "function": {"name": "add_bbox", "arguments": {"bbox_2d": [1, 2, 300, 400]}}}
    prompt = processor.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = processor.apply_chat_template(user + [{"role": "assistant", "content": [], "tool_calls": [call]}],
                                         tokenize=False)
    assert full.startswith(prompt)
    completion = full[len(prompt):]
    assert "<tool_call>" in completion and '"add_bbox"' in completion
    # What agents write (and SFT data store) is the template's own rendering, byte for byte.
    assert completion == format_call("add_bbox", {"bbox_2d": [1, 2, 300, 400]}) + "<|im_end|>\n"
    prefix = tok(prompt, add_special_tokens=False)["input_ids"]

    def parsed(text: str) -> dict:
        return parse_response(tok, tok(text, add_special_tokens=False)["input_ids"], prefix=prefix, tools=tool_schema())

    assert parsed(completion)["tool_calls"] == [call]
    # The env's parser reads the template's rendering too ...
    env_calls = parse_message(completion.replace("<|im_end|>\n", "")).calls
    assert [(c.name, c.arguments) for c in env_calls] == [("add_bbox", {"bbox_2d": [1, 2, 300, 400]})]
    # ... and TRL parses messages with several calls written back to back.
    own = format_call("add_point", {"point_2d": [5, 6], "point_type": "negative"}) + format_call("stop_action")
    calls = parsed(own + "<|im_end|>")["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["add_point", "stop_action"]
    assert calls[0]["function"]["arguments"] == {"point_2d": [5, 6], "point_type": "negative"}
    assert "tool_calls" not in parsed("no call here<|im_end|>")
    # DESIGN.md's fact, kept honest: Qwen2.5-VL's template drops assistant tool calls.
    processor.chat_template = qwen2_5_vl_chat_template
    assert not supports_tool_calling(processor)


def test_inline_images_fills_tool_turns_and_checks_counts(sft_data):
    import datasets

    example = datasets.load_from_disk(str(sft_data))["train"][0]
    n = len(example["images"])
    assert n >= 2  # the first image and at least one tool turn's image
    out = inline_images(example)
    assert out["images"] == []
    blocks = [b for m in out["messages"] for b in m["content"] if b["type"] == "image"]
    assert len(blocks) == n and all(b["image"] is example["images"][i] for i, b in enumerate(blocks))
    assert any(m["role"] == "tool" and any(b["type"] == "image" for b in m["content"]) for m in out["messages"])
    with pytest.raises(DataError, match="images"):
        inline_images({**example, "images": example["images"][:-1]})
    with pytest.raises(DataError, match="placeholders"):
        inline_images({**example, "images": example["images"] + example["images"][:1]})


def test_collator_sends_every_image_and_masks_all_but_assistant_turns(sft_data, tiny_vlm):
    import datasets

    from medagent.envs.conversation import render_calls

    _, processor = load_vlm(tiny_vlm)
    rows = datasets.load_from_disk(str(sft_data))["train"]
    examples = [rows[0], rows[1]]
    collator = make_collator(processor, SFTRunConfig(data="x"))
    batch = collator(examples)
    assert batch["image_grid_thw"].shape[0] == sum(len(e["images"]) for e in examples)
    tok = processor.tokenizer
    trained = tok.decode(batch["input_ids"][0][batch["labels"][0] != -100])
    assistant = []
    for m in inline_images(examples[0])["messages"]:
        if m["role"] == "assistant":
            text = "".join(b["text"] for b in m["content"])
            calls = [{"function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
                     for c in m.get("tool_calls") or []]
            assistant.append(render_calls(text, calls) if calls else text)
    assert trained == "".join(f"{text}<|im_end|>\n" for text in assistant)
    assert assistant[-1] == FINAL_ANSWER and "Segment the" not in trained and "<tool_response>" not in trained
    # The schema reaches the model through the template's tools block, not through the system text.
    full = tok.decode(batch["input_ids"][0])
    assert "<tools>" in full and '"add_bbox"' in full
    assert "<tools>" not in examples[0]["messages"][0]["content"][0]["text"]


def test_sft_runs_three_steps_and_the_policy_plays(sft_data, tmp_path):
    import datasets

    data = datasets.load_from_disk(str(sft_data))
    datasets.DatasetDict({"train": data["train"], "val": data["train"].select([0])}).save_to_disk(str(tmp_path / "data"))
    run = run_sft(SFTRunConfig(data=str(tmp_path / "data"), output_dir=str(tmp_path / "run"), max_steps=3, seed=0))
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in logs if "loss" in r]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert any(math.isfinite(r.get("eval_loss", math.nan)) for r in logs)
    assert losses[-1] < losses[0]  # lr 1e-3 on a random tiny model: three steps already fit the calls
    config = json.loads((run / "config.json").read_text())
    assert config["max_steps"] == 3 and config["assistant_only_loss"] is True
    assert (run / "versions.json").exists()
    env = make_env()
    agent = VLMPolicyAgent(run / "model", max_new_tokens=24)
    result = run_episode(env, agent, seed=0)
    assert result.steps and (result.steps[-1].terminated or result.steps[-1].truncated)
    assert all(env.observation_space.contains(s.observation) for s in result.steps)


def test_sft_resumes_from_its_last_checkpoint(sft_data, tmp_path):
    out = tmp_path / "run"
    run_sft(SFTRunConfig(data=str(sft_data), output_dir=str(out), max_steps=2, save_steps=2, save_model=False))
    assert (out / "checkpoints" / "checkpoint-2").is_dir() and not (out / "model").exists()
    run_sft(SFTRunConfig(data=str(sft_data), output_dir=str(out), max_steps=3, save_steps=2, resume=True))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == [1, 2, 3]  # the resumed run did only the missing step
    assert (out / "model" / "config.json").exists()


def test_run_sft_reports_bad_data(tmp_path, sft_data):
    with pytest.raises(DataError, match="does not exist"):
        run_sft(SFTRunConfig(data=str(tmp_path / "nothing"), output_dir=str(tmp_path / "r1"), max_steps=1))
    with pytest.raises(DataError, match="no split"):
        run_sft(SFTRunConfig(data=str(sft_data), train_split="nope", output_dir=str(tmp_path / "r2"), max_steps=1))
    with pytest.raises(ConfigError):
        SFTRunConfig(data="")
    with pytest.raises(ConfigError, match="checkpoint"):
        run_sft(SFTRunConfig(data=str(sft_data), output_dir=str(tmp_path / "r3"), max_steps=1, resume=True))


class _ScriptedVLM(VLMPolicyAgent):
    """Writes given messages first, then lets the model generate."""

    def __init__(self, *args, script=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.script = list(script)
        self.prompts: list[list[dict]] = []

    def generate(self, messages):
        self.prompts.append([dict(m) for m in messages])
        return self.script.pop(0) if self.script else super().generate(messages)


def test_agent_builds_the_sft_conversation_and_never_crashes_the_env(tiny_vlm):
    model, processor = load_vlm(tiny_vlm)
    env = make_env()
    box = format_call("add_bbox", {"bbox_2d": [0, 0, 999, 999]})
    agent = _ScriptedVLM(model, processor, max_new_tokens=16, script=[box])
    result = run_episode(env, agent, seed=3)
    assert len(result.steps) >= 2 and result.steps[0].action == box
    messages = agent.prompts[1]  # what the model saw when it generated its first own message
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert messages[0]["content"][0]["text"] == agent.renderer.system
    assert messages[2]["tool_calls"][0]["function"] == {"name": "add_bbox", "arguments": {"bbox_2d": [0, 0, 999, 999]}}
    tool_blocks = messages[3]["content"]
    assert tool_blocks[0]["type"] == "image" and tool_blocks[1]["text"].startswith("The mask now covers")
    assert np.array_equal(np.asarray(tool_blocks[0]["image"]), result.steps[1].observation["image"])
    # Sampled garbage: the env ends or goes on, it never raises.
    for seed in (0, 1):
        sampled = VLMPolicyAgent(model, processor, max_new_tokens=32, do_sample=True, temperature=1.5)
        out = run_episode(env, sampled, seed=seed)
        assert out.steps and all(env.observation_space.contains(s.observation) for s in out.steps)


def test_generation_never_samples_vision_framing_tokens(tiny_vlm):
    """A sampled <|vision_start|> has no image features behind it (Qwen3-VL's rope index fails): every
    generation path suppresses the framing tokens."""
    from medagent.agents.vlm import VISION_TOKENS, load_vlm, vision_token_ids

    _, processor = load_vlm(tiny_vlm)
    ids = vision_token_ids(processor.tokenizer)
    assert len(ids) == len(VISION_TOKENS) and len(set(ids)) == len(ids)
    assert processor.tokenizer.convert_ids_to_tokens(ids) == list(VISION_TOKENS)
