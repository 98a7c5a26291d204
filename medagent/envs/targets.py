"""Episode targets: one class, or one instance of a class, in one 2D case, with its instruction.

- A class present in the label with >= `min_area` pixels is one target ("Segment the white matter.").
- Where the case has an instance map, each instance of >= `min_area` pixels is a target of its own
  (its class is the most frequent label under it). With several instances of one class the instruction
  says which, ordered by the distance of their centroids from the top-left corner:
  "Segment the lesion nearest the top-left corner (1 of 3 lesions)." / "(2nd nearest the top-left corner,
  2 of 3 lesions)". Classes that have instances are not also offered as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medagent.data.case import Case

_ORDINALS = {1: "1st", 2: "2nd", 3: "3rd"}


@dataclass(frozen=True)
class Target:
    """What one episode asks for.

    Attributes:
        class_index: index in the case's label map.
        class_name: the class's name.
        instance: instance id in `case.instances`, or 0 for a whole class.
        instruction: the sentence shown to the policy.
        area: target size in pixels.
    """

    class_index: int
    class_name: str
    instance: int
    instruction: str
    area: int

    def mask(self, case: Case) -> np.ndarray:
        """Boolean mask of this target on `case`'s grid: (H, W), or (D, H, W) for a volume's target."""
        if self.instance:
            return np.asarray(case.instances) == self.instance
        return np.asarray(case.label) == self.class_index


def _ordinal(n: int) -> str:
    return _ORDINALS.get(n, f"{n}th")


def _instance_classes(case: Case) -> list[tuple[int, int, int]]:
    """(instance id, voxel count, class) of each instance of `case.instances`, its class the most frequent label
    under it; instances over background only are left out. [] without an instance map."""
    if case.instances is None or not np.any(case.instances):
        return []
    label, inst = np.asarray(case.label), np.asarray(case.instances)
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    found = []
    for iid, count in zip(ids.tolist(), counts.tolist()):
        values, freq = np.unique(label[inst == iid], return_counts=True)
        cls = int(values[np.argmax(freq)])
        if cls:
            found.append((int(iid), int(count), cls))
    return found


def _class_targets(case: Case, skip: set[int], min_area: int) -> list[Target]:
    """One whole-class target per foreground class with >= `min_area` pixels, except the classes in `skip`."""
    label = np.asarray(case.label)
    targets = []
    for cls in case.foreground_classes():
        area = int(np.count_nonzero(label == cls))
        if cls not in skip and area >= min_area:
            name = case.class_names.get(cls, f"class {cls}")
            targets.append(Target(cls, name, 0, f"Segment the {name}.", area))
    return targets


def list_targets(case: Case, min_area: int = 16) -> list[Target]:
    """Every target of a labelled 2D case, in a fixed order (instance targets by class, then rank)."""
    if case.label is None or case.ndim != 2:
        return []
    instances = _instance_classes(case)
    by_class: dict[int, list[tuple[float, int, int]]] = {}
    for iid, count, cls in instances:
        if count >= min_area:
            ys, xs = np.nonzero(np.asarray(case.instances) == iid)
            by_class.setdefault(cls, []).append((float(np.hypot(ys.mean(), xs.mean())), iid, count))
    targets: list[Target] = []
    for cls in sorted(by_class):
        name = case.class_names.get(cls, f"class {cls}")
        items = sorted(by_class[cls])
        for rank, (_, iid, count) in enumerate(items, start=1):
            if len(items) == 1:
                text = f"Segment the {name}."
            elif rank == 1:
                text = f"Segment the {name} nearest the top-left corner (1 of {len(items)} {name} instances)."
            else:
                text = (f"Segment the {name} {_ordinal(rank)} nearest the top-left corner "
                        f"({rank} of {len(items)} {name} instances).")
            targets.append(Target(cls, name, iid, text, count))
    return targets + _class_targets(case, {cls for _, _, cls in instances}, min_area)


def volume_targets(case: Case, min_area: int = 16) -> list[Target]:
    """Every target of a labelled 3D case, by the 2D rule lifted to the volume (instance targets first, then classes).

    Where the volume has an instance map, each instance of >= `min_area` voxels is a target (its class the most
    frequent label under it) and classes with instances are not offered whole; otherwise each class present with
    >= `min_area` voxels is one target, all its connected components together (as a 2D class target, and as
    `eval tool` scores a class). The instruction is the class's sentence; an instance's names its id, since the
    rank an episode's instruction gives it ("nearest the top-left corner") is the rank among the instances its
    slice shows (the env's own target of that instance on the slice, `InteractiveSegEnv.reset(options={"target": ...})`).
    A 2D case has no volume targets ([]): use `list_targets`.
    """
    if case.label is None or case.ndim != 3:
        return []
    instances = _instance_classes(case)
    targets = []
    for iid, count, cls in sorted(instances, key=lambda t: (t[2], t[0])):
        if count >= min_area:
            name = case.class_names.get(cls, f"class {cls}")
            targets.append(Target(cls, name, iid, f"Segment the {name} (instance {iid} of the volume).", count))
    return targets + _class_targets(case, {cls for _, _, cls in instances}, min_area)
