"""Per-turn records of played episodes, for the trajectory viewer of `medagent.eval.report`.

`record_episode(env, result, agent, episode)` turns one episode played by `medagent.agents.run_episode` into a
plain dict: per call (one turn) the call as the history writes it, its outcome, the env's answer, Dice and IoU
after it, the reward terms and the step reward, and the image the policy saw after it (the overlay at the
policy's size); plus the image before the first call, the final mask with the prompts drawn (`env.render()`)
and the ground truth in another colour. It reads only what the env already computed (`Step.tool_turns`, the
step infos, the episode's public `trace`, `case`, `gt`), so recording costs a few PNG encodings per episode.
`write_recordings(folder, records)` stores them under ``<folder>/episodes/`` (episodes.json plus PNG files);
`read_recordings(folder)` reads them back with the PNG bytes; `recording_to_json` / `recording_from_json` carry a
record through a resumable run's unit log (PNGs as base64).

Reward terms per turn: after the last call of a message they are the env's own (`info["reward_terms"]`);
after an earlier call of a message with several calls they are `medagent.rewards.reward_terms` of the trace
up to that call (without NSD / HD95, which the env computes only for the current mask). The reward of a
call is the change of the episode score (the potential) it made, as the env's shaping defines it.
"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from medagent.provenance import to_jsonable, write_json

#: Colour of the ground truth in the viewer (the prediction is the env's green).
TRUTH_COLOUR = (255, 0, 255)
#: The folder (inside a run folder) and index file of recorded episodes.
EPISODES_DIR = "episodes"
INDEX_NAME = "episodes.json"


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) -> PNG file bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _floats(terms: dict[str, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in terms.items()}


def record_episode(env: Any, result: Any, agent: str, episode: int) -> dict[str, Any]:
    """The per-turn record of the episode `env` has just played (`result`: `medagent.agents.EpisodeResult`).

    Call right after `run_episode(env, ...)`, before the env is reset again. Turn images are PNG bytes.
    """
    from medagent.data.intensity import to_display_rgb
    from medagent.envs.render import overlay, resize_mask, resize_rgb
    from medagent.rewards import EpisodeTrace, reward_terms

    base_env = env.unwrapped
    ep = base_env.episode
    config = base_env.config
    size = int(config.image_size)
    calls = list(ep.trace.calls)
    base = resize_rgb(to_display_rgb(ep.case.image, ep.case.modality), size)
    first_obs = result.steps[0].observation if result.steps else result.final_observation
    start_image = first_obs["image"] if first_obs is not None else base
    final_obs = result.final_observation or {}
    final_image = final_obs.get("image", start_image)

    turns: list[dict[str, Any]] = []
    previous_image, previous_score, k = start_image, 0.0, 0
    for step in result.steps:
        info = step.info
        described = list(info.get("calls", []))
        if not described:  # a message with no parseable call: the episode ends with format 0
            terms = _floats(info.get("reward_terms", {}))
            turns.append({"call": "(no parseable tool call)", "outcome": "format_failed", "answer": "episode over",
                          "message": str(step.action), "dice": float(info.get("dice", 0.0)), "iou": float(info.get("iou", 0.0)),
                          "reward": float(step.reward), "terms": terms, "image": png_bytes(previous_image)})
            previous_score = terms.get("score", previous_score)
            continue
        outcomes, answers = list(info.get("outcomes", [])), list(info.get("results", []))
        for j, text in enumerate(described):
            record = calls[k] if k < len(calls) else None
            k += 1
            last = j == len(described) - 1
            if last:
                terms = _floats(info.get("reward_terms", {}))
            else:
                terms = _floats(reward_terms(EpisodeTrace(calls[:k]), config.reward))
            tool_turns = step.tool_turns
            image = tool_turns[j].image if j < len(tool_turns) and tool_turns[j].image is not None else None
            if image is None:  # the episode ended with this call: the final observation shows its mask
                image = final_image if last else previous_image
            score = terms.get("score", previous_score)
            turns.append({
                "call": str(text), "outcome": outcomes[j] if j < len(outcomes) else "",
                "answer": answers[j] if j < len(answers) else "", "message": str(step.action) if j == 0 else "",
                "dice": float(record.dice) if record is not None else float(info.get("dice", 0.0)),
                "iou": float(record.iou) if record is not None else float(info.get("iou", 0.0)),
                "reward": float(score - previous_score), "terms": terms, "image": png_bytes(image),
            })
            previous_image, previous_score = image, score
    rendered = base_env.render()
    truth = overlay(base, resize_mask(ep.gt, size) if ep.gt.any() else None, float(config.alpha), TRUTH_COLOUR)
    return {
        "agent": str(agent), "episode": int(episode), "dataset": base_env.dataset.info.name,
        "modality": ep.case.modality or base_env.dataset.info.modality, "case_id": ep.case.id,
        "subject": ep.case.subject, "class_name": ep.target.class_name,
        "instruction": str(result.reset_info.get("instruction") or (first_obs or {}).get("instruction", "")), "image_size": size,
        "dice": float(result.dice), "iou": float(result.iou), "score": float(result.score),
        "terminated": bool(ep.terminated), "truncated": bool(ep.truncated),
        "start": png_bytes(start_image), "final": png_bytes(rendered if rendered is not None else final_image),
        "truth": png_bytes(truth), "turns": turns,
    }


#: The PNG fields of a record (besides each turn's "image").
_PNG_KEYS = ("start", "final", "truth")


def recording_to_json(record: dict[str, Any]) -> dict[str, Any]:
    """`record_episode`'s record with its PNG bytes as base64 text, for a JSON-lines unit log (resume)."""
    def text(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    out = {key: (text(value) if key in _PNG_KEYS else value) for key, value in record.items() if key != "turns"}
    out["turns"] = [{**turn, "image": text(turn["image"])} for turn in record["turns"]]
    return to_jsonable(out)


def recording_from_json(data: dict[str, Any]) -> dict[str, Any]:
    """The inverse of `recording_to_json`: PNG fields back to bytes."""
    out = {key: (base64.b64decode(value) if key in _PNG_KEYS else value) for key, value in data.items() if key != "turns"}
    out["turns"] = [{**turn, "image": base64.b64decode(turn["image"])} for turn in data["turns"]]
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "agent"


def write_recordings(folder: str | Path, records: list[dict[str, Any]]) -> Path | None:
    """Store `records` under ``<folder>/episodes/``: one sub-folder of PNGs per episode and episodes.json
    (the records with file names in place of the PNG bytes). Returns the index path (None: nothing to write)."""
    if not records:
        return None
    root = Path(folder) / EPISODES_DIR
    root.mkdir(parents=True, exist_ok=True)
    index = []
    for rec in records:
        name = f"{_slug(rec['agent'])}-{int(rec['episode']):03d}"
        sub = root / name
        sub.mkdir(exist_ok=True)
        entry = {key: value for key, value in rec.items() if key not in ("start", "final", "truth", "turns")}
        for key in ("start", "final", "truth"):
            (sub / f"{key}.png").write_bytes(rec[key])
            entry[key] = f"{name}/{key}.png"
        entry["turns"] = []
        for t, turn in enumerate(rec["turns"], start=1):
            file = f"turn-{t:02d}.png"
            (sub / file).write_bytes(turn["image"])
            entry["turns"].append({**{k: v for k, v in turn.items() if k != "image"}, "image": f"{name}/{file}"})
        index.append(entry)
    path = root / INDEX_NAME
    write_json(path, to_jsonable(index))
    return path


def read_recordings(folder: str | Path) -> list[dict[str, Any]]:
    """The records `write_recordings` stored in a run folder, PNG bytes read back ([] when there are none)."""
    root = Path(folder) / EPISODES_DIR
    path = root / INDEX_NAME
    if not path.exists():
        return []
    out = []
    for entry in json.loads(path.read_text(encoding="utf-8")):
        rec = dict(entry)
        for key in ("start", "final", "truth"):
            rec[key] = (root / entry[key]).read_bytes()
        rec["turns"] = [{**turn, "image": (root / turn["image"]).read_bytes()} for turn in entry["turns"]]
        out.append(rec)
    return out
