"""Export trajectories for SFT (TRL's VLM "messages" + "images" format) and show an episode's frames.

One example per episode, built by the one conversation renderer (`medagent.envs.conversation`), so SFT data,
the policy at inference and GRPO rollouts render to the same token ids:
- system: `SYSTEM_PROMPT` (the tool schema is not in it: the SFT collator passes it through the chat
  template's `tools=`, see `medagent.train.sft`);
- user: the first image and the instruction;
- per step: an assistant turn with the agent's calls (structured `tool_calls`, arguments as JSON text), then
  one "tool" turn per call with the image after that call and the call's answer (text only once the episode
  is over);
- after the episode ends (stop_action, max turns, too many errors): a final assistant turn without a call
  (`FINAL_ANSWER`); an episode ended by a message with no parseable call ends on that message.
Images are listed in "images" in the order their placeholders appear. Train/val split by subject (a stable
hash of the subject id), so no subject is in both.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

from medagent.envs.conversation import FINAL_ANSWER, ConversationRenderer, ToolTurn  # noqa: F401  (re-exported)
from medagent.errors import ConfigError
from medagent.trajectories.generate import load_trajectories


def row_tool_turns(row: dict[str, Any]) -> list[ToolTurn]:
    """The `ToolTurn`s of one trajectory row (images as PIL, in call order)."""
    names, texts, has_image = (json.loads(row[k]) for k in ("tool_names", "tool_texts", "tool_has_image"))
    images = iter(row["tool_images"] or [])
    return [ToolTurn(n, t, next(images) if h else None) for n, t, h in zip(names, texts, has_image)]


def storable(message: dict[str, Any]) -> dict[str, Any]:
    """A message in the datasets layout: tool-call arguments as JSON text (the template prints text verbatim,
    which is byte for byte what it renders for the dict)."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [{"type": c["type"], "function": {"name": c["function"]["name"],
                                       "arguments": json.dumps(c["function"]["arguments"])}} for c in calls]}


def episode_messages(rows: list[dict[str, Any]], renderer: ConversationRenderer | None = None) -> dict[str, Any]:
    """Messages (image placeholders) + images of one episode from its rows (sorted by step)."""
    renderer = renderer or ConversationRenderer()
    messages = renderer.start(None, rows[0]["instruction"])
    images = [rows[0]["image"]]
    ended_by_format = False
    for row in rows:
        turns = row_tool_turns(row)
        messages += renderer.step_messages(row["action"], turns, with_images=False)
        images += [t.image for t in turns if t.image is not None]
        ended_by_format = not turns
    if not ended_by_format:
        messages.append(renderer.final_message())
    return {"messages": [storable(m) for m in messages], "images": images, "subject": rows[0]["subject"],
            "episode": int(rows[0]["episode"]), "episode_score": float(rows[0]["episode_score"])}


def message_features() -> Any:
    """The datasets feature of a "messages" column (role, content blocks, tool calls, tool name)."""
    import datasets

    return [{"role": datasets.Value("string"),
             "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}],
             "tool_calls": [{"type": datasets.Value("string"),
                             "function": {"name": datasets.Value("string"), "arguments": datasets.Value("string")}}],
             "name": datasets.Value("string")}]


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
    renderer = ConversationRenderer()
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    for index in sorted(by_episode):
        rows = sorted(by_episode[index], key=lambda r: r["step"])
        if min_score is not None and rows[0]["episode_score"] < min_score:
            continue
        example = episode_messages(rows, renderer)
        splits["val" if is_val_subject(example["subject"], val_fraction) else "train"].append(example)
    features = datasets.Features({
        "messages": message_features(),
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
