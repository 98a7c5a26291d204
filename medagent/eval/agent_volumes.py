"""Agent episodes on volumes: one 2D env episode per slice that holds the target, reassembled and scored in 3D.

    from medagent.eval.agent_volumes import draw_volume_target, play_volume
    case_index, target = draw_volume_target(env, episode_seed)
    vol = play_volume(env, agent, "oracle-box", 0, case_index, target, episode_seed)
    vol.mask.shape == env.load_case(case_index).shape; vol.metrics["dice_3d"]

The rules (docs/evaluation.md, "Agents on volumes"):
- **Target.** A volume episode's target is drawn as the env draws a 2D one, from the episode's seed alone: a
  random case of the split, then a random target of it (`medagent.envs.targets.volume_targets`: a class, all its
  connected components together; or an instance where the volume has an instance map; >= `min_area` voxels).
- **Slices.** Along the coarsest-spacing axis (`Case.default_slice_axis`, as `eval tool` and `eval interactive`
  slice), every slice holding at least one voxel of the target is played as one env episode (reset options
  `case_index`, `slice_index`, `target`), with the env's instruction for that target on that slice (a class's
  sentence is the same on every slice). Slice selection reads the ground truth, as `eval tool`'s box prompts
  do: the 3D numbers measure segmentation on the target's slices, not finding them along the axis.
  `max_slices` keeps a contiguous run of that many of those slices centred on the target's largest slice.
- **Reassembly.** Each slice episode's final mask goes back at its index on the volume's grid; slices not
  played stay empty.
- **Metrics.** 3D Dice, IoU, NSD (at `tolerance_mm`) and HD95 (mm) of the reassembled mask against the target
  with the case's spacing (`medagent.metrics.binary_metrics`, as `eval tool` scores volumes), over the slab from
  the first to the last played slice (the whole volume unless `max_slices` cut it, where they are equal since
  both masks are empty outside). Beside them the means over played slices of the slice episodes' final 2D Dice,
  IoU, turns and episode score; calls, invalid / failed calls, format failures, tool counts and seconds are sums
  over the volume's slice episodes.
- **Seeds.** Slice k of episode i is reset with `unit_seed(episode seed, k)` (and torch with (seed, i, k)), so
  every agent plays the same slices with the same seeds, and a volume episode does not depend on the units
  played before it (the resume units of `evaluate_agents` stay one volume episode each).
A 2D case met in a volume evaluation is played as one "slice" (itself) and scored on its own grid.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medagent.data.case import Case
from medagent.envs.targets import Target, list_targets, volume_targets
from medagent.errors import ConfigError, DataError
from medagent.eval.resume import seed_torch, unit_seed
from medagent.metrics import binary_metrics

#: The 3D columns a volume episode adds to the agents' table (medagent.metrics names with a _3d suffix).
VOLUME_METRICS = ("dice_3d", "iou_3d", "nsd_3d", "hd95_3d")
#: Cases drawn before a split with no usable target is an error (as the env's reset).
_MAX_DRAWS = 200


def draw_volume_target(env: Any, episode_seed: int) -> tuple[int, Target]:
    """(case index, target) of one volume episode, a function of `episode_seed` only (every agent gets the same).

    Draws like `InteractiveSegEnv.reset`: a random case, then a random target of it (`volume_targets` of a
    volume, `list_targets` of a 2D case); cases without a target of >= the env's `min_area` voxels are redrawn.
    """
    base = env.unwrapped
    rng = np.random.default_rng(int(episode_seed))
    n, min_area = len(base.cases), base.config.min_area
    for _ in range(_MAX_DRAWS):
        index = int(rng.integers(n))
        case = base.load_case(index)
        targets = volume_targets(case, min_area) if case.ndim == 3 else list_targets(case, min_area)
        if targets:
            return index, targets[int(rng.integers(len(targets)))]
    raise DataError(f"no case with a target of >= {min_area} voxels found in {_MAX_DRAWS} draws from split "
                    f"{base.config.split!r} of {base.dataset.info.name!r}")


def target_slices(gt: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, areas) of the slices along `axis` of a (D, H, W) mask holding >= 1 target voxel, in order."""
    other = tuple(a for a in range(3) if a != axis)
    areas = np.count_nonzero(gt, axis=other)
    held = np.flatnonzero(areas)
    return held, areas[held]


def check_max_slices(max_slices: int | None) -> None:
    """A `ConfigError` for a slice cap below 1 (before any run folder or episode exists)."""
    if max_slices is not None and int(max_slices) < 1:
        raise ConfigError(f"max_slices (--max-slices) must be >= 1 or unset (every slice), got {max_slices}")


def cap_slices(indices: np.ndarray, areas: np.ndarray, max_slices: int | None) -> list[int]:
    """At most `max_slices` of `indices` (sorted slice indices holding the target, `areas` their target voxels):
    a contiguous run of them centred on the largest slice (ties: the first), shifted to stay inside; all of
    them when `max_slices` is None or not smaller."""
    check_max_slices(max_slices)
    if max_slices is None or len(indices) <= max_slices:
        return [int(i) for i in indices]
    centre = int(np.argmax(areas))
    start = min(max(centre - max_slices // 2, 0), len(indices) - max_slices)
    return [int(i) for i in indices[start:start + max_slices]]


def _put(volume: np.ndarray, axis: int, index: int, plane: np.ndarray) -> None:
    """volume[..., index, ...] = plane along `axis` (in place)."""
    where: list[Any] = [slice(None)] * volume.ndim
    where[axis] = index
    volume[tuple(where)] = plane


def volume_metrics(mask: np.ndarray, gt: np.ndarray, spacing: tuple[float, ...], axis: int | None,
                   played: list[int], tolerance_mm: float = 1.0) -> dict[str, float]:
    """dice_3d, iou_3d, nsd_3d, hd95_3d (mm) of a reassembled (D, H, W) mask against the target, over the slab from
    the first to the last played slice along `axis` (spacing in mm per axis, (z, y, x)); a 2D case (axis None)
    is scored on its own grid. HD95 is NaN when exactly one mask is empty (as `eval tool` reports it)."""
    if axis is not None:
        keep: list[Any] = [slice(None)] * 3
        keep[axis] = slice(min(played), max(played) + 1)
        mask, gt = mask[tuple(keep)], gt[tuple(keep)]
    values = binary_metrics(mask, gt, spacing, ("dice", "iou", "nsd", "hd95"), tolerance_mm=tolerance_mm)
    return {f"{name}_3d": value for name, value in values.items()}


@dataclass
class VolumeEpisode:
    """One agent's volume episode: what was played, the reassembled mask and its scores.

    Attributes:
        case: the case (a volume, or a 2D case played as one slice).
        case_index: its index in the env's split.
        target: the volume's target.
        axis: the slice axis (None for a 2D case).
        slices_total: slices holding the target.
        played: slice indices played, ascending (all of them unless `max_slices` cut the run).
        mask: bool, the case's grid (D, H, W) (or (H, W)): the slice episodes' final masks, empty elsewhere.
        gt: bool, the target on the same grid.
        metrics: `volume_metrics` of mask against gt.
        slice_rows: one dict per played slice (its 2D episode's numbers).
        recording: `medagent.eval.recording.record_episode` of the slice with the most target voxels, or None.
    """

    case: Case
    case_index: int
    target: Target
    axis: int | None
    slices_total: int
    played: list[int]
    mask: np.ndarray
    gt: np.ndarray
    metrics: dict[str, float]
    slice_rows: list[dict[str, Any]] = field(default_factory=list)
    recording: dict[str, Any] | None = None


def _slice_row(env: Any, result: Any, index: int | None, seconds: float) -> dict[str, Any]:
    """The numbers of one slice episode the env has just played (`result`: `medagent.agents.EpisodeResult`)."""
    episode = env.unwrapped.episode
    records = episode.trace.calls
    return {
        "slice_index": -1 if index is None else int(index), "slice_case_id": episode.case.id,
        "instruction": result.reset_info.get("instruction") or (result.steps[0].observation["instruction"] if result.steps else ""),
        "dice": result.dice, "iou": result.iou, "turns": result.turns, "episode_score": result.score,
        "calls": len(records), "invalid": sum(r.outcome == "invalid" for r in records),
        "failed": sum(r.outcome == "failed" for r in records), "format_failed": bool(episode.trace.format_failed),
        "target_pixels": int(np.count_nonzero(episode.gt)), "pred_pixels": int(np.count_nonzero(episode.mask)),
        "tool_counts": json.dumps(dict(Counter(r.name or "?" for r in records)), sort_keys=True),
        "errors": json.dumps([line.split(" -> ", 1)[-1] for r, line in zip(records, episode.history)
                              if r.outcome in ("invalid", "failed")]),
        "dice_per_turn": json.dumps([round(float(r.dice), 6) for r in records]),
        "seconds": seconds,
    }


def play_volume(env: Any, agent: Any, name: str, index: int, case_index: int, target: Target, episode_seed: int, *,
                seed: int = 0, max_slices: int | None = None, tolerance_mm: float = 1.0,
                record: bool = False) -> VolumeEpisode:
    """Play `agent` on every slice of case `case_index` holding `target` (the module docstring's rules).

    Args:
        env: an `InteractiveSegEnv` (or a wrapper of one).
        agent: the `Agent`; `name` labels its recording.
        index: the episode's index (its recording's and torch's seed).
        case_index, target: from `draw_volume_target`.
        episode_seed: slice k is reset with `unit_seed(episode_seed, k)`.
        seed: the run's seed (torch is seeded with (seed, index, k) before slice k).
        max_slices: play at most this many slices (a contiguous run around the largest).
        tolerance_mm: NSD tolerance.
        record: keep the slice with the most target voxels turn by turn.
    """
    from medagent.agents import run_episode
    from medagent.eval.recording import record_episode

    base = env.unwrapped
    case = base.load_case(case_index)
    gt = target.mask(case)
    axis = case.default_slice_axis() if case.ndim == 3 else None
    if axis is None:
        held, areas = np.zeros(1, int), np.array([int(gt.sum())])
    else:
        held, areas = target_slices(gt, axis)
    played = cap_slices(held, areas, max_slices)
    area_of = dict(zip(held.tolist(), areas.tolist()))
    largest = max(played, key=lambda k: (area_of[k], -k))  # the recorded slice: most target voxels, ties the first
    mask = np.zeros(case.shape, bool)
    rows, recording = [], None
    for k in played:
        seed_torch(seed, index, k)  # tools drawing from torch's global generator: the same per (episode, slice)
        options = {"case_index": case_index, "target": (target.class_index, target.instance)}
        if axis is not None:
            options["slice_index"] = k
        start = time.perf_counter()
        result = run_episode(env, agent, seed=unit_seed(episode_seed, k), options=options)
        seconds = time.perf_counter() - start
        plane = np.asarray(base.episode.mask, bool)
        if axis is None:
            mask = plane.copy()
        else:
            _put(mask, axis, k, plane)
        rows.append(_slice_row(env, result, None if axis is None else k, seconds))
        if record and k == largest:
            recording = record_episode(env, result, name, index)
    metrics = volume_metrics(mask, gt, case.spacing, axis, played, tolerance_mm)
    return VolumeEpisode(case, case_index, target, axis, int(len(held)), played, mask, gt, metrics, rows, recording)


def _mean_curve(rows: list[dict[str, Any]]) -> list[float]:
    """Mean over slices of Dice after each call; a slice whose episode ended keeps its last Dice (0 with no call)."""
    curves = [json.loads(r["dice_per_turn"]) for r in rows]
    longest = max((len(c) for c in curves), default=0)
    if not longest:
        return []
    grid = np.array([c + [c[-1] if c else 0.0] * (longest - len(c)) for c in curves], dtype=np.float64)
    return [round(float(v), 6) for v in grid.mean(axis=0)]


def volume_row(vol: VolumeEpisode, agent: Any, name: str, index: int, dataset: str, modality: str) -> dict[str, Any]:
    """The agents' table row of one volume episode (the 2D row's columns, aggregated, plus the 3D ones).

    Means over the played slices: dice, iou, turns, episode_score (the 2D numbers). Sums over them: calls,
    invalid, failed, format_failed (slice episodes that ended on a message with no parseable call), tool_counts,
    seconds; errors are concatenated. dice_per_turn is the mean curve (`_mean_curve`).
    """
    rows = vol.slice_rows
    mean = lambda key: float(np.mean([float(r[key]) for r in rows]))  # noqa: E731
    total = lambda key: int(sum(int(r[key]) for r in rows))  # noqa: E731
    counts: Counter[str] = Counter()
    errors: list[str] = []
    for r in rows:
        counts.update(json.loads(r["tool_counts"]))
        errors += json.loads(r["errors"])
    return {
        "agent": name, "dataset": dataset, "modality": vol.case.modality or modality, "episode": index,
        "case_id": vol.case.id, "subject": vol.case.subject, "instruction": vol.target.instruction,
        "dice": mean("dice"), "iou": mean("iou"), "turns": mean("turns"), "episode_score": mean("episode_score"),
        "oracle": bool(getattr(agent, "uses_ground_truth", False)),
        "calls": total("calls"), "invalid": total("invalid"), "failed": total("failed"),
        "format_failed": total("format_failed"), "tool_counts": json.dumps(dict(counts), sort_keys=True),
        "errors": json.dumps(errors), "dice_per_turn": json.dumps(_mean_curve(rows)),
        "seconds": float(sum(float(r["seconds"]) for r in rows)),
        "target_class": vol.target.class_name, "target_instance": int(vol.target.instance),
        "slice_axis": -1 if vol.axis is None else int(vol.axis), "slices": len(vol.played),
        "slices_total": vol.slices_total, "slice_indices": json.dumps(vol.played),
        "gt_voxels": int(np.count_nonzero(vol.gt)), "pred_voxels": int(np.count_nonzero(vol.mask)),
        **vol.metrics,
    }


def play_volume_unit(env: Any, agent: Any, name: str, index: int, episode_seed: int, drawn: tuple[int, Target], *,
                     seed: int = 0, max_slices: int | None = None, tolerance_mm: float = 1.0,
                     record: bool = False) -> dict[str, Any]:
    """One volume episode as `evaluate_agents`' unit: {"row": `volume_row`, "slices": the slice rows (each with
    agent, dataset, episode and case_id), "recording": the largest slice's record (PNGs as base64) or None}."""
    from medagent.eval.recording import recording_to_json

    base = env.unwrapped
    vol = play_volume(env, agent, name, index, drawn[0], drawn[1], episode_seed, seed=seed, max_slices=max_slices,
                      tolerance_mm=tolerance_mm, record=record)
    row = volume_row(vol, agent, name, index, base.dataset.info.name, base.dataset.info.modality)
    head = {"agent": name, "dataset": row["dataset"], "episode": index, "case_id": vol.case.id, "subject": vol.case.subject}
    return {"row": row, "slices": [{**head, **r} for r in vol.slice_rows],
            "recording": None if vol.recording is None else recording_to_json(vol.recording)}


def is_volume_split(env: Any) -> bool:
    """Whether a split's cases are volumes: the dataset says 3D, or its first case is (DICOM series folders are
    not probed from headers, so their info says 2D)."""
    base = env.unwrapped
    return int(getattr(base.dataset.info, "ndim", 2)) == 3 or base.load_case(0).ndim == 3
