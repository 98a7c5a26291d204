"""`Case`: one image with its label and geometry, the unit every part of medagent passes around.

Conventions (see docs/ARCHITECTURE.md):
- `image` is float32 (C, H, W) for 2D or (C, D, H, W) for 3D, spatial axes in (z, y, x) order.
- `label` is a uint8 class map on the spatial grid, (H, W) or (D, H, W); `instances` a uint16/uint32
  instance map where the source has instances (0 = none).
- `spacing` is in mm, one value per spatial axis, in the same (z, y, x) order.
- `affine` maps a (z, y, x, 1) voxel index to RAS world mm (4x4). For a 2D case the z index is a
  virtual singleton axis (always 0), so a slice of a volume keeps its place in the world.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from medagent.errors import DataError

MODALITIES = ("CT", "MR", "microscopy", "xray", "endoscopy", "dermoscopy", "ultrasound", "photo", "unknown")


@dataclass
class Case:
    """One image (2D or 3D) with optional labels.

    Attributes:
        image: float32 array (C, H, W) or (C, D, H, W); intensities in the source's units (HU for CT).
        label: uint8 class map (H, W) or (D, H, W), or None for unlabelled images.
        spacing: voxel size in mm per spatial axis, (z, y, x) order; length 2 or 3.
        modality: one of `MODALITIES`.
        class_names: class index -> name, including 0 -> "background".
        id: unique id of this case inside its dataset.
        subject: groups cases of one patient/volume/region; splits never separate a subject.
        instances: instance map on the spatial grid (0 = no instance), or None.
        affine: 4x4 voxel (z, y, x) index -> RAS world mm, or None when the source has no geometry.
        provenance: where the case came from (path, dataset, how labels were made, slice index...).
    """

    image: np.ndarray
    label: np.ndarray | None = None
    spacing: tuple[float, ...] = (1.0, 1.0)
    modality: str = "unknown"
    class_names: dict[int, str] = field(default_factory=lambda: {0: "background", 1: "foreground"})
    id: str = "case"
    subject: str = ""
    instances: np.ndarray | None = None
    affine: np.ndarray | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        if self.image.ndim not in (3, 4):
            raise DataError(f"case {self.id!r}: image must be (C, H, W) or (C, D, H, W), got shape {self.image.shape}")
        if self.image.dtype != np.float32:
            self.image = self.image.astype(np.float32)
        self.spacing = tuple(float(s) for s in self.spacing)
        if len(self.spacing) != self.ndim:
            raise DataError(f"case {self.id!r}: spacing {self.spacing} has {len(self.spacing)} values for a {self.ndim}D image")
        for name in ("label", "instances"):
            arr = getattr(self, name)
            if arr is not None and tuple(arr.shape) != self.shape:
                raise DataError(f"case {self.id!r}: {name} shape {tuple(arr.shape)} differs from image grid {self.shape}")
        if self.label is not None and self.label.dtype != np.uint8:
            self.label = self.label.astype(np.uint8)
        if self.modality not in MODALITIES:
            raise DataError(f"case {self.id!r}: modality {self.modality!r} is not one of {MODALITIES}")
        if not self.subject:
            self.subject = self.id
        self.class_names = {int(k): str(v) for k, v in self.class_names.items()}

    # -- shape helpers -------------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self.image.ndim - 1

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape, (H, W) or (D, H, W)."""
        return tuple(self.image.shape[1:])

    @property
    def channels(self) -> int:
        return int(self.image.shape[0])

    def replace(self, **changes: Any) -> "Case":
        """A copy with some fields changed (arrays are shared, not copied)."""
        return dataclasses.replace(self, **changes)

    def foreground_classes(self) -> list[int]:
        """Class indices (> 0) present in the label, sorted."""
        if self.label is None:
            return []
        return [int(c) for c in np.unique(self.label) if c > 0]

    # -- 3D -> 2D ------------------------------------------------------------------------------
    def default_slice_axis(self) -> int:
        """Spatial axis with the coarsest spacing (ties: the first, i.e. z)."""
        if self.ndim != 3:
            raise DataError(f"case {self.id!r} is 2D: it has no slice axis")
        return int(np.argmax(self.spacing))

    def slice(self, index: int, axis: int | None = None) -> "Case":
        """The 2D case at `index` along spatial `axis` (default: the coarsest axis)."""
        axis = self.default_slice_axis() if axis is None else int(axis)
        if self.ndim != 3:
            raise DataError(f"case {self.id!r} is already 2D")
        if not 0 <= axis < 3:
            raise DataError(f"slice axis must be 0, 1 or 2, got {axis}")
        if not 0 <= index < self.shape[axis]:
            raise DataError(f"slice index {index} outside 0..{self.shape[axis] - 1} along axis {axis} of {self.id!r}")
        take = lambda a, off: np.take(a, index, axis=axis + off)  # noqa: E731
        spacing = tuple(s for i, s in enumerate(self.spacing) if i != axis)
        affine = None
        if self.affine is not None:
            affine = slice_affine(self.affine, axis, index)
        return Case(
            image=np.ascontiguousarray(take(self.image, 1)),
            label=None if self.label is None else np.ascontiguousarray(take(self.label, 0)),
            instances=None if self.instances is None else np.ascontiguousarray(take(self.instances, 0)),
            spacing=spacing,
            modality=self.modality,
            class_names=dict(self.class_names),
            id=f"{self.id}_ax{axis}_{index:04d}",
            subject=self.subject,
            affine=affine,
            provenance={**self.provenance, "slice_axis": axis, "slice_index": index, "volume_id": self.id},
        )

    def random_labelled_slice(self, rng: np.random.Generator, min_area: int = 1) -> "Case":
        """A 2D case as the environment draws one: a 2D case itself; of a volume, a random slice along the
        coarsest axis holding >= `min_area` labelled pixels (the middle slice when none does or there is no label)."""
        if self.ndim == 2:
            return self
        axis = self.default_slice_axis()
        if self.label is None:
            return self.slice(self.shape[axis] // 2, axis)
        other = tuple(a for a in range(3) if a != axis)
        labelled = np.flatnonzero(np.count_nonzero(self.label, axis=other) >= min_area)
        if labelled.size == 0:
            return self.slice(self.shape[axis] // 2, axis)
        return self.slice(int(rng.choice(labelled)), axis)

    def iter_slices(self, axis: int | None = None, only_with_target: bool = False, min_area: int = 1) -> Iterator["Case"]:
        """Yield 2D slices along `axis`; with `only_with_target`, only those with >= `min_area` labelled pixels."""
        axis = self.default_slice_axis() if axis is None else axis
        for i in range(self.shape[axis]):
            if only_with_target:
                if self.label is None:
                    raise DataError(f"case {self.id!r} has no label: cannot select slices with a target")
                if int(np.count_nonzero(np.take(self.label, i, axis=axis))) < min_area:
                    continue
            yield self.slice(i, axis)


def labelled_2d(cases: Any) -> list[Case]:
    """The labelled 2D cases of `cases`: a 2D case as it is, a volume as its slices that contain a label;
    unlabelled cases are left out (what 2D training and scoring iterate over)."""
    out: list[Case] = []
    for case in cases:
        if case.label is None:
            continue
        if case.ndim == 2:
            out.append(case)
        else:
            out.extend(case.iter_slices(only_with_target=True))
    return out


def slice_affine(affine: np.ndarray, axis: int, index: int) -> np.ndarray:
    """Affine of a 2D slice, keeping the (z, y, x) index convention with a virtual z = 0 axis.

    The sliced axis becomes the virtual first axis, offset by `index`; the other two keep their order.
    """
    affine = np.asarray(affine, dtype=np.float64)
    keep = [a for a in range(3) if a != axis]
    out = np.eye(4)
    out[:3, 0] = affine[:3, axis]
    out[:3, 1] = affine[:3, keep[0]]
    out[:3, 2] = affine[:3, keep[1]]
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * index
    return out


def default_affine(spacing: tuple[float, ...]) -> np.ndarray:
    """Diagonal affine for a grid with no recorded geometry: (z, y, x) index -> (x, y, z) mm, origin 0."""
    sp = list(spacing)
    if len(sp) == 2:
        sp = [1.0] + sp
    out = np.zeros((4, 4))
    out[0, 2] = sp[2]  # world x from index x
    out[1, 1] = sp[1]
    out[2, 0] = sp[0]
    out[3, 3] = 1.0
    return out
