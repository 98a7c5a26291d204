"""Named, seeded domain shifts ("centres") for test-time adaptation and robustness experiments.

A centre is a fixed mix of acquisition changes for one modality family; `severity` 1-5 interpolates every
strength parameter linearly between its severity-1 and severity-5 value (`Op.at`), and the random draws
(noise pattern, bias-field coefficients, motion path...) depend only on (seed, centre, case id), never on
severity, so a stronger severity changes the same image more (monotone by construction).
Labels and instance maps are never changed: only `Case.image` is replaced, in the same units (HU for CT,
the source's range for MR and microscopy), and always finite.

Families and centres (`centres_for(modality)`; "A" is always the clean source):
- MR (torchio 1.2.1 Random* transforms for bias, motion, ghosting, spike, anisotropy; numpy for noise,
  blur, gamma; all on intensities scaled to [0, 1] by the 99.5th percentile, clipped to [-0.5, 2] after
  each op, scaled back): B bias field + darker gamma; C blur + noise; D motion + ghosting;
  E spikes + anisotropy + brighter gamma.
- CT (numpy/scipy, in HU, clipped to [-1024, 3071]): B blur + correlated noise; C HU offset and scale
  (calibration); D slice thickness (box-average down-sampling and linear up-sampling along one axis, z for
  3D) + noise; E low dose: blur, HU scale, strong noise.
- microscopy and every other modality ("generic", [0, 1]-scaled like MR): B blur + noise; C gamma +
  uneven illumination; D strong uneven illumination + noise; E blur + brighter gamma.
`CENTRES` lists every op with its (severity 1, severity 5) parameters; edit there to recalibrate.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from medagent.data.cache import cache_dir
from medagent.data.case import Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo
from medagent.errors import ConfigError

#: Bump when any op or centre changes: keys the on-disk cache of shifted images.
SHIFT_VERSION = 1
SEVERITIES = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class Op:
    """One shift with its strength at severity 1 (`lo`) and 5 (`hi`) (`fixed` parameters don't scale)."""

    kind: str
    lo: dict[str, float]
    hi: dict[str, float]
    fixed: dict[str, Any] = field(default_factory=dict)

    def at(self, severity: float) -> dict[str, Any]:
        t = (float(severity) - 1.0) / 4.0
        return {**self.fixed, **{k: self.lo[k] + (self.hi[k] - self.lo[k]) * t for k in self.lo}}


@dataclass(frozen=True)
class Centre:
    """A named acquisition site: a family ("MR", "CT", "generic") and its ordered ops."""

    name: str
    family: str
    ops: tuple[Op, ...]
    description: str = ""


def _c(name: str, family: str, desc: str, *ops: Op) -> Centre:
    return Centre(name, family, tuple(ops), desc)


CENTRES: dict[str, dict[str, Centre]] = {
    "MR": {
        "A": _c("A", "MR", "clean source"),
        "B": _c("B", "MR", "bias field + darker gamma",
                Op("bias", {"coef": 0.08}, {"coef": 0.45}),
                Op("gamma", {"log_gamma": 0.08}, {"log_gamma": 0.6})),
        "C": _c("C", "MR", "blur + noise",
                Op("blur", {"sigma": 0.3}, {"sigma": 1.6}),
                Op("noise", {"std": 0.03}, {"std": 0.2})),
        "D": _c("D", "MR", "motion + ghosting",
                Op("motion", {"degrees": 2.0, "translation": 2.0}, {"degrees": 15.0, "translation": 12.0}),
                Op("ghosting", {"intensity": 0.2}, {"intensity": 1.0}, {"num_ghosts": (2, 5)})),
        "E": _c("E", "MR", "spikes + anisotropy + brighter gamma",
                Op("spike", {"intensity": 0.15}, {"intensity": 1.0}, {"num_spikes": (1, 3)}),
                Op("anisotropy", {"factor": 1.5}, {"factor": 5.0}),
                Op("gamma", {"log_gamma": -0.08}, {"log_gamma": -0.6})),
    },
    "CT": {
        "A": _c("A", "CT", "clean source"),
        "B": _c("B", "CT", "blur + correlated noise",
                Op("blur", {"sigma": 0.3}, {"sigma": 1.6}),
                Op("hu_noise", {"std": 15.0}, {"std": 120.0})),
        "C": _c("C", "CT", "HU offset and scale (calibration)",
                Op("hu_affine", {"offset": 15.0, "scale": 1.03}, {"offset": 120.0, "scale": 1.3})),
        "D": _c("D", "CT", "thick slices + noise",
                Op("anisotropy", {"factor": 1.5}, {"factor": 5.0}),
                Op("hu_noise", {"std": 8.0}, {"std": 50.0})),
        "E": _c("E", "CT", "low dose: blur, HU scale, strong noise",
                Op("blur", {"sigma": 0.2}, {"sigma": 1.0}),
                Op("hu_affine", {"offset": -10.0, "scale": 0.96}, {"offset": -60.0, "scale": 0.8}),
                Op("hu_noise", {"std": 25.0}, {"std": 180.0})),
    },
    "generic": {
        "A": _c("A", "generic", "clean source"),
        "B": _c("B", "generic", "blur + noise",
                Op("blur", {"sigma": 0.3}, {"sigma": 1.6}),
                Op("noise", {"std": 0.03}, {"std": 0.2})),
        "C": _c("C", "generic", "gamma + uneven illumination",
                Op("gamma", {"log_gamma": 0.08}, {"log_gamma": 0.6}),
                Op("illumination", {"amplitude": 0.1}, {"amplitude": 0.6})),
        "D": _c("D", "generic", "strong uneven illumination + noise",
                Op("illumination", {"amplitude": 0.2}, {"amplitude": 0.9}),
                Op("noise", {"std": 0.02}, {"std": 0.12})),
        "E": _c("E", "generic", "blur + brighter gamma",
                Op("blur", {"sigma": 0.5}, {"sigma": 2.5}),
                Op("gamma", {"log_gamma": -0.08}, {"log_gamma": -0.6})),
    },
}


def family_of(modality: str) -> str:
    """Shift family of a modality: "MR", "CT" or "generic" (microscopy and the rest)."""
    return modality if modality in ("MR", "CT") else "generic"


def centres_for(modality: str) -> list[str]:
    """Centre names available for a modality ("A" clean, then "B".."E")."""
    return list(CENTRES[family_of(modality)])


def get_centre(modality: str, centre: str | Centre) -> Centre:
    if isinstance(centre, Centre):
        return centre
    fam = CENTRES[family_of(modality)]
    if centre not in fam:
        raise ConfigError(f"unknown centre {centre!r} for modality {modality!r}; choose from {list(fam)}")
    return fam[centre]


# -- ops ---------------------------------------------------------------------------------------
def _scale_range(image: np.ndarray) -> tuple[float, float]:
    """Robust (lo, hi) of an image: 0.5th..99.5th percentile (never a zero-width range)."""
    lo, hi = np.percentile(image, [0.5, 99.5])
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return float(lo), float(hi)


def _torchio(kind: str, x: np.ndarray, p: dict[str, Any], spacing: tuple[float, ...], seed: int) -> np.ndarray:
    """Run one torchio 1.2.1 transform on x (C, *spatial) with fixed-strength parameters."""
    import torch
    import torchio as tio

    is2d = x.ndim == 3
    t = torch.from_numpy(np.ascontiguousarray(x[..., None] if is2d else x)).float()  # torchio 2D: (C, H, W, 1)
    sp = tuple(spacing) + ((1.0,) if is2d else ())
    img = tio.ScalarImage(tensor=t, affine=np.diag([*sp, 1.0]))
    axes = (0, 1) if is2d else (0, 1, 2)
    if kind == "bias":
        tr = tio.RandomBiasField(coefficients=p["coef"], order=3)
    elif kind == "motion":
        tr = tio.RandomMotion(degrees=p["degrees"], translation=p["translation"], num_transforms=2)
    elif kind == "ghosting":
        tr = tio.RandomGhosting(num_ghosts=p["num_ghosts"], axes=axes, intensity=(p["intensity"], p["intensity"]))
    elif kind == "spike":
        tr = tio.RandomSpike(num_spikes=p["num_spikes"], intensity=(p["intensity"], p["intensity"]))
    elif kind == "mr_anisotropy":
        tr = tio.RandomAnisotropy(axes=axes if is2d else (0,), downsampling=(p["factor"], p["factor"]))
    else:  # pragma: no cover - guarded by the caller
        raise ConfigError(f"unknown torchio op {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = tr(img).data.numpy()
    return out[..., 0] if is2d else out


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, scale: float) -> np.ndarray:
    """Smooth random field in [-1, 1] over the spatial shape (low-frequency illumination pattern)."""
    from scipy import ndimage as ndi

    f = ndi.gaussian_filter(rng.normal(0, 1, shape), sigma=[max(s * scale, 1.0) for s in shape])
    return f / max(float(np.abs(f).max()), 1e-8)


def _anisotropy(x: np.ndarray, axis: int, factor: float) -> np.ndarray:
    """Down-sample spatial `axis` by `factor` (box average = thick slices) and linearly up-sample back."""
    from scipy import ndimage as ndi

    ax = axis + 1
    n = x.shape[ax]
    m = max(int(round(n / factor)), 2)
    smoothed = ndi.uniform_filter1d(x, size=max(int(round(factor)), 1), axis=ax, mode="nearest")
    pos = np.linspace(0, n - 1, m)
    low = np.stack([np.take(smoothed, int(round(q)), axis=ax) for q in pos], axis=ax)
    grid = np.linspace(0, m - 1, n)
    i0 = np.clip(np.floor(grid).astype(int), 0, m - 2)
    w = (grid - i0).reshape([-1 if a == ax else 1 for a in range(x.ndim)])
    return np.take(low, i0, axis=ax) * (1 - w) + np.take(low, i0 + 1, axis=ax) * w


def _apply_op(op: Op, x: np.ndarray, p: dict[str, Any], case: Case, rng: np.random.Generator, seed: int) -> np.ndarray:
    """Apply one op to x (C, *spatial); x is in [0, 1]-scaled units except for the HU ops."""
    from scipy import ndimage as ndi

    spatial = x.shape[1:]
    k = op.kind
    if k in ("bias", "motion", "ghosting", "spike"):
        return _torchio(k, x, p, case.spacing, seed)
    if k == "anisotropy":
        if case.modality == "MR":
            return _torchio("mr_anisotropy", x, p, case.spacing, seed)
        axis = 0 if case.ndim == 3 else int(rng.integers(2))
        return _anisotropy(x, axis, p["factor"])
    if k in ("noise", "hu_noise"):
        noise = rng.normal(0, 1, x.shape)
        if k == "hu_noise":  # CT noise is spatially correlated
            noise = ndi.gaussian_filter(noise, [0] + [0.8] * len(spatial))
            noise /= max(float(noise.std()), 1e-8)
        return x + noise * p["std"]
    if k == "blur":
        return ndi.gaussian_filter(x, [0] + [p["sigma"]] * len(spatial))
    if k == "gamma":
        return np.clip(x, 0, None) ** float(np.exp(p["log_gamma"]))
    if k == "illumination":
        field_ = _smooth_field(spatial, rng, 0.25)
        return x * (1.0 + p["amplitude"] * field_)[None]
    if k == "hu_affine":
        return x * p["scale"] + p["offset"]
    raise ConfigError(f"unknown shift op {k!r}")


def _case_seed(seed: int, centre: str, case_id: str) -> int:
    return zlib.crc32(f"{seed}|{centre}|{case_id}".encode()) & 0x7FFFFFFF


def apply_shift(case: Case, centre: str | Centre = "B", severity: float = 3, seed: int = 0) -> Case:
    """`case` as seen at `centre`: image changed, label/instances/geometry untouched.

    Args:
        case: 2D or 3D case (its modality picks the family).
        centre: a name from `centres_for(case.modality)` or a `Centre`.
        severity: 1 (mild) .. 5 (strong); the strength of every op grows linearly with it.
        seed: with (centre, case.id) fixes every random draw; severity does not change the draws.
    Returns:
        A new `Case` (float32 image, finite, same units) with `provenance["shift"]` describing the shift.
    """
    c = get_centre(case.modality, centre)
    if not 1 <= float(severity) <= 5:
        raise ConfigError(f"severity must be in 1..5, got {severity}")
    if not c.ops:
        return case.replace(provenance={**case.provenance, "shift": {"centre": c.name, "severity": float(severity), "seed": seed, "ops": []}})
    cs = _case_seed(seed, c.name, case.id)
    rng = np.random.default_rng(cs)
    x = case.image.astype(np.float64)
    hu = c.family == "CT"
    lo, hi = (0.0, 1.0) if hu else _scale_range(x)
    if c.family == "MR" and lo > 0:
        lo = 0.0  # keep an MR zero background at zero
    x = (x - lo) / (hi - lo)
    applied = []
    for j, op in enumerate(c.ops):
        p = op.at(severity)
        x = _apply_op(op, x, p, case, rng, cs + j)
        if not hu:  # keep relative intensities near the source's range whatever the op drew
            x = np.clip(x, -0.5, 2.0)
        applied.append({"kind": op.kind, **{k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}})
    x = x * (hi - lo) + lo
    if hu:
        x = np.clip(x, -1024.0, 3071.0)
    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return case.replace(
        image=x,
        provenance={**case.provenance, "shift": {"centre": c.name, "family": c.family, "severity": float(severity), "seed": seed, "ops": applied}},
    )


# -- datasets and streams ------------------------------------------------------------------------
def _disk_key(case: Case, centre: str, severity: float, seed: int) -> str:
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(case.image).tobytes())
    h.update(f"{case.id}|{case.modality}|{case.spacing}|{centre}|{float(severity)}|{seed}|v{SHIFT_VERSION}".encode())
    return h.hexdigest()


def _cached_shift(case: Case, centre: str, severity: float, seed: int) -> Case:
    """`apply_shift` with a content-addressed on-disk cache of the shifted image (for slow 3D shifts)."""
    folder = cache_dir() / "shifts" / f"v{SHIFT_VERSION}"
    path = folder / f"{_disk_key(case, centre, severity, seed)}.npy"
    if path.exists():
        try:
            img = np.load(path, allow_pickle=False)
            if img.shape == case.image.shape:
                prov = {**case.provenance, "shift": {"centre": centre, "severity": float(severity), "seed": seed, "cached": True}}
                return case.replace(image=img, provenance=prov)
        except (OSError, ValueError):
            pass
    out = apply_shift(case, centre, severity, seed)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".npy.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.save(fh, out.image, allow_pickle=False)
    os.replace(tmp, path)
    return out


def shifted_dataset(dataset: Dataset, centre: str, severity: float = 3, seed: int = 0, disk_cache: bool = False) -> Dataset:
    """`dataset` as seen at `centre`: every split's cases shifted lazily and memoised.

    Each case is shifted once on first access and kept in memory for the life of the returned dataset;
    with `disk_cache=True` shifted images are also stored under `cache_dir()/shifts/` (useful for 3D).
    """
    get_centre(dataset.info.modality, centre)  # validate early
    memo: dict[str, Case] = {}

    def loader(base: Callable[[], Case], cid: str) -> Callable[[], Case]:
        def load() -> Case:
            if cid not in memo:
                case = base()
                memo[cid] = _cached_shift(case, centre, severity, seed) if disk_cache else apply_shift(case, centre, severity, seed)
            return memo[cid]

        return load

    splits = {
        name: CaseList(cl.ids, [loader(ld, cid) for ld, cid in zip(cl._loaders, cl.ids)], cl.subjects)
        for name, cl in dataset.splits.items()
    }
    info = dataset.info
    new_info = DatasetInfo(
        name=f"{info.name}@{centre}{int(severity) if float(severity).is_integer() else severity}",
        description=f"{info.description} Shifted to centre {centre} at severity {severity} (seed {seed}).",
        modality=info.modality, class_names=dict(info.class_names), label_origin=info.label_origin,
        license=info.license, source=info.source, ndim=info.ndim, layout=info.layout,
    )
    return Dataset(info=new_info, splits=splits, skipped=list(dataset.skipped))


@dataclass(frozen=True)
class StreamItem:
    """One step of a continual test-time adaptation stream.

    Attributes:
        centre: the centre the case comes from.
        round: which repetition of the centre sequence (0-based).
        index: the case's index in the dataset split.
        position: the step number in the whole stream.
    `case` loads (and memoises) the shifted case on first access.
    """

    centre: str
    round: int
    index: int
    position: int
    _load: Callable[[], Case] = field(repr=False, compare=False)

    @property
    def case(self) -> Case:
        return self._load()


def build_stream(
    dataset: Dataset,
    centres: Sequence[str] = ("B", "C", "D", "E"),
    rounds: int = 3,
    seed: int = 0,
    split: str = "test",
    severity: float = 3,
) -> list[StreamItem]:
    """Continual TTA stream: for each round, every centre in the given order, every case of `split` in order.

    Rounds repeat the identical stream (same shifted images); shifted cases are computed once, lazily.
    """
    if rounds < 1:
        raise ConfigError(f"rounds must be >= 1, got {rounds}")
    shifted = {c: shifted_dataset(dataset, c, severity, seed).cases(split) for c in centres}
    items: list[StreamItem] = []
    for r in range(rounds):
        for c in centres:
            cl = shifted[c]
            for i in range(len(cl)):
                items.append(StreamItem(c, r, i, len(items), (lambda cl=cl, i=i: cl[i])))
    return items


__all__ = [
    "CENTRES", "Centre", "Op", "SEVERITIES", "SHIFT_VERSION", "StreamItem", "apply_shift", "build_stream",
    "centres_for", "family_of", "get_centre", "shifted_dataset",
]
