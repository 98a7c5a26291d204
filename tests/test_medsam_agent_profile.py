"""MedSAM-Agent's released policy in medagent's env: the "medsam-agent" prompt profile of the one renderer, its
coordinate rule, the prompt reader, and `eval agent --recipe configs/eval/medsam-agent.yaml` end to end with a
tiny stand-in policy (random weights, generation scripted) on the CPU. No network, no MedSAM-Agent text: the
tests write a stand-in of its `infer/models/model_loader.py` with the same structure and their own words."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from medagent.agents import run_episode
from medagent.agents.vlm import TinyVLMConfig, VLMPolicyAgent, build_tiny_vlm, load_vlm, save_tiny_vlm
from medagent.envs import ConversationRenderer, ToolTurn, convert_coords, format_call, tool_schema
from medagent.envs.coords import OUR_FRAME, CoordFrame
from medagent.envs.medsam_agent import SOURCE_ENV, read_released_prompt
from medagent.envs.prompt_profile import MEDAGENT, MEDSAM_AGENT_FRAME, get_profile, target_of
from medagent.envs.testing import make_env
from medagent.errors import CheckpointError, ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "eval" / "medsam-agent.yaml"

# A stand-in with the structure of MedSAM-Agent's file (a tool-list literal, a parenthesised system text with one
# f-string field joining it, two turn templates) in our own words. The import of a module that does not exist
# proves the reader never executes the file.
STAND_IN = textwrap.dedent('''
    import module_that_does_not_exist
    import json

    tools_json_v2 = [
        {"type": "function", "function": {"name": "add_bbox", "description": "Box the target.",
         "parameters": {"type": "object", "properties": {"bbox_2d": {"type": "array", "items": {"type": "integer"}}},
                        "required": ["bbox_2d"]}}},
        {"type": "function", "function": {"name": "add_point", "description": "Click.",
         "parameters": {"type": "object", "properties": {"point_2d": {"type": "array"},
                        "point_type": {"type": "string", "enum": ["positive", "negative"]}},
                        "required": ["point_2d", "point_type"]}}},
        {"type": "function", "function": {"name": "stop_action", "description": "Done.",
         "parameters": {"type": "object", "properties": {}, "required": []}}},
    ]

    system_prompt_v2 = (
        "Stand-in role text. "
        "Tools:\\n<tools>\\n"
        f"{chr(10).join([json.dumps(tool) for tool in tools_json_v2])}\\n"
        "</tools>\\n"
        'Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.'
    )

    prompt_turn_1 = "<image>Stand-in target line: {target_description}.\\n Stand-in first ask."

    prompt_later_turn = "<image>Stand-in mask line. Stand-in next ask."

    def not_run():
        raise RuntimeError("never called")
''')


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("MedSAM-Agent")
    (root / "infer" / "models").mkdir(parents=True)
    (root / "infer" / "models" / "model_loader.py").write_text(STAND_IN)
    return root


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_vlm(TinyVLMConfig())


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny", TinyVLMConfig())


# ------------------------------------------------------------------------------------------ the prompt reader
def test_reader_parses_the_file_without_executing_it(source, monkeypatch):
    prompt = read_released_prompt(source)
    tools_line = "\n".join(json.dumps(t) for t in prompt.tools)
    assert [t["function"]["name"] for t in prompt.tools] == ["add_bbox", "add_point", "stop_action"]
    assert prompt.system == ('Stand-in role text. Tools:\n<tools>\n' + tools_line + '\n</tools>\n'
                             'Answer with <tool_call>{"name": ..., "arguments": ...}</tool_call>.')
    assert prompt.first_turn == "<image>Stand-in target line: {target_description}.\n Stand-in first ask."
    assert prompt.later_turn == "<image>Stand-in mask line. Stand-in next ask."
    assert read_released_prompt(source / "infer" / "models" / "model_loader.py") == prompt  # the file itself
    monkeypatch.setenv(SOURCE_ENV, str(source))
    assert read_released_prompt() == prompt
    monkeypatch.delenv(SOURCE_ENV)
    with pytest.raises(ConfigError, match="git clone"):
        read_released_prompt()
    with pytest.raises(ConfigError, match="no such file"):
        read_released_prompt(source / "missing")


def test_reader_refuses_what_it_cannot_read(tmp_path):
    bad = tmp_path / "a.py"
    bad.write_text("tools_json_v2 = []\nsystem_prompt_v2 = 'x'\nprompt_turn_1 = 'y'\n")
    with pytest.raises(ConfigError, match="prompt_later_turn"):
        read_released_prompt(bad)
    bad.write_text("tools_json_v2 = []\nsystem_prompt_v2 = f'{os.getcwd()}'\nprompt_turn_1 = 'y'\nprompt_later_turn = 'z'\n")
    with pytest.raises(ConfigError, match="f-string field"):
        read_released_prompt(bad)
    bad.write_text("tools_json_v2 = []\nsystem_prompt_v2 = 'x'\nprompt_turn_1 = 'a {other}'\nprompt_later_turn = 'z'\n")
    with pytest.raises(ConfigError, match="unknown field"):
        get_profile("medsam-agent", bad)


# ------------------------------------------------------------------------------------------ the profile
def test_default_profile_is_todays_format():
    renderer = ConversationRenderer()
    assert renderer.profile is MEDAGENT and get_profile(None) is MEDAGENT and get_profile("medagent") is MEDAGENT
    assert renderer.template_tools == tool_schema()
    text = "Segment the lesion."
    assert renderer.user_message(None, text)["content"][1]["text"] == text
    call = format_call("add_bbox", {"bbox_2d": [1, 2, 3, 4]})
    assert MEDAGENT.env_action(call + " trailing", 10, 10) == call + " trailing"  # the env gets the text as written
    assert "tool_calls" in renderer.assistant_message(call)
    with pytest.raises(ConfigError, match="unknown prompt profile"):
        get_profile("nope")


def test_profile_renders_the_prompt_as_their_inference_code(source, tiny):
    _, processor = tiny
    released = read_released_prompt(source)
    renderer = ConversationRenderer(profile="medsam-agent", prompt_source=str(source))
    assert renderer.template_tools is None  # their code passes no tools= (the system text has them)
    instruction = "Segment the lesion nearest the top-left corner (1 of 3 lesion instances)."
    image = np.full((64, 64, 3), 40, np.uint8)
    call = format_call("add_bbox", {"bbox_2d": [100, 120, 500, 600]})
    after = np.full((64, 64, 3), 90, np.uint8)
    messages = renderer.start(image, instruction)
    messages += renderer.step_messages(call, [ToolTurn("add_bbox", "The mask now covers 3.0% of the image", after)])
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert "tool_calls" not in messages[2]  # verbatim text, as their history stores the decoded response
    images = [b["image"] for m in messages for b in m["content"] if b.get("type") == "image"]
    assert [im.size for im in images] == [(512, 512), (512, 512)]  # their 512 x 512 model input
    assert np.asarray(images[1])[0, 0].tolist() == [90, 90, 90]  # the image after the call, not the first one

    text = renderer.text(processor, messages, add_generation_prompt=True)
    vision = "<|vision_start|><|image_pad|><|vision_end|>"
    target = "lesion nearest the top-left corner (1 of 3 lesion instances)"
    assert target_of(instruction) == target
    assert text == ("<|im_start|>system\n" + released.system + "<|im_end|>\n"
                    "<|im_start|>user\n" + vision + released.first_turn.format(target_description=target) + "<|im_end|>\n"
                    "<|im_start|>assistant\n" + call + "<|im_end|>\n"
                    "<|im_start|>user\n" + vision + released.later_turn + "<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert "The mask now covers" not in text and "<tool_response>" not in text and "# Tools" not in text
    ids = renderer.render(processor, messages, add_generation_prompt=True)
    assert ids["pixel_values"].shape[0] > 0 and len(ids["image_grid_thw"]) == 2


# ------------------------------------------------------------------------------------------ coordinates
@pytest.mark.parametrize("width,height", [(128, 96), (197, 233), (512, 512), (999, 640)])
def test_their_calls_land_on_the_pixels_their_code_prompts(width, height):
    values = np.stack([np.arange(1000), np.arange(1000)[::-1]], axis=1)
    theirs = np.array([[min(round(x / 999 * width), width - 1), min(round(y / 999 * height), height - 1)]
                       for x, y in values.tolist()])  # infer/unibiomed_inference_toolusing.py's rule, clipped
    ours = MEDSAM_AGENT_FRAME.to_ours(values, width, height)
    assert ours.min() >= 0 and ours.max() <= 999
    assert np.array_equal(convert_coords(ours, width, height, to="pixels"), theirs)
    # medagent's frame is CoordFrame(): the same rule as convert_coords, both ways
    assert np.array_equal(OUR_FRAME.to_pixels(values, width, height), convert_coords(values, width, height))
    # round trip through pixels: every pixel's 0-999 value survives ours -> theirs -> ours
    pixels = np.stack([np.arange(width) % width, np.arange(width) % height], axis=1)
    frame = convert_coords(pixels, width, height, to="frame")
    assert np.array_equal(OUR_FRAME.from_pixels(pixels, width, height), frame)
    assert np.array_equal(MEDSAM_AGENT_FRAME.to_ours(MEDSAM_AGENT_FRAME.from_ours(frame, width, height), width, height), frame)


def test_large_images_are_within_one_pixel_and_rules_differ():
    values = np.stack([np.arange(1000), np.arange(1000)], axis=1)
    theirs = np.minimum(np.floor(values / 999 * 1024 + 0.5), 1023)
    back = convert_coords(MEDSAM_AGENT_FRAME.to_ours(values, 1024, 1024), 1024, 1024, to="pixels")
    assert np.abs(back - theirs).max() <= 1
    rl_tool = CoordFrame(divisor=1000, offset=0, rounding="floor")  # their RL tool's int(x * W / 1000)
    assert rl_tool.to_pixels([999, 999], 1024, 1024).tolist() == [1022, 1022]
    assert MEDSAM_AGENT_FRAME.to_pixels([999, 999], 1024, 1024).tolist() == [1023, 1023]


def test_env_action_maps_the_first_call_into_our_frame(source):
    profile = get_profile("medsam-agent", source)
    w, h = 197, 233
    box = [100, 120, 500, 600]
    text = ("I will box it.\n" + format_call("add_bbox", {"bbox_2d": box}) + "\n"
            + format_call("add_point", {"point_2d": [1, 2], "point_type": "positive"}))
    expected = MEDSAM_AGENT_FRAME.to_ours(box, w, h).tolist()
    assert profile.env_action(text, w, h) == format_call("add_bbox", {"bbox_2d": expected})  # first call only
    point = format_call("add_point", {"point_2d": [999, 0], "point_type": "negative"})
    assert json.loads(profile.env_action(point, w, h).split("\n")[1])["arguments"]["point_2d"] == [999, 0]
    out_of_range = format_call("add_bbox", {"bbox_2d": [0, 0, 1200, 50]})
    assert profile.env_action(out_of_range, w, h) == out_of_range  # left as written: the env's validator rejects it
    assert profile.env_action("no call at all", w, h) == "no call at all"  # format failure, as in the env
    assert profile.env_action("<tool_call>{not json}</tool_call>", w, h) == "<tool_call>\n{not json}\n</tool_call>"


def test_agent_under_the_profile_plays_the_toy_env(source, tiny):
    model, processor = tiny
    box = [0, 0, 999, 999]

    class Scripted(VLMPolicyAgent):
        def generate(self, messages):
            self.seen = [dict(m) for m in messages]
            return format_call("add_bbox", {"bbox_2d": box}) if len(messages) == 2 else format_call("stop_action")

    env = make_env()
    agent = Scripted(model, processor, profile="medsam-agent", prompt_source=str(source))
    result = run_episode(env, agent, seed=0)
    ep = env.unwrapped.episode
    assert [s.action for s in result.steps] == [
        format_call("add_bbox", {"bbox_2d": MEDSAM_AGENT_FRAME.to_ours(box, ep.width, ep.height).tolist()}),
        format_call("stop_action")]
    assert [m["role"] for m in agent.seen] == ["system", "user", "assistant", "user"]
    assert agent.seen[2]["content"][0]["text"] == format_call("add_bbox", {"bbox_2d": box})  # what the model wrote
    assert result.dice > 0 and ep.done
    with pytest.raises(ConfigError, match="git clone"):
        VLMPolicyAgent("never-loaded", profile="medsam-agent")  # the profile fails before any model loads


# ------------------------------------------------------------------------------------------ loading
def test_load_vlm_dtype_and_hub_ids(tiny_folder, monkeypatch):
    import torch

    assert next(load_vlm(tiny_folder)[0].parameters()).dtype == torch.float32
    assert next(load_vlm(tiny_folder, dtype="bfloat16")[0].parameters()).dtype == torch.bfloat16
    assert next(load_vlm(tiny_folder, dtype="auto")[0].parameters()).dtype == torch.float32  # stored float32
    with pytest.raises(ConfigError, match="dtype"):
        load_vlm(tiny_folder, dtype="half")
    with pytest.raises(CheckpointError, match="Hub"):  # offline in tests: not in the local Hub cache
        load_vlm("nobody-here/no-such-policy")
    calls = []

    def fake_download(repo_id, revision=None, allow_patterns=None, **kw):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(tiny_folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    model, processor = load_vlm("Saint-lsy/MedSAM-Agent-Qwen3-VL-8B-MedSAM2@main")
    assert calls == [("Saint-lsy/MedSAM-Agent-Qwen3-VL-8B-MedSAM2", "main",
                      ("*.safetensors", "*.json", "*.jinja", "*.txt", "*.md"))]
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"


# ------------------------------------------------------------------------------------------ the recipe, end to end
def test_recipe_runs_the_released_policy_path_on_cpu_with_a_tiny_stand_in(source, tiny_folder, tmp_path, monkeypatch):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from medagent.cli import app

    recipe = yaml.safe_load(RECIPE.read_text())
    assert recipe["policy"] == "Saint-lsy/MedSAM-Agent-Qwen3-VL-8B-MedSAM2"
    assert (recipe["prompt_profile"], recipe["prompt_tool"], recipe["image_size"]) == ("medsam-agent", "sam2", 512)
    # The machine-specific values swapped for the test's: the stand-in policy and prompt, the shipped tiny SAM on
    # the CPU; everything else is the recipe as shipped.
    recipe.update(policy=str(tiny_folder), prompt_source=str(source), prompt_tool="sam", prompt_checkpoint=None,
                  device="cpu", dtype="float32", agents="policy,mean-box", episodes=2, record_turns=1)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    tok = load_vlm(tiny_folder)[1].tokenizer
    script = [format_call("add_bbox", {"bbox_2d": [250, 250, 750, 750]}), format_call("stop_action")]
    prompts: list[str] = []

    def scripted_generate(self, input_ids=None, **kwargs):  # the stand-in policy writes the script
        prompts.append(tok.decode(input_ids[0]))
        text = script[(len(prompts) - 1) % len(script)] + "<|im_end|>"
        new = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], dtype=input_ids.dtype)
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(Qwen3VLForConditionalGeneration, "generate", scripted_generate)
    out = tmp_path / "results.json"
    result = CliRunner().invoke(app, ["eval", "agent", "--recipe", str(path), "--json", str(out), "--episodes", "1",
                                      "--runs-dir", str(tmp_path / "runs")])  # a flag overrides the recipe's episodes
    assert result.exit_code == 0, result.stdout
    summary = json.loads(out.read_text())["summary"]
    policy = summary["policy"]["mni-lesion"]["episode target"]
    assert 0.0 <= policy["dice"]["mean"] <= 1.0 and policy["turns"]["mean"] == 2.0
    assert "mean-box" in summary
    released = read_released_prompt(source)
    assert len(prompts) == 2  # one episode, two messages
    assert released.system in prompts[0] and "Stand-in target line: lesion" in prompts[0]
    assert released.later_turn in prompts[1] and "<tool_response>" not in prompts[1]
    assert "# Tools" not in prompts[0]  # no template tools block


def test_recipe_with_an_unknown_option_is_refused(tmp_path):
    from medagent.cli import app

    path = tmp_path / "r.yaml"
    path.write_text("agents: mean-box\nbogus_option: 1\n")
    result = CliRunner().invoke(app, ["eval", "agent", "--recipe", str(path)])
    assert result.exit_code == 2 and "bogus_option" in result.output
