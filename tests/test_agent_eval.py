"""Paired agent evaluation in the environment (fake tools: no weights needed)."""

from __future__ import annotations

from rich.console import Console

from medagent.envs.testing import fake_tools, make_dataset
from medagent.eval.agent_eval import agents_table, evaluate_agents


def test_agents_face_the_same_episodes_and_the_expert_beats_random():
    settings = {"dataset": make_dataset(), "image_size": 32, "load_tools": False, "min_area": 9}
    df = evaluate_agents(settings, ["expert", "random"], episodes=6, seed=0, tools=fake_tools())
    expert, random = df[df.agent == "expert"], df[df.agent == "random"]
    assert list(expert.case_id) == list(random.case_id)
    assert list(expert.instruction) == list(random.instruction)
    assert expert.dice.mean() > random.dice.mean()
    assert expert.oracle.all() and not random.oracle.any()
    console = Console(record=True, width=160)
    console.print(agents_table(df))
    text = console.export_text()
    assert "expert" in text and "random" in text
