"""Fake tools and a tiny in-memory dataset, for tests, benchmarks and examples that must not need weights.

The fakes follow the tool contracts the environment codes against (`predict(case, ...) -> Prediction`);
they are module-level classes so AsyncVectorEnv workers can unpickle them.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medagent.data.case import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.tools.base import Prediction

CLASSES = {0: "background", 1: "square", 2: "disk", 3: "lesion"}


def make_case(i: int, h: int = 48, w: int = 64) -> Case:
    """A grey image with a bright square (class 1), a disk (class 2) and two small lesions (class 3, instances)."""
    rng = np.random.default_rng(i)
    label = np.zeros((h, w), np.uint8)
    y0, x0 = 4 + i % 5, 6 + (3 * i) % 7
    label[y0:y0 + 16, x0:x0 + 18] = 1
    yy, xx = np.mgrid[:h, :w]
    label[(yy - 32) ** 2 + (xx - 44) ** 2 <= 8 ** 2] = 2
    instances = np.zeros((h, w), np.uint16)
    for k, (cy, cx) in enumerate([(40, 10 + i % 3), (8, 52)], start=1):
        blob = (yy - cy) ** 2 + (xx - cx) ** 2 <= 9
        label[blob] = 3
        instances[blob] = k
    image = (label.astype(np.float32) * 40 + rng.normal(0, 5, (h, w)).astype(np.float32))[None]
    return Case(image=image, label=label, instances=instances, spacing=(1.0, 1.0), modality="MR",
                class_names=dict(CLASSES), id=f"toy_{i:03d}", subject=f"subj{i // 2}")


def make_dataset(n_train: int = 6, n_test: int = 2) -> Dataset:
    info = DatasetInfo(name="toy", description="toy shapes", modality="MR", class_names=dict(CLASSES),
                       label_origin="procedural", license="CC0", source="tests")
    train = [make_case(i) for i in range(n_train)]
    test = [make_case(100 + i) for i in range(n_test)]
    return Dataset(info, {"train": CaseList.from_cases(train), "test": CaseList.from_cases(test)})


def _disk(shape: tuple[int, int], x: float, y: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - y) ** 2 + (xx - x) ** 2 <= r * r


class FakeSam:
    """Promptable: fills the box, adds discs of radius 4 around positive clicks, removes them at negative ones."""

    name = "fake-sam"
    inputs = frozenset({"boxes", "points", "point_labels", "mask_logits"})

    def predict(self, case: Case, boxes=None, points=None, point_labels=None, mask_logits=None) -> Prediction:
        mask = np.zeros(case.shape, bool)
        if boxes is not None:
            x0, y0, x1, y1 = (int(v) for v in np.asarray(boxes)[0])
            mask[y0:y1 + 1, x0:x1 + 1] = True
        if points is not None:
            for (x, y), lab in zip(np.asarray(points), np.asarray(point_labels)):
                disk = _disk(case.shape, x, y, 4)
                mask = mask | disk if lab else mask & ~disk
        return Prediction(mask=mask.astype(np.uint8), logits=mask.astype(np.float32), score=0.9)


class FakeAuto:
    """Automatic: the true label map with each class eroded once (good but imperfect)."""

    name = "fake-unet"
    class_names = dict(CLASSES)

    def predict(self, case: Case) -> Prediction:
        out = np.zeros(case.shape, np.uint8)
        for c in range(1, 4):
            out[ndimage.binary_erosion(case.label == c)] = c
        return Prediction(mask=out)


class FakeRefine:
    """Refiner: dilates the mask by one pixel."""

    name = "fake-refine"

    def predict(self, case: Case, mask=None) -> Prediction:
        return Prediction(mask=ndimage.binary_dilation(np.asarray(mask) > 0).astype(np.uint8))


class FakeCps:
    """Few-shot: returns the reference's mask translated nowhere (checks references arrive)."""

    name = "fake-cps"

    def predict(self, case: Case, references=None) -> Prediction:
        assert references, "cps got no references"
        return Prediction(mask=references[0].label.astype(np.uint8))


class FakeAdaptive:
    """Stateful like a test-time adapter: each call adapts once more, and the k-th call since `reset()` returns
    the label map eroded k - 1 times (so leaked state shows as a different mask)."""

    name = "fake-adapt"
    class_names = dict(CLASSES)
    stateful = True

    def __init__(self) -> None:
        self.calls = 0

    def reset(self) -> None:
        self.calls = 0

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])

    def predict(self, case: Case) -> Prediction:
        self.calls += 1
        out = np.zeros(case.shape, np.uint8)
        for c in range(1, 4):
            region = case.label == c
            if self.calls > 1:
                region = ndimage.binary_erosion(region, iterations=self.calls - 1)
            out[region] = c
        return Prediction(mask=out)


class RaisingTool:
    """Any call raises."""

    name = "raiser"

    def predict(self, case: Case, **kwargs) -> Prediction:
        raise RuntimeError("boom inside the tool")


def fake_tools() -> dict[str, object]:
    return {"sam": FakeSam(), "unet": FakeAuto(), "ifunet": RaisingTool(), "allukan": None, "refine": FakeRefine(),
            "cps": FakeCps(), "mgipt": None}


def make_env(**overrides):
    """An InteractiveSegEnv on the toy dataset with fake tools (nothing loaded from the registry)."""
    from medagent.envs import InteractiveSegEnv

    kwargs = {"image_size": 32, "load_tools": False, "min_area": 9, "tools": fake_tools()}
    kwargs.update(overrides)
    return InteractiveSegEnv(dataset=make_dataset(), **kwargs)


def make_dict_env(**overrides):
    from medagent.envs import DictActionSegEnv

    kwargs = {"image_size": 32, "load_tools": False, "min_area": 9}
    kwargs.update(overrides)
    return DictActionSegEnv(dataset=make_dataset(), tools=fake_tools(), **kwargs)
