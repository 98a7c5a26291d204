"""Item 2 of the conversation contract: for one scripted episode, the token ids of the SFT example (through the
collator SFT trains with), of the policy's prompt at every turn, and of TRL's GRPO prompt + tool turns are equal
where they overlap."""

from __future__ import annotations

import json

import pytest

from medagent.agents import run_episode
from medagent.agents.base import Agent
from medagent.agents.vlm import VLMPolicyAgent, load_vlm, save_tiny_vlm
from medagent.envs import FINAL_ANSWER, convert_coords, format_call
from medagent.envs.testing import fake_tools, make_dataset, make_env
from medagent.envs.trl_adapter import SegToolEnvironment

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def script(env) -> list[str]:
    ep = env.unwrapped.episode
    import numpy as np

    ys, xs = np.nonzero(ep.gt)
    box = convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], ep.width, ep.height, to="frame").tolist()
    return [format_call("add_bbox", {"bbox_2d": box}),
            format_call("add_point", {"point_2d": [box[0], box[1]], "point_type": "negative"}) + "\n" + format_call("refine"),
            format_call("stop_action")]


class Scripted(Agent):
    name = "scripted"

    def reset(self, env, seed=None):
        self.actions = script(env)

    def act(self, observation, env):
        return self.actions.pop(0)


class RecordingVLM(VLMPolicyAgent):
    """Writes the script instead of generating, and records the prompt ids the model would see each turn."""

    def reset(self, env, seed=None):
        super().reset(env, seed)
        self.actions, self.prompt_ids = script(env), []

    def generate(self, messages):
        ids = self.renderer.render(self.processor, messages, add_generation_prompt=True)["input_ids"]
        self.prompt_ids.append(list(ids[0]))
        return self.actions.pop(0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load_vlm(save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny"))


def sft_ids(tmp_path, processor) -> list[int]:

    from medagent.train.sft import SFTRunConfig, make_collator
    from medagent.trajectories.export import episode_messages
    from medagent.trajectories.generate import GenerateConfig, generate, load_trajectories

    # One episode of the scripted agent, stored and exported as SFT data exactly as `trajectories generate/export` do.
    from medagent.agents import AGENTS

    AGENTS["scripted"] = Scripted
    try:
        generate(make_env, tmp_path / "traj", GenerateConfig(agent="scripted", episodes=1, shard_size=1, seed=0))
    finally:
        del AGENTS["scripted"]
    rows = sorted(load_trajectories(tmp_path / "traj"), key=lambda r: r["step"])
    example = episode_messages(rows)
    assert example["messages"][-1]["content"][0]["text"] == FINAL_ANSWER
    batch = make_collator(processor, SFTRunConfig(data="x"))([example])
    return batch["input_ids"][0].tolist(), rows


def test_sft_policy_and_grpo_token_ids_agree(tiny, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    from medagent.trajectories.generate import episode_seed
    from medagent.trajectories.prompts import prompt_messages

    model, processor = tiny
    # generate() plays episode 0 with this seed; the policy and GRPO paths reuse it (and the same case/target).
    seed = episode_seed(0, 0)
    full, rows = sft_ids(tmp_path, processor)
    assert len(rows) == 3 and rows[-1]["terminated"]
    from medagent.envs.targets import list_targets

    env = make_env()
    _, info = env.reset(seed=seed)  # the case and target that seed draws, as a GRPO prompt row names them
    targets = list_targets(env.episode.case, env.config.min_area)
    options = {"case_index": info["case_index"], "target_index": targets.index(env.episode.target)}

    # -- policy: its prompt at every turn is a prefix of the SFT example, ending right where its message starts
    agent = RecordingVLM(model, processor)
    played = run_episode(make_env(), agent, seed=seed)
    assert [s.action for s in played.steps] == [r["action"] for r in rows]
    tok = processor.tokenizer
    assistant_start = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for ids in agent.prompt_ids:
        assert full[: len(ids)] == ids
        assert ids[-len(assistant_start):] == assistant_start
    assert len(agent.prompt_ids) == 3

    # -- GRPO: TRL's own prompt tokenisation and tool-suffix rendering over the adapter's answers
    row = {"prompt": prompt_messages(), "seed": seed, **options}
    adapter = SegToolEnvironment(dataset=make_dataset(), tools=fake_tools(), image_size=32, load_tools=False, min_area=9)
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                      num_generations=2, max_steps=1, report_to="none", log_completions=False)
    import datasets

    trainer = GRPOTrainer(model=model, reward_funcs=[lambda completions, **k: [0.0] * len(completions)], args=args,
                          train_dataset=datasets.Dataset.from_list([row, row]), processing_class=processor,
                          environment_factory=lambda: SegToolEnvironment(dataset=make_dataset(), tools=fake_tools(),
                                                                         image_size=32, load_tools=False, min_area=9))
    observation = adapter.reset(**row)
    prompt = row["prompt"][:-1] + [{**row["prompt"][-1], "content": row["prompt"][-1]["content"] + observation}]
    trainer._batch_environments = [None]  # TRL's private routing field, as `_generate` sets it for one environment
    prompt_ids, _, _ = trainer._tokenize_prompts([prompt])  # TRL's own prompt rendering (tools block included)
    sequence = list(prompt_ids[0])
    assert sequence == agent.prompt_ids[0]
    for text in (r["action"] for r in rows):
        sequence += tok(text + "<|im_end|>", add_special_tokens=False)["input_ids"]  # what the model generates
        tool_messages = []
        for block in text.split("<tool_call>\n")[1:]:
            call = json.loads(block.split("\n</tool_call>")[0])
            content = getattr(adapter, call["name"])(**call["arguments"])
            tool_messages.append({"role": "tool", "name": call["name"], "content": content})
        sequence += trainer._get_tool_suffix_ids(tool_messages)  # TRL's own tool-turn rendering
        assert full[: len(sequence)] == sequence
    # GRPO then generates the final answer where the SFT example holds it
    final = tok(FINAL_ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert full[len(sequence): len(sequence) + len(final)] == final
