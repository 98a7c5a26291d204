"""`otsu`: the intensity baseline, the floor of every bench table.

It needs no training: the (channel-averaged) raw intensities are split into
`n_classes` intensity bands by multi-level Otsu thresholds (scikit-image), falling back to k-means on
the intensities when Otsu cannot separate that many levels. Bands are numbered by increasing mean
intensity; the darkest band is background when `background="darkest"`.

With `background="head"` (the mni-* presets) the foreground is found from the image itself, the same way on
every image and every centre: the lightly smoothed image thresholded halfway between its 1st percentile and
its two-band Otsu threshold (low enough to keep the dark CSF at the brain's edge), its largest connected
component, holes filled; the bands are then split inside it. The halfway point and the 1 px smoothing were
chosen on the mni-tissue val split, clean and shifted (docs/segmenters.md). (`background="zero"`, exactly-zero pixels as
background, hands the baseline a free brain mask on clean skull-stripped data and loses it as soon as a
centre adds background noise, so bench tables do not use it.)

Without a mapping it predicts band indices; give `class_names` (band index -> name, in order of
increasing intensity) to name them, e.g. for T1 MR brain: {1: "cerebrospinal fluid", 2: "grey matter",
3: "white matter"}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medagent.data.case import Case
from medagent.errors import CheckpointError, ConfigError, DataError
from medagent.tools.base import Prediction, Tool, ToolKind
from medagent.tools.checkpoint import read_config, resolve_checkpoint, write_checkpoint

#: The one file of an otsu checkpoint folder.
CONFIG_NAME = "config.json"

#: Band names for the builtin tasks, by increasing intensity (used when a dataset name is given).
PRESETS: dict[str, dict[int, str]] = {
    "mni-tissue": {1: "cerebrospinal fluid", 2: "grey matter", 3: "white matter"},
    "nuclei": {1: "nucleus"},
    "generic": {1: "foreground"},
}


BACKGROUNDS = ("darkest", "head", "zero")


@dataclass
class OtsuConfig:
    """Config of the intensity baseline.

    Attributes:
        n_classes: number of intensity bands including background (>= 2).
        class_names: band index (1 = darkest non-background band) -> class name.
        background: "darkest" makes the darkest band class 0; "head" makes everything outside the image's
            largest bright component class 0 and splits the inside into n_classes - 1 bands (module
            docstring); "zero" makes exactly-zero pixels class 0 and splits the rest (masked images only).
    """

    n_classes: int = 2
    class_names: dict[int, str] = field(default_factory=lambda: dict(PRESETS["generic"]))
    background: str = "darkest"

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise ConfigError(f"n_classes must be >= 2, got {self.n_classes}")
        if self.background not in BACKGROUNDS:
            raise ConfigError(f"background must be one of {', '.join(BACKGROUNDS)}, got {self.background!r}")
        self.class_names = {int(k): str(v) for k, v in self.class_names.items()}


class OtsuTool(Tool):
    """Multi-Otsu intensity bands as a segmentation."""

    name = "otsu"
    kind = ToolKind.AUTOMATIC
    inputs = frozenset()

    def __init__(self, config: OtsuConfig | None = None) -> None:
        self.config = config or OtsuConfig()

    @property
    def class_names(self) -> dict[int, str]:
        return {0: "background", **self.config.class_names}

    def predict_2d(self, case: Case) -> Prediction:
        if not np.isfinite(case.image).all():
            raise DataError(f"case {case.id!r}: image has NaN or Inf values")
        # Raw intensities: Otsu's partition does not change under monotone rescaling, and clipping
        # (CT windows, percentiles) could merge bands.
        scaled = case.image.mean(axis=0)
        if self.config.background in ("zero", "head"):
            inside = case.image.max(axis=0) != 0 if self.config.background == "zero" else head_mask(scaled)
            bands = _bands(scaled[inside], self.config.n_classes - 1)
            mask = np.zeros(scaled.shape, np.uint8)
            mask[inside] = 1 + np.digitize(scaled[inside], bands).astype(np.uint8)
        else:
            bands = _bands(scaled.ravel(), self.config.n_classes)
            mask = np.digitize(scaled, bands).astype(np.uint8)
        return Prediction(mask=mask, extras={"thresholds": [float(t) for t in bands]})

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write config.json: the tool tag and the `OtsuConfig` fields (there are no weights)."""
        return write_checkpoint(directory, {"tool": self.name, **asdict(self.config)}, config_name=CONFIG_NAME)

    @classmethod
    def from_pretrained(cls, directory: str | Path, **overrides: object) -> "OtsuTool":
        """Load a folder written by `save_pretrained` (or its config.json, or a Hub id `hf://owner/name[@revision]`)."""
        folder = resolve_checkpoint(directory, needs=(CONFIG_NAME,), kind="otsu")
        data = read_config(folder / CONFIG_NAME, kind="otsu", expect={"tool": cls.name})
        data.pop("tool")
        try:
            return cls(OtsuConfig(**{**data, **overrides}))
        except TypeError as exc:  # an unknown field
            raise CheckpointError(f"{folder / CONFIG_NAME}: not an otsu config: {exc}") from exc


def head_mask(image: np.ndarray, sigma: float = 1.0, level: float = 0.5) -> np.ndarray:
    """Bool (H, W) foreground of a grey image: the Gaussian-smoothed image (`sigma` px) above the threshold
    `level` of the way from its 1st percentile to its two-band Otsu threshold, the largest connected
    component, holes filled. All False for a constant image."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), sigma)
    if np.ptp(smooth) == 0:
        return np.zeros(smooth.shape, bool)
    floor = float(np.percentile(smooth, 1))
    labels, n = ndimage.label(smooth > floor + level * (threshold_otsu(smooth) - floor))
    if n == 0:
        return np.zeros(smooth.shape, bool)
    largest = 1 + int(np.argmax(ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))))
    return ndimage.binary_fill_holes(labels == largest)


def _bands(values: np.ndarray, n: int) -> np.ndarray:
    """n - 1 increasing thresholds splitting `values` into n bands (multi-Otsu, k-means fallback)."""
    from skimage.filters import threshold_multiotsu

    if n == 1 or values.size == 0:
        return np.array([], dtype=np.float32)
    try:
        if np.unique(values).size < n:
            raise ValueError("too few distinct values")
        return np.asarray(threshold_multiotsu(values, classes=n), dtype=np.float32)
    except ValueError:
        # Fewer distinct levels than bands: 1D k-means on the intensities (Lloyd's, quantile start).
        centres = np.quantile(values, np.linspace(0.1, 0.9, n))
        for _ in range(20):
            assign = np.argmin(np.abs(values[:, None] - centres[None]), axis=1)
            centres = np.array([values[assign == k].mean() if (assign == k).any() else centres[k] for k in range(n)])
        centres.sort()
        return ((centres[1:] + centres[:-1]) / 2).astype(np.float32)


def build(checkpoint: str | None = None, dataset: str | None = None, n_classes: int | None = None,
          background: str | None = None) -> OtsuTool:
    """Build the baseline; `dataset` picks a preset of class names (e.g. "mni-tissue": 4 bands, head background)."""
    if checkpoint:
        return OtsuTool.from_pretrained(checkpoint)
    if dataset is not None and dataset in PRESETS:
        names = PRESETS[dataset]
        config = OtsuConfig(n_classes=len(names) + 1, class_names=names, background="head" if dataset.startswith("mni") else "darkest")
    else:
        config = OtsuConfig()
    if n_classes is not None:
        config.n_classes = int(n_classes)
        if set(config.class_names) != set(range(1, n_classes)):
            config.class_names = {k: f"class {k}" for k in range(1, n_classes)} if n_classes > 2 else {1: "foreground"}
    if background is not None:
        config.background = background
    config.__post_init__()
    return OtsuTool(config)
