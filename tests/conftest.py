"""Shared fixtures. Builtin datasets derive into a per-session cache folder, never the user's cache."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# Derived data goes to one cache per test session (set before any medagent import reads it).
os.environ.setdefault("MEDAGENT_CACHE_DIR", os.path.join(tempfile.gettempdir(), "medagent-test-cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def square_case():
    """A 2D case: a bright 12x12 square (class 1) on a dark noisy 32x32 background."""
    from medagent.data import Case

    rng = np.random.default_rng(0)
    image = rng.normal(0.1, 0.02, size=(1, 32, 32)).astype(np.float32)
    image[0, 8:20, 10:22] += 1.0
    label = np.zeros((32, 32), np.uint8)
    label[8:20, 10:22] = 1
    return Case(image=image, label=label, spacing=(0.5, 0.5), modality="MR", class_names={0: "background", 1: "square"}, id="square")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny networks run faster on one torch thread, and extra threads only contend on a 2-core machine.

    Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
