"""Prompting SAM with many point sets on one image in one decoder call.

`SamPrompter.segment_groups(case, groups)` runs N prompt sets (each: points with labels, optionally a
box and previous logits) on one image embedding. Point sets of different lengths are padded with
SAM's "not a point" label (-1), as segment-anything itself pads prompts, so they share one batch.
Anything with the same `segment_groups` method can stand in for SAM (tests use a known one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from medagent.data.case import Case
from medagent.errors import ToolError


@dataclass
class PromptGroup:
    """One prompt set.

    Attributes:
        points: float32 (P, 2) pixel (x, y), P >= 1.
        labels: int64 (P,) 1 positive / 0 negative.
        box: float32 (4,) inclusive [x0, y0, x1, y1] pixels, or None.
        mask_logits: float32 (L, L) previous low-res logits, or None.
    """

    points: np.ndarray
    labels: np.ndarray
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None


@dataclass
class GroupResult:
    """masks: uint8 (N, H, W); scores: float32 (N,) predicted IoU; logits: float32 (N, L, L) or None."""

    masks: np.ndarray
    scores: np.ndarray
    logits: np.ndarray | None


class Prompter(Protocol):
    def segment_groups(self, case: Case, groups: list[PromptGroup], multimask: bool = False) -> GroupResult: ...


class SamPrompter:
    """`segment_groups` on a `SamTool` (its embedding cache, preprocessing and mask threshold).

    Args:
        sam: a `medagent.tools.sam.SamTool`.
        chunk: most prompt sets per decoder call (bounds memory on large images).
    """

    def __init__(self, sam: Any, chunk: int = 64) -> None:
        self.sam = sam
        self.chunk = int(chunk)

    @torch.no_grad()
    def segment_groups(self, case: Case, groups: list[PromptGroup], multimask: bool = False) -> GroupResult:
        """Masks of N prompt sets; with `multimask` SAM's best of 3 candidates (by predicted IoU) per set."""
        if not groups:
            h, w = case.shape
            return GroupResult(np.zeros((0, h, w), np.uint8), np.zeros(0, np.float32), None)
        has_box = [g.box is not None for g in groups]
        has_logits = [g.mask_logits is not None for g in groups]
        if len(set(has_box)) > 1 or len(set(has_logits)) > 1:
            raise ToolError("segment_groups: either every prompt set has a box (previous logits) or none has")
        emb, _ = self.sam.predictor.embed(case.image, case.modality)
        masks, scores, logits = [], [], []
        for s in range(0, len(groups), self.chunk):
            part = groups[s : s + self.chunk]
            p = max(len(g.points) for g in part)
            pts = np.zeros((len(part), p, 2), np.float32)
            lab = np.full((len(part), p), -1, np.int64)  # SAM's padding label
            for i, g in enumerate(part):
                pts[i, : len(g.points)] = g.points
                lab[i, : len(g.points)] = g.labels
            boxes = np.stack([g.box for g in part]).astype(np.float32) if has_box[0] else None
            prev = np.stack([g.mask_logits for g in part])[:, None].astype(np.float32) if has_logits[0] else None
            full, sc, low = self.sam.predictor.predict(emb, boxes=boxes, points=pts, point_labels=lab, mask_logits=prev,
                                                       multimask=multimask)
            best = torch.argmax(sc, dim=1)
            idx = torch.arange(full.shape[0])
            masks.append((full[idx, best] > self.sam.config.mask_threshold).numpy().astype(np.uint8))
            scores.append(sc[idx, best].numpy().astype(np.float32))
            logits.append(low[idx, best].numpy().astype(np.float32))
        return GroupResult(np.concatenate(masks), np.concatenate(scores), np.concatenate(logits))
