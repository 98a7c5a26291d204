"""Export trajectories for SFT (TRL's VLM "messages" + "images" format) and show an episode's frames.

One example per episode:
- system: `SYSTEM_PROMPT` with the rendered tool schema (`medagent.envs.tool_schema_text`; the VLM SFT
  collator ignores a `tools` column, so the schema travels in the system prompt);
- user: the first image and the instruction;
- per step: an assistant turn with the agent's message text (its `<tool_call>` block(s)), then a "tool" turn
  with the next observation image and the tool's answer text;
- after stop_action: a final assistant turn without a call (`FINAL_ANSWER`).
Images are listed in "images" in the order their placeholders appear. Train/val split by subject (a stable
hash of the subject id), so no subject is in both.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from medagent.envs.prompts import FINAL_ANSWER, SYSTEM_PROMPT, system_prompt  # noqa: F401  (re-exported)
from medagent.errors import ConfigError
from medagent.trajectories.generate import load_trajectories

def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


_IMAGE = {"type": "image", "text": None}


def episode_messages(rows: list[dict[str, Any]], system: str) -> dict[str, Any]:
    """Messages + images of one episode from its rows (sorted by step)."""
    messages = [{"role": "system", "content": [_text(system)]},
                {"role": "user", "content": [_IMAGE, _text(rows[0]["instruction"])]}]
    images = [rows[0]["image"]]
    for i, row in enumerate(rows):
        messages.append({"role": "assistant", "content": [_text(row["action"])]})
        results = json.loads(row["results"])
        if not results:  # an unparseable message ends the episode
            break
        next_image = rows[i + 1]["image"] if i + 1 < len(rows) else row["final_image"]
        stopped = json.loads(row["outcomes"])[-1] == "stop"
        if stopped:
            messages.append({"role": "tool", "content": [_text("\n".join(results))]})
            messages.append({"role": "assistant", "content": [_text(FINAL_ANSWER)]})
            break
        messages.append({"role": "tool", "content": [_IMAGE, _text("\n".join(results))]})
        images.append(next_image)
    return {"messages": messages, "images": images, "subject": rows[0]["subject"], "episode": int(rows[0]["episode"]),
            "episode_score": float(rows[0]["episode_score"])}


def is_val_subject(subject: str, val_fraction: float) -> bool:
    """Stable subject-level split: crc32(subject) decides, so a subject never lands in both splits."""
    return (zlib.crc32(subject.encode()) % 10_000) / 10_000 < val_fraction


def export_trl(path: str | Path, out: str | Path, val_fraction: float = 0.1, min_score: float | None = None) -> Any:
    """Write a `datasets.DatasetDict` ("train", and "val" when it has episodes) of TRL VLM chat examples to `out`.

    Args:
        path: a trajectory folder (`generate`).
        out: output folder (`DatasetDict.save_to_disk`).
        val_fraction: share of subjects in "val".
        min_score: keep only episodes whose score is >= this (None keeps all).
    """
    import datasets

    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
    table = load_trajectories(path)
    by_episode: dict[int, list[dict[str, Any]]] = {}
    for row in table:
        by_episode.setdefault(int(row["episode"]), []).append(row)
    system = system_prompt()
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for index in sorted(by_episode):
        rows = sorted(by_episode[index], key=lambda r: r["step"])
        if min_score is not None and rows[0]["episode_score"] < min_score:
            continue
        example = episode_messages(rows, system)
        splits["val" if is_val_subject(example["subject"], val_fraction) else "train"].append(example)
    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"),
                      "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
        "images": datasets.Sequence(datasets.Image()),
        "subject": datasets.Value("string"), "episode": datasets.Value("int64"), "episode_score": datasets.Value("float64"),
    })
    if not splits["train"]:
        raise ConfigError(f"{path}: no episode left for the train split (min_score={min_score}, val_fraction={val_fraction})")
    # An empty split (few subjects) is left out: datasets 5.2 cannot load an empty split back from disk.
    result = datasets.DatasetDict({name: datasets.Dataset.from_list(items, features=features)
                                   for name, items in splits.items() if items})
    result.save_to_disk(str(out))
    return result


def show(path: str | Path, index: int, out: str | Path) -> list[Path]:
    """Save episode `index`'s frames as PNGs (`step-00.png`, ..., `final.png`) in `out`; returns the files."""
    table = load_trajectories(path)
    rows = sorted((r for r in table.filter(lambda e: e == index, input_columns="episode")), key=lambda r: r["step"])
    if not rows:
        raise ConfigError(f"{path} has no episode {index}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for row in rows:
        files.append(out / f"step-{row['step']:02d}.png")
        row["image"].save(files[-1])
    if rows[-1]["final_image"] is not None:
        files.append(out / "final.png")
        rows[-1]["final_image"].save(files[-1])
    (out / "actions.json").write_text(json.dumps(
        [{"step": r["step"], "action": r["action"], "results": json.loads(r["results"]), "dice": r["dice"],
          "reward": r["reward"]} for r in rows], indent=2))
    return files
