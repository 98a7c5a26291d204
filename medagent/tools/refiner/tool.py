"""The `refine` tool: image + coarse binary mask -> refined mask, its contour map and polygons.

    from medagent.tools import load_tool
    refiner = load_tool("refine")                       # shipped medagent/weights/refine-tiny
    pred = refiner.predict(case, mask=coarse)           # coarse: (H, W) binary
    pred.mask, pred.extras["contour_map"], pred.extras["polygons"], pred.extras["steps"]

Pipeline (one 2D image): intensity-normalise and grey the image -> band of `band_radius` px around
the coarse contour -> crop the band's bounding box (+ `context` px), pad to a multiple of 8 -> T reverse
diffusion steps on the band (diffusion.py) -> paste back -> minimal clean-up (specks, pin holes) ->
contour map and polygons (representation.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medagent.data.case import Case
from medagent.data.intensity import normalize
from medagent.errors import CheckpointError, DataError, ToolError, ToolUnavailable
from medagent.tools.base import Prediction, Tool, ToolKind, require_2d
from medagent.tools.checkpoint import is_hub_id, load_state_strict, read_config, read_weights, resolve_checkpoint, write_checkpoint
from medagent.tools.refiner.diffusion import reverse_sample
from medagent.tools.refiner.network import RefinerNet, RefinerNetConfig
from medagent.tools.refiner.representation import clean_mask, contour_band, contour_map, mask_polygons

WEIGHTS_NAME = "refine-tiny"


@dataclass
class RefinerConfig:
    """How the refiner runs (travels in config.json next to the weights; any field can be overridden).

    Attributes:
        steps: T, reverse diffusion steps (network evaluations) per image; ignored by the one-shot baseline.
        band_radius: half-width in px of the band around the coarse contour that may change.
        context: extra px of image around the band's bounding box that the network sees.
        seed: seed of the per-pixel transition draws (fixed, so a refinement is reproducible).
        min_area: components smaller than this (px) are dropped from the output.
        max_hole_area: holes up to this size (px) are filled; larger holes (rings) are kept.
        final_confidence: at the last step only pixels whose confidence 2|p - 0.5| reaches this adopt
            the prediction (0 = all); the rest keep their state.
    """

    steps: int = 4
    band_radius: float = 8.0
    context: int = 16
    seed: int = 0
    min_area: int = 4
    max_hole_area: int = 16
    final_confidence: float = 0.0

    @classmethod
    def from_dict(cls, data: dict) -> "RefinerConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def prepare_image(image: np.ndarray, modality: str) -> np.ndarray:
    """(C, H, W) raw image -> (H, W) float32 grey image in [0, 1] (the modality's intensity scaling)."""
    scaled = normalize(np.asarray(image, dtype=np.float32), modality)
    return scaled.mean(axis=0).astype(np.float32)


def standardise(grey: np.ndarray, band: np.ndarray) -> np.ndarray:
    """Z-score `grey` with the mean/std of the band pixels, so contrast at the boundary sets the scale."""
    values = grey[band] if band.any() else grey.ravel()
    std = float(values.std())
    return ((grey - float(values.mean())) / max(std, 1e-3)).astype(np.float32)


def crop_pad(array: np.ndarray, y0: int, x0: int, height: int, width: int, mode: str = "constant") -> np.ndarray:
    """The (height, width) window at (y0, x0) of a 2D array; parts outside are padded (`np.pad` mode)."""
    h, w = array.shape
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + height, h), min(x0 + width, w)
    window = array[ys:ye, xs:xe]
    pad = ((ys - y0, y0 + height - ye), (xs - x0, x0 + width - xe))
    if any(p for pair in pad for p in pair):
        window = np.pad(window, pad, mode=mode if window.size else "constant")
    return window


def check_mask(mask: Any, shape: tuple[int, ...], argument: str = "mask") -> np.ndarray:
    """Validate a coarse mask for a 2D image of spatial `shape`; returns it as (H, W) uint8 in {0, 1}."""
    if mask is None:
        raise DataError(f"refine needs a coarse {argument}= (H, W) binary array; none was given")
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != tuple(shape):
        raise DataError(f"refine: {argument} shape {tuple(arr.shape)} differs from the image grid {tuple(shape)}")
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
            raise DataError(f"refine: {argument} must be a numeric binary array, got dtype {arr.dtype}")
        values = np.unique(arr)
        if not set(values.tolist()) <= {0, 1}:
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if values.size > 6 else "")
            raise DataError(f"refine: {argument} must be binary (values 0 and 1), got values {{{shown}}}; "
                            "select one class first, e.g. mask == k")
    arr = arr.astype(np.uint8)
    if not arr.any():
        raise DataError(f"refine: {argument} is empty (no foreground pixel); there is no contour to refine")
    return arr


class RefineTool(Tool):
    """Discrete-diffusion contour refiner (see the module docstring and docs/refiner.md)."""

    name = "refine"
    kind = ToolKind.REFINER
    inputs = frozenset({"mask"})

    def __init__(self, net: RefinerNet, config: RefinerConfig | None = None, provenance: dict | None = None) -> None:
        self.net = net.eval()
        self.config = config or RefinerConfig()
        self.provenance = provenance or {}

    # -- the array-level API ---------------------------------------------------------------------------
    @torch.no_grad()
    def refine_array(self, grey: np.ndarray, coarse: np.ndarray, steps: int | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        """Refine one (H, W) coarse mask on one (H, W) grey image in [0, 1].

        Returns:
            (mask, prob, steps): raw refined (H, W) uint8 mask before clean-up, the x0 probability
            (H, W) float32 (coarse value outside the band) and the number of network evaluations.
        """
        cfg = self.config
        coarse = coarse.astype(np.uint8)
        band = contour_band(coarse, cfg.band_radius)
        if not band.any():  # the mask fills the whole image: nothing to place
            return coarse.copy(), coarse.astype(np.float32), 0
        image = standardise(grey, band)
        ys, xs = np.nonzero(band)
        y0, x0 = int(ys.min()) - cfg.context, int(xs.min()) - cfg.context
        height = -(-(int(ys.max()) + cfg.context + 1 - y0) // 8) * 8
        width = -(-(int(xs.max()) + cfg.context + 1 - x0) // 8) * 8
        as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]  # noqa: E731
        img_t = as_t(crop_pad(image, y0, x0, height, width, mode="edge"))
        coarse_t = as_t(crop_pad(coarse, y0, x0, height, width))
        band_t = as_t(crop_pad(band, y0, x0, height, width)) > 0.5
        if self.net.config.diffusion:
            steps = int(cfg.steps if steps is None else steps)
            generator = torch.Generator().manual_seed(int(cfg.seed))
            denoise = lambda state, gamma, c: self.net(self.net.make_input(img_t, c, state, gamma))  # noqa: E731
            refined_t, prob_t = reverse_sample(denoise, coarse_t, band_t, steps, generator, cfg.final_confidence)
        else:
            steps = 1
            prob_t = torch.sigmoid(self.net(self.net.make_input(img_t, coarse_t)))
            confident = (2.0 * (prob_t - 0.5)).abs() >= cfg.final_confidence
            refined_t = torch.where(band_t & confident, (prob_t > 0.5).float(), coarse_t)
        # Paste the window back into the full grid.
        h, w = coarse.shape
        ys0, xs0 = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + height, h), min(x0 + width, w)
        inner = (slice(ys0 - y0, ye - y0), slice(xs0 - x0, xe - x0))
        mask = coarse.copy()
        prob = coarse.astype(np.float32)
        mask[ys0:ye, xs0:xe] = refined_t[0, 0].numpy()[inner].astype(np.uint8)
        window_prob = prob_t[0, 0].numpy()[inner]
        window_band = band[ys0:ye, xs0:xe]
        prob[ys0:ye, xs0:xe] = np.where(window_band, window_prob, prob[ys0:ye, xs0:xe])
        return mask, prob, steps

    # -- the Tool API --------------------------------------------------------------------------------
    def predict_2d(self, case: Case, mask: Any = None, steps: int | None = None) -> Prediction:
        """Refine `mask` (binary (H, W)) on `case`; see the module docstring for the extras."""
        require_2d(case, self.name)
        coarse = check_mask(mask, case.shape)
        grey = prepare_image(case.image, case.modality)
        raw, prob, n_steps = self.refine_array(grey, coarse, steps)
        refined = clean_mask(raw, self.config.min_area, self.config.max_hole_area)
        if not refined.any():  # never hand back an empty mask for a non-empty input
            refined = coarse.copy()
        return Prediction(
            mask=refined,
            probabilities=np.stack([1.0 - prob, prob]).astype(np.float32),
            extras={
                "contour_map": contour_map(refined),
                "polygons": mask_polygons(refined),
                "steps": n_steps,
                "changed_pixels": int(np.count_nonzero(refined != coarse)),
            },
        )

    # -- checkpoints ---------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, model_name: str = "model", extra: dict | None = None) -> Path:
        """Write `<model_name>.safetensors` and its config (`config.json` for "model", else `<model_name>.json`)."""
        config = {"tool": self.name, "net": self.net.config.to_dict(), "refiner": asdict(self.config), **(extra or {})}
        return write_checkpoint(directory, config, self.net.state_dict(), config_name=_config_name(model_name),
                                weights_name=f"{model_name}.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path, model_name: str = "model", **overrides: Any) -> "RefineTool":
        """Load a checkpoint written by `save_pretrained`: a folder, one of its files (which names the model:
        `oneshot.safetensors` loads "oneshot"), or a Hub id `hf://owner/name[@revision]`; `overrides` replace
        RefinerConfig fields."""
        if not is_hub_id(directory) and Path(directory).is_file():
            model_name = "model" if Path(directory).name == "config.json" else Path(directory).stem
        weights_name, config_name = f"{model_name}.safetensors", _config_name(model_name)
        folder = resolve_checkpoint(directory, needs=(weights_name, config_name), kind="refine")
        config_path, weights = folder / config_name, folder / weights_name
        config = read_config(config_path, kind="refine", expect={"tool": cls.name})
        if "net" not in config:
            raise CheckpointError(f"{config_path}: not a refine config (no 'net' entry describing the network)")
        bad = set(overrides) - {f.name for f in fields(RefinerConfig)}
        if bad:
            raise ToolError(f"refine: unknown config field(s) {sorted(bad)}; known: {[f.name for f in fields(RefinerConfig)]}")
        net = RefinerNet(RefinerNetConfig.from_dict(config["net"]))
        load_state_strict(net, read_weights(weights), weights, what=f"the network in {config_path.name}")
        refiner_cfg = RefinerConfig.from_dict({**config.get("refiner", {}), **overrides})
        return cls(net, refiner_cfg, provenance={k: v for k, v in config.items() if k not in ("net", "refiner")})


def _config_name(model_name: str) -> str:
    return "config.json" if model_name == "model" else f"{model_name}.json"


def build(checkpoint: str | None = None, **config: Any) -> RefineTool:
    """Registry builder: the shipped `refine-tiny` weights, or a checkpoint folder/file written by save_pretrained
    (or a Hub id `hf://owner/name[@revision]`).

    `config` may hold RefinerConfig fields (steps, band_radius, ...) and `model_name` ("model" for the
    diffusion refiner, "oneshot" for the shipped one-shot baseline).
    """
    if checkpoint is None:
        from medagent.weights import weights_path

        try:
            checkpoint = str(weights_path(WEIGHTS_NAME))
        except CheckpointError as exc:
            raise ToolUnavailable(f"tool 'refine' has no shipped weights: {exc}") from exc
    model_name = config.pop("model_name", "model")
    return RefineTool.from_pretrained(checkpoint, model_name=model_name, **config)
