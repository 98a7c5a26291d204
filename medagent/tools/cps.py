"""CPS: Conditional Point Sparsification few-shot segmentation, and its two baselines (owned by the CPS work).

    from medagent.tools import load_tool
    cps = load_tool("cps")                                    # shipped tiny SAM, its encoder as backbone
    pred = cps.predict(target, references=[ref1, ref2])       # refs: 2D Cases, label = binary mask (1 = target)
    pred.extras["density"], pred.extras["density_scores"], pred.extras["points"]

Training-free: a frozen SAM and a frozen feature backbone. Pipeline (METHODS.md section 2):
1. Dense matching (`fewshot.matching`): patch features of references and target on a common matching
   grid; per target cell max and mean cosine similarity to the references' foreground, product,
   min-max normalised, cells closer to the references' background zeroed; dense matched points = top-k
   cells, k = min(sum of the map, `max_points`).
2. Conditional sparsification (`fewshot.sparsify`): an operator keeps a fraction `density` of the dense
   points (default: region-wise cluster centres).
3. Density chosen on the references themselves: each candidate density is scored by the IoU between
   SAM's mask and a reference's ground truth, with that reference as the target: leave-one-out across
   shots (k >= 2), or `n_augment` augmented views of the single reference (1-shot). The best density
   (ties -> the sparser) is applied to the target.
4. SAM is prompted with the sparse points (each its own single-point prompt, masks filtered and merged
   as in the dense baseline; or all in one prompt; or one prompt per matched region;
   optionally a box from their extent and negative points from background-like cells); an optional
   refinement pass feeds SAM its own logits back with the same prompt.

Baselines in this module, on the same matching: `DensePointsTool` (GF-SAM style: every dense point is a
single-point prompt, masks whose mean similarity is below `dense_keep_ratio` x the best are dropped, the
rest are merged by union) and `SinglePointTool` (PerSAM style: one positive point at the maximum and
one negative at the minimum of the cosine similarity to the mean reference-foreground feature).

Inputs: `references` = list of 2D Cases whose `label` is the binary reference mask, or reference images
with `reference_masks` = one (H, W) mask per reference. References must have the target's channel count
and, unless `reference_sizes="any"`, its spatial size; an empty or non-binary reference mask is an error.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from medagent.data.case import Case
from medagent.errors import ConfigError, ToolError
from medagent.tools.base import Prediction, Tool, ToolKind, require_2d
from medagent.tools.fewshot.augment import AugmentConfig, augmented_view
from medagent.tools.fewshot.backbones import Backbone, make_backbone
from medagent.tools.fewshot.matching import Match, cell_centres, mask_fraction, match, match_grid, sample_features
from medagent.tools.fewshot.prompter import GroupResult, PromptGroup, Prompter, SamPrompter
from medagent.tools.fewshot.sparsify import OPERATORS, sparsify

PROMPT_MODES = ("point", "joint", "region")
#: Config keys callers pass to every tool alike (e.g. the CLI's dataset); few-shot tools ignore them.
_CONTEXT_KEYS = frozenset({"dataset"})


@dataclass
class CpsConfig:
    """Options of `cps` and of the two baselines (which use the matching and prompting fields only).

    Attributes:
        backbone: "sam" (the SAM tool's image encoder), "intensity", or "transformers:PATH" (a local
            transformers vision model folder).
        backbone_image_size: square input side for transformers backbones, pixels.
        match_size: longest side of the matching grid, cells (features are sampled at cell centres).
        fg_threshold: reference mask fraction from which a cell counts as foreground.
        background_filter: zero target cells more similar to reference background than foreground.
        max_points: cap of the dense matched points (GF-SAM: 128).
        max_ref_cells: most reference foreground / background cells compared (seeded subset).
        sparsify: operator, one of "topk", "spacing", "cluster", "region".
        densities: candidate fractions of dense points kept, each in (0, 1].
        density: a fixed density (skips the choice on the references), or None.
        min_points: fewest points kept at any density.
        prompt_mode: "point" (each sparse point a single-point prompt, masks filtered and merged as the
            dense baseline does: at density 1 CPS is the dense baseline), "joint" (all sparse points in one
            SAM prompt) or "region" (one prompt per matched region, masks merged by union).
        negative_points: negative points added to each prompt (the most background-like cells).
        use_box: add a box from the extent of each prompt's points, grown by `box_margin` x its size.
        box_margin: see `use_box`.
        refine: a second SAM pass with the first pass's logits and the same prompt.
        n_augment: augmented views scored per density for 1-shot.
        augment: ranges of those views.
        dense_keep_ratio: dense baseline: masks with mean similarity below this x the best are dropped.
        reference_sizes: "error" (default): a reference whose spatial size differs from the target's is
            an error; "any": allow it (matching runs on each image's own grid, nothing is resampled).
        seed: seed of reference subsets, clustering and augmentation.
    """

    backbone: str = "sam"
    backbone_image_size: int = 224
    match_size: int = 48
    fg_threshold: float = 0.5
    background_filter: bool = True
    max_points: int = 128
    max_ref_cells: int = 4096
    sparsify: str = "region"
    densities: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.4, 1.0)
    density: float | None = None
    min_points: int = 1
    prompt_mode: str = "point"
    negative_points: int = 0
    use_box: bool = False
    box_margin: float = 0.1
    refine: bool = True
    n_augment: int = 2
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    dense_keep_ratio: float = 0.5
    reference_sizes: str = "error"
    seed: int = 0

    def __post_init__(self) -> None:
        self.densities = tuple(sorted(float(d) for d in self.densities))
        if not self.densities or any(not 0 < d <= 1 for d in self.densities):
            raise ConfigError(f"densities must be fractions in (0, 1], got {self.densities}")
        if self.density is not None and not 0 < float(self.density) <= 1:
            raise ConfigError(f"density must be in (0, 1] or None, got {self.density}")
        if self.sparsify not in OPERATORS:
            raise ConfigError(f"sparsify must be one of {OPERATORS}, got {self.sparsify!r}")
        if self.reference_sizes not in ("error", "any"):
            raise ConfigError(f"reference_sizes must be 'error' or 'any', got {self.reference_sizes!r}")
        if self.prompt_mode not in PROMPT_MODES:
            raise ConfigError(f"prompt_mode must be one of {PROMPT_MODES}, got {self.prompt_mode!r}")
        if self.match_size < 2 or self.max_points < 1 or self.n_augment < 1 or self.min_points < 1:
            raise ConfigError("match_size must be >= 2 and max_points, n_augment, min_points >= 1")
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)

    @classmethod
    def from_kwargs(cls, **config: Any) -> "CpsConfig":
        """A config from keyword values; context keys (dataset) are ignored, unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(config) - known - _CONTEXT_KEYS
        if unknown:
            raise ConfigError(f"unknown few-shot option(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in config.items() if k in known})


@dataclass
class _Support:
    """One reference: the case and its binary mask (uint8 (H, W))."""

    case: Case
    mask: np.ndarray


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Foreground IoU of two binary masks (1.0 when both are empty)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else float(np.count_nonzero(a & b) / union)


class _FewShotTool(Tool):
    """Shared parts: reference checks, features on the matching grid, matching, prompting."""

    kind: ClassVar[ToolKind] = ToolKind.FEW_SHOT
    inputs: ClassVar[frozenset[str]] = frozenset({"references", "reference_masks"})

    def __init__(self, sam: Any = None, config: CpsConfig | None = None, backbone: Backbone | str | None = None,
                 prompter: Prompter | None = None) -> None:
        self.config = config or CpsConfig()
        if prompter is None and sam is None:
            raise ConfigError(f"tool {self.name!r} needs a SAM tool (sam=...) or a prompter")
        self.sam = sam
        self.prompter = prompter if prompter is not None else SamPrompter(sam)
        self.backbone = make_backbone(backbone if backbone is not None else self.config.backbone, sam=sam,
                                      image_size=self.config.backbone_image_size)
        self._memo: dict[int, tuple[Case, torch.Tensor, tuple[int, int]]] = {}

    # -- inputs ------------------------------------------------------------------------------
    def _support(self, case: Case, references: Any, reference_masks: Any) -> list[_Support]:
        require_2d(case, self.name)
        if references is None or isinstance(references, Case) or len(references) == 0:
            raise ToolError(f"tool {self.name!r} needs references=[Case, ...] (2D cases with binary labels), got {type(references).__name__}")
        refs = list(references)
        if reference_masks is not None and len(reference_masks) != len(refs):
            raise ToolError(f"{len(reference_masks)} reference_masks for {len(refs)} references (need one each)")
        out = []
        for i, ref in enumerate(refs):
            where = f"reference {i} ({getattr(ref, 'id', '?')!r})"
            if not isinstance(ref, Case):
                raise ToolError(f"{where} is a {type(ref).__name__}, not a Case")
            if ref.ndim != 2:
                raise ToolError(f"{where} is {ref.ndim}D (shape {ref.shape}); few-shot references must be 2D")
            if ref.shape != case.shape and self.config.reference_sizes == "error":
                raise ToolError(f"{where} has spatial size {ref.shape} but the target {case.id!r} has {case.shape}; "
                                "resample references onto the target's size first (or set reference_sizes='any')")
            if ref.channels != case.channels:
                raise ToolError(f"{where} has {ref.channels} channel(s) but the target {case.id!r} has {case.channels}")
            mask = ref.label if reference_masks is None else np.asarray(reference_masks[i])
            if mask is None:
                raise ToolError(f"{where} has no label: give its binary mask as the label or in reference_masks")
            mask = np.asarray(mask)
            if mask.shape != ref.shape:
                raise ToolError(f"{where}: mask shape {mask.shape} differs from its image {ref.shape}")
            values = np.unique(mask)
            if not np.isin(values, (0, 1)).all():
                raise ToolError(f"{where}: the mask must be binary (1 = target), found values {values[:8].tolist()}; "
                                "select the target class first (label == k)")
            if not values.max(initial=0):
                raise ToolError(f"{where} has an empty mask: a reference must show the target")
            out.append(_Support(ref, mask.astype(np.uint8)))
        return out

    # -- features and matching -----------------------------------------------------------------
    def _features(self, case: Case) -> tuple[torch.Tensor, tuple[int, int]]:
        key = id(case.image)
        hit = self._memo.get(key)
        if hit is not None and hit[0].image is case.image:
            return hit[1], hit[2]
        grid = match_grid(case.shape, self.config.match_size)
        feats = sample_features(self.backbone.features(case), grid)
        self._memo[key] = (case, feats, grid)
        return feats, grid

    def _match(self, target: Case, support: Sequence[_Support]) -> Match:
        feats, grid = self._features(target)
        ref_feats, fracs = [], []
        for s in support:
            f, g = self._features(s.case)
            ref_feats.append(f)
            fracs.append(mask_fraction(s.mask, g))
        c = self.config
        return match(feats, ref_feats, fracs, grid, target.shape, c.fg_threshold, c.background_filter, c.max_points,
                     c.max_ref_cells, c.seed)

    def _similarity_image(self, m: Match, shape: tuple[int, int]) -> np.ndarray:
        t = torch.from_numpy(m.similarity)[None, None]
        return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()

    def predict_2d(self, case: Case, references: Any = None, reference_masks: Any = None) -> Prediction:
        support = self._support(case, references, reference_masks)
        try:
            return self._predict(case, support)
        finally:
            self._memo.clear()

    def _predict(self, case: Case, support: list[_Support]) -> Prediction:
        raise NotImplementedError


def _best_point(m: Match) -> tuple[np.ndarray, np.ndarray]:
    """The single best cell of the unfiltered map as a dense-point set (fallback when none survive)."""
    flat = m.raw.reshape(-1)
    cell = np.array([np.unravel_index(int(np.argmax(flat)), m.grid)], dtype=np.int64)
    return cell, flat[[int(np.argmax(flat))]].astype(np.float32)


def _similarity_filter(masks: np.ndarray, sim: np.ndarray, owner: np.ndarray, ratio: float) -> np.ndarray:
    """Which of N masks (N, H, W) to merge: non-empty, mean similarity >= ratio x the best of the same owner."""
    n = len(masks)
    flat = masks.reshape(n, -1)
    area = flat.sum(1)
    mean_sim = (flat * sim.reshape(1, -1)).sum(1) / np.maximum(area, 1)
    keep = area > 0
    for o in np.unique(owner):
        sel = owner == o
        keep[sel] &= mean_sim[sel] >= ratio * mean_sim[sel].max(initial=0)
    return keep


class CpsTool(_FewShotTool):
    """Conditional Point Sparsification (module docstring)."""

    name: ClassVar[str] = "cps"

    def _dense(self, case: Case, m: Match) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Dense points (K, 2), scores (K,), regions (K,) and whether the fallback point was used."""
        if m.n_dense:
            return m.points, m.scores, m.regions, False
        cell, score = _best_point(m)
        return cell_centres(cell, m.grid, case.shape), score, np.zeros(1, np.int64), True

    def _negatives(self, case: Case, m: Match) -> np.ndarray:
        n = self.config.negative_points
        if n <= 0:
            return np.zeros((0, 2), np.float32)
        flat = m.background_margin.reshape(-1)
        order = [i for i in np.argsort(-flat, kind="stable")[:n] if flat[i] > 0]
        if not order:
            return np.zeros((0, 2), np.float32)
        cells = np.stack(np.unravel_index(np.asarray(order), m.grid), axis=1)
        return cell_centres(cells, m.grid, case.shape)

    def _box(self, pts: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        h, w = shape
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        mx = max(2.0, self.config.box_margin * (x1 - x0 + 1))
        my = max(2.0, self.config.box_margin * (y1 - y0 + 1))
        return np.array([max(0, x0 - mx), max(0, y0 - my), min(w - 1, x1 + mx), min(h - 1, y1 + my)], np.float32)

    def _groups(self, case: Case, m: Match, density: float) -> tuple[list[PromptGroup], np.ndarray, np.ndarray, bool]:
        """Prompt sets at `density`; also every point used (P, 2), their labels (P,), fallback flag."""
        c = self.config
        pts, scores, regions, fallback = self._dense(case, m)
        keep = sparsify(pts, scores, density, c.sparsify, regions, c.min_points, c.seed)
        neg = self._negatives(case, m)
        if c.prompt_mode == "joint":
            parts = [keep]
        elif c.prompt_mode == "point":
            parts = [keep[i : i + 1] for i in range(len(keep))]
        else:
            parts = [keep[regions[keep] == r] for r in np.unique(regions[keep])]
        groups = []
        for idx in parts:
            p = np.concatenate([pts[idx], neg]).astype(np.float32)
            lab = np.concatenate([np.ones(len(idx), np.int64), np.zeros(len(neg), np.int64)])
            box = self._box(pts[idx], case.shape) if c.use_box else None
            groups.append(PromptGroup(p, lab, box))
        used = np.concatenate([pts[keep], neg]).astype(np.float32)
        labels = np.concatenate([np.ones(len(keep), np.int64), np.zeros(len(neg), np.int64)])
        return groups, used, labels, fallback

    def _run(self, case: Case, groups: list[PromptGroup]) -> GroupResult:
        """SAM on prompt sets: single-point sets with multimask (SAM's advice for ambiguous prompts)."""
        single = [i for i, g in enumerate(groups) if len(g.points) == 1 and g.box is None]
        multi = [i for i in range(len(groups)) if i not in set(single)]
        h, w = case.shape
        masks = np.zeros((len(groups), h, w), np.uint8)
        scores = np.zeros(len(groups), np.float32)
        logits: list[np.ndarray | None] = [None] * len(groups)
        for idx, mm in ((single, True), (multi, False)):
            if not idx:
                continue
            r = self.prompter.segment_groups(case, [groups[i] for i in idx], multimask=mm)
            masks[idx] = r.masks
            scores[idx] = r.scores
            for j, i in enumerate(idx):
                logits[i] = None if r.logits is None else r.logits[j]
        if self.config.refine and all(l is not None for l in logits):
            again = [dataclasses.replace(g, mask_logits=l) for g, l in zip(groups, logits)]
            r = self.prompter.segment_groups(case, again, multimask=False)
            masks, scores = r.masks, r.scores
        return GroupResult(masks, scores, None)

    def masks_at(self, case: Case, m: Match, densities: Sequence[float]) -> list[dict[str, Any]]:
        """SAM's mask at each density (one batched prompter call for all): dicts with mask, score,
        points, point_labels, fallback."""
        all_groups, owner, meta = [], [], []
        for d in densities:
            groups, used, labels, fallback = self._groups(case, m, d)
            owner += [len(meta)] * len(groups)
            all_groups += groups
            meta.append({"density": d, "points": used, "point_labels": labels, "fallback": fallback})
        res = self._run(case, all_groups)
        owner_arr = np.asarray(owner)
        if self.config.prompt_mode == "point" and len(all_groups):  # the dense baseline's merge filter
            keep = _similarity_filter(res.masks, self._similarity_image(m, case.shape), owner_arr, self.config.dense_keep_ratio)
        else:
            keep = np.ones(len(all_groups), bool)
        for j, item in enumerate(meta):
            sel = (owner_arr == j) & keep
            item["mask"] = res.masks[sel].max(axis=0) if sel.any() else np.zeros(case.shape, np.uint8)
            item["score"] = float(res.scores[sel].mean()) if sel.any() else 0.0
        return meta

    def scoring_views(self, support: list[_Support]) -> list[tuple[Case, np.ndarray, list[_Support]]]:
        """(query case, query mask, support) triples the density is scored on: leave-one-out for k >= 2,
        augmented views of the single reference for 1-shot."""
        if len(support) >= 2:
            return [(s.case, s.mask, support[:i] + support[i + 1 :]) for i, s in enumerate(support)]
        rng = np.random.default_rng(self.config.seed)
        views = []
        for _ in range(self.config.n_augment):
            view, mask = augmented_view(support[0].case, support[0].mask, rng, self.config.augment)
            views.append((view, mask, support))
        return views

    def choose_density(self, support: list[_Support]) -> tuple[float, dict[float, float]]:
        """The density with the best mean reference IoU (ties -> the sparser) and every density's score."""
        densities = self.config.densities
        totals = np.zeros(len(densities))
        views = self.scoring_views(support)
        for query, qmask, sup in views:
            m = self._match(query, sup)
            for j, item in enumerate(self.masks_at(query, m, densities)):
                totals[j] += iou(item["mask"], qmask)
        scores = totals / len(views)
        best = int(np.argmax(scores))  # densities ascend: argmax takes the sparsest of equal scores
        return densities[best], {float(d): float(s) for d, s in zip(densities, scores)}

    def _predict(self, case: Case, support: list[_Support]) -> Prediction:
        c = self.config
        if c.density is None:
            density, density_scores = self.choose_density(support)
        else:
            density, density_scores = float(c.density), {}
        m = self._match(case, support)
        item = self.masks_at(case, m, [density])[0]
        return Prediction(
            mask=item["mask"],
            score=item["score"],
            extras={
                "density": density,
                "density_scores": density_scores,
                "points": item["points"],
                "point_labels": item["point_labels"],
                "n_points": int(len(item["points"])),
                "n_dense": m.n_dense,
                "fallback": item["fallback"],
                "similarity": m.similarity,
                "backbone": self.backbone.name,
                "sparsify": c.sparsify,
                "prompt_mode": c.prompt_mode,
                "shots": len(support),
            },
        )


class DensePointsTool(_FewShotTool):
    """GF-SAM-style baseline: one single-point prompt per dense matched point, filtered, merged by union."""

    name: ClassVar[str] = "dense-points"

    def _predict(self, case: Case, support: list[_Support]) -> Prediction:
        m = self._match(case, support)
        pts, fallback = m.points, False
        if not m.n_dense:
            cell, _ = _best_point(m)
            pts, fallback = cell_centres(cell, m.grid, case.shape), True
        groups = [PromptGroup(p[None].astype(np.float32), np.ones(1, np.int64)) for p in pts]
        res = self.prompter.segment_groups(case, groups, multimask=True)
        keep = _similarity_filter(res.masks, self._similarity_image(m, case.shape), np.zeros(len(groups), int),
                                  self.config.dense_keep_ratio)
        mask = res.masks[keep].max(axis=0) if keep.any() else np.zeros(case.shape, np.uint8)
        return Prediction(
            mask=mask,
            score=float(res.scores[keep].mean()) if keep.any() else 0.0,
            extras={"points": pts.astype(np.float32), "point_labels": np.ones(len(pts), np.int64), "n_points": int(len(pts)),
                    "n_dense": m.n_dense, "masks_kept": int(keep.sum()), "fallback": fallback, "similarity": m.similarity,
                    "backbone": self.backbone.name, "shots": len(support)},
        )


class SinglePointTool(_FewShotTool):
    """PerSAM-style baseline: positive point at the best, negative at the worst location confidence."""

    name: ClassVar[str] = "single-point"

    def _predict(self, case: Case, support: list[_Support]) -> Prediction:
        feats, grid = self._features(case)
        fg = []
        for s in support:
            f, g = self._features(s.case)
            frac = mask_fraction(s.mask, g).reshape(-1)
            w = torch.from_numpy(frac)
            fg.append((f * w).sum(1) / w.sum())  # mask-weighted mean reference feature
        proto = F.normalize(torch.stack(fg).mean(0), dim=0)
        conf = (feats.T @ proto).numpy()
        cells = np.stack(np.unravel_index(np.array([int(np.argmax(conf)), int(np.argmin(conf))]), grid), axis=1)
        pts = cell_centres(cells, grid, case.shape)
        labels = np.array([1, 0], np.int64)
        res = self.prompter.segment_groups(case, [PromptGroup(pts, labels)], multimask=True)
        return Prediction(
            mask=res.masks[0],
            score=float(res.scores[0]),
            extras={"points": pts, "point_labels": labels, "n_points": 2, "confidence": conf.reshape(grid).astype(np.float32),
                    "backbone": self.backbone.name, "shots": len(support)},
        )


# -- builders (registry) and CLI helpers ------------------------------------------------------------

def _sam_tool(checkpoint: str | Path | None, sam: Any) -> Any:
    if sam is not None:
        return sam
    from medagent.tools.registry import load_tool

    return load_tool("sam", checkpoint=checkpoint)


def build(checkpoint: str | Path | None = None, sam: Any = None, backbone: Backbone | str | None = None, **config: Any) -> CpsTool:
    """Registry builder of `cps`: SAM from `checkpoint` (a SAM folder or official .pth; None = shipped
    tiny SAM) or a given `sam` tool; `config` = `CpsConfig` fields."""
    return CpsTool(_sam_tool(checkpoint, sam), CpsConfig.from_kwargs(**config), backbone)


def build_dense_points(checkpoint: str | Path | None = None, sam: Any = None, backbone: Backbone | str | None = None,
                       **config: Any) -> DensePointsTool:
    """Registry builder of the `dense-points` baseline (same arguments as `build`)."""
    return DensePointsTool(_sam_tool(checkpoint, sam), CpsConfig.from_kwargs(**config), backbone)


def build_single_point(checkpoint: str | Path | None = None, sam: Any = None, backbone: Backbone | str | None = None,
                       **config: Any) -> SinglePointTool:
    """Registry builder of the `single-point` baseline (same arguments as `build`)."""
    return SinglePointTool(_sam_tool(checkpoint, sam), CpsConfig.from_kwargs(**config), backbone)


def load_references(ref_paths: Sequence[str | Path], mask_paths: Sequence[str | Path], modality: str | None = None) -> list[Case]:
    """Reference cases for `references=` from image files and mask files (any nonzero mask value = target).

    Raises:
        ToolError: different numbers of images and masks.
        DataError: unreadable files, a mask off its image's grid (from `medagent.data.io`).
    """
    from medagent.data.io import load_image, load_label

    if len(ref_paths) != len(mask_paths):
        raise ToolError(f"give one reference mask per reference image (got {len(ref_paths)} images and {len(mask_paths)} masks)")
    out = []
    for rp, mp in zip(ref_paths, mask_paths):
        ref = load_image(rp, modality=modality)
        any_value = ref.replace(class_names={0: "background", **{k: f"value {k}" for k in range(1, 256)}})
        mask = load_label(mp, like=any_value)
        out.append(ref.replace(label=(mask > 0).astype(np.uint8), provenance={**ref.provenance, "mask_path": str(mp)}))
    return out
