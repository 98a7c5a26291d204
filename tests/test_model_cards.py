"""Every shipped checkpoint's model card names how to reproduce it (a command), its data and its metrics."""

from __future__ import annotations

import re

import pytest

from medagent.weights import WEIGHTS_DIR, read_manifest

#: A reproduction command: the CLI (`medagent train ...`) or a library call of a trainer (`train_x(...)`,
#: `train_shipped("name")`), inline or in a code block. Pointers such as `medagent data list` do not count.
COMMAND = re.compile(r"medagent train \w|\btrain_\w+\(")
#: A section or bullet naming the training data.
DATA = re.compile(r"^(#+ *Data\b|- *Data:|- *Teacher|.*\bbuiltin (dataset|data)\b)", re.M | re.I)
#: A measured number near the metric it is (the same line, or a table row under its header).
METRIC = re.compile(r"(Dice|BF|IoU|episode score|score)[\s\S]{0,300}?\d\.\d{2,}", re.I)
#: Phrases that make a recipe depend on the machine's speed instead of a stop step.
NOT_STEP_EXACT = re.compile(r"max_minutes=\d|stopped by the \d+-minute cap|stopped after the step-\d+ state", re.I)


@pytest.mark.parametrize("name", sorted(read_manifest()))
def test_model_card_names_command_data_and_metrics(name):
    card = (WEIGHTS_DIR / name / "README.md").read_text()
    assert COMMAND.search(card), f"{name}/README.md names no reproduction command (medagent train ... or train_x(...))"
    assert DATA.search(card), f"{name}/README.md does not say what data it was trained on"
    assert METRIC.search(card), f"{name}/README.md records no metric value"


@pytest.mark.parametrize("name", sorted(read_manifest()))
def test_model_card_recipe_is_step_exact(name):
    card = (WEIGHTS_DIR / name / "README.md").read_text()
    match = NOT_STEP_EXACT.search(card)
    assert match is None, f"{name}/README.md: recipe depends on machine load ({match.group(0)!r}); give the stop step"
