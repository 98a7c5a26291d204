"""MNI ICBM152 2009 template (shipped in nilearn's wheel) -> tissue slices and the 3D volume.

Labels are template-derived: brain = T1 > 0 (the T1 is skull-stripped); inside the brain the class is the
argmax of (CSF, GM, WM) probabilities with CSF = 255 - GM - WM (no CSF map is shipped). They are a
probabilistic atlas's most likely tissue, not a manual segmentation.

Orientation: the NIfTI array (x, y, z) (RAS, 1 mm) is put in medagent's (z, y, x) order and flipped along
z and y, so 2D slices display the usual way (axial: anterior up; coronal/sagittal: superior up). The
affine carries the flips, so every slice keeps its place in MNI space.

Splits: along each axis the (brain-cropped) volume is cut into `N_SLABS` contiguous slabs; each slab is
one subject, f"{axis_name}-{slab}", and goes wholly to one split (`SLAB_SPLITS`); `GAP` slices at each
slab border are dropped so neighbouring slices never straddle splits.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medagent.data.builtin.base import record
from medagent.data.case import Case
from medagent.data.cache import load_or_derive
from medagent.errors import DataError

AXIS_NAMES = ("axial", "coronal", "sagittal")  # (z, y, x) axes of the volume
N_SLABS = 8
SLAB_SPLITS = ("train", "train", "test", "train", "val", "test", "train", "train")
GAP = 2  # slices dropped at each side of a slab border
STRIDE = 2  # keep every STRIDE-th slice inside a slab (neighbours are near duplicates)
MIN_BRAIN_PX = 1500  # slices with less brain are skipped
CROP_MARGIN = 3  # voxels kept around the brain's bounding box

TISSUE_CLASSES = {0: "background", 1: "cerebrospinal fluid", 2: "grey matter", 3: "white matter"}
SOURCE = "nilearn wheel: nilearn/datasets/data/mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz"
LICENSE = "MNI ICBM152 2009 licence (free use with acknowledgement: Copyright (C) 1993-2009 Louis Collins, McConnell Brain Imaging Centre, McGill University)"
VOLUME_VERSION = 1


def mni_paths() -> dict[str, str]:
    """Paths of the T1, GM and WM maps in the installed nilearn package."""
    import importlib.util

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the MNI datasets need the 'nilearn' package, which is not installed")
    base = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
    out = {k: os.path.join(base, f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz") for k in ("t1", "gm", "wm")}
    for k, p in out.items():
        if not os.path.exists(p):
            raise DataError(f"MNI {k} map not found at {p}; reinstall nilearn")
    return out


def _flip_affine(affine: np.ndarray, axis: int, n: int) -> np.ndarray:
    """Affine after reversing index `axis` of length n (index i' = n - 1 - i)."""
    out = affine.copy()
    out[:3, 3] = affine[:3, 3] + affine[:3, axis] * (n - 1)
    out[:3, axis] = -affine[:3, axis]
    return out


def _derive_volume() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    import nibabel as nib

    paths = mni_paths()
    imgs = {k: nib.load(p) for k, p in paths.items()}
    arr = {k: np.asarray(im.dataobj).transpose(2, 1, 0) for k, im in imgs.items()}  # (x,y,z) -> (z,y,x)
    aff = imgs["t1"].affine[:, [2, 1, 0, 3]].astype(np.float64)
    for ax in (0, 1):  # flip z and y so that slices display superior/anterior up
        aff = _flip_affine(aff, ax, arr["t1"].shape[ax])
        arr = {k: np.flip(a, axis=ax) for k, a in arr.items()}
    t1 = np.ascontiguousarray(arr["t1"]).astype(np.uint8)
    gm = arr["gm"].astype(np.int16)
    wm = arr["wm"].astype(np.int16)
    brain = t1 > 0
    csf = np.clip(255 - gm - wm, 0, 255)
    label = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    label[~brain] = 0
    zooms = tuple(float(z) for z in imgs["t1"].header.get_zooms()[:3])[::-1]
    arrays = {"t1": t1, "label": label, "gm": arr["gm"].astype(np.uint8), "wm": arr["wm"].astype(np.uint8)}
    return arrays, {"affine": aff.tolist(), "spacing": list(zooms)}


def _volume_arrays() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    return load_or_derive("mni-volume", VOLUME_VERSION, _derive_volume)


def _crop_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n)) for i, n in zip(idx, mask.shape))


def load_mni_volume(crop: bool = True, with_probabilities: bool = False) -> Case:
    """The MNI T1 template as a 3D `Case` with its template-derived 4-class tissue label.

    Args:
        crop: crop to the brain's bounding box plus a small margin (the affine follows the crop).
        with_probabilities: add the GM and WM probability maps (0-255) as image channels 2 and 3.
    Returns:
        Case with image (1 or 3, D, H, W) float32 T1 values 0-255, label (D, H, W) uint8, spacing (1, 1, 1) mm.
    """
    arrays, meta = _volume_arrays()
    aff = np.asarray(meta["affine"], dtype=np.float64)
    box = tuple(slice(0, n) for n in arrays["t1"].shape)
    if crop:
        box = _crop_box(arrays["t1"] > 0, CROP_MARGIN)
        aff = aff.copy()
        aff[:3, 3] = aff[:3, 3] + aff[:3, :3] @ np.array([b.start for b in box], dtype=float)
    chans = [arrays["t1"][box]]
    if with_probabilities:
        chans += [arrays["gm"][box], arrays["wm"][box]]
    return Case(
        image=np.stack(chans).astype(np.float32),
        label=np.ascontiguousarray(arrays["label"][box]),
        spacing=tuple(meta["spacing"]),
        modality="MR",
        class_names=dict(TISSUE_CLASSES),
        id="mni152-2009-sym",
        subject="mni152-2009-sym",
        affine=aff,
        provenance={
            "dataset": "mni-volume",
            "label_origin": "template-derived",
            "source": SOURCE,
            "license": LICENSE,
            "crop": [[b.start, b.stop] for b in box],
            "orientation": "(z, y, x) flipped along z and y: axial slices anterior up, others superior up",
        },
    )


def slab_slices(shape: tuple[int, ...], brain: np.ndarray, stride: int = STRIDE) -> list[tuple[int, int, int, str]]:
    """(axis, slab, index, split) for every slice kept, following the slab scheme in the module docstring."""
    out = []
    for axis in range(3):
        n = shape[axis]
        area = brain.sum(axis=tuple(a for a in range(3) if a != axis))
        edges = np.linspace(0, n, N_SLABS + 1).round().astype(int)
        for slab in range(N_SLABS):
            lo, hi = edges[slab] + GAP, edges[slab + 1] - GAP
            for i in range(lo, hi, stride):
                if area[i] >= MIN_BRAIN_PX:
                    out.append((axis, slab, i, SLAB_SPLITS[slab]))
    return out


def build_mni_tissue(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Derive the `mni-tissue` slices (seed unused: the derivation is deterministic)."""
    vol = load_mni_volume(crop=True)
    brain = vol.image[0] > 0
    arrays: dict[str, np.ndarray] = {}
    records = []
    for k, (axis, slab, i, split) in enumerate(slab_slices(vol.shape, brain)):
        sl = vol.slice(i, axis)
        arrays[f"image_{k}"] = sl.image.astype(np.uint8)  # T1 is uint8 in the source: lossless
        arrays[f"label_{k}"] = sl.label
        records.append(
            record(
                f"mni_{AXIS_NAMES[axis]}_{i:03d}", f"{AXIS_NAMES[axis]}-{slab}", split, sl.spacing, sl.affine,
                slice_axis=AXIS_NAMES[axis], slice_index=i, slab=slab, volume="mni152-2009-sym (cropped)",
            )
        )
    return arrays, {"cases": records}
