"""`save_mask`: write a mask on the grid of the image it was predicted for.

NIfTI gets the input's exact affine (and the singleton axis back for 2D slices read from NIfTI), so
`nibabel.load(saved).affine` equals the input file's affine and the shapes match. NRRD/MHA go through
SimpleITK with origin/spacing/direction from the same affine. PNG/TIFF (2D) and NPY hold the array only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medagent.data.case import Case, default_affine
from medagent.data.io.geometry import case_to_sitk_geometry, swap_xyz_zyx, unslice_affine
from medagent.errors import DataError

MASK_FORMATS = ".nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd, .png (2D), .tif/.tiff, .npy"


def _mask_array(mask: np.ndarray, like: Case, path: Path) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim == like.ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if tuple(arr.shape) != like.shape:
        raise DataError(f"{path}: mask shape {tuple(arr.shape)} differs from the grid of case {like.id!r} {like.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{path}: mask holds non-integer values; pass a class or instance map")
    if arr.size and (arr.min() < 0):
        raise DataError(f"{path}: mask holds negative values")
    top = int(arr.max()) if arr.size else 0
    return arr.astype(np.uint8 if top < 256 else np.uint16 if top < 65536 else np.uint32)


def _case_affine_3d(like: Case) -> tuple[np.ndarray, int | None]:
    """The 3D (z, y, x) -> RAS affine of `like`'s grid and, for 2D cases, the singleton axis to restore."""
    affine = like.affine if like.affine is not None else default_affine(like.spacing)
    if like.ndim == 3:
        return np.asarray(affine, dtype=np.float64), None
    axis = int(like.provenance.get("grid", {}).get("singleton_axis", 0))
    if "slice_axis" in like.provenance:
        axis = 0  # a slice cut from a volume: its affine already keeps the cut axis as the virtual z
    return unslice_affine(affine, axis), axis


def write_nifti(arr: np.ndarray, like: Case, path: Path) -> None:
    """Write any (H, W) or (D, H, W) array on `like`'s grid as NIfTI (2D gets its singleton axis back)."""
    import nibabel as nib

    affine, axis = _case_affine_3d(like)
    vol = arr if axis is None else np.expand_dims(arr, axis)
    data = np.ascontiguousarray(np.transpose(vol, (2, 1, 0)))  # (z, y, x) -> (x, y, z)
    nii_affine = swap_xyz_zyx(affine)
    img = nib.Nifti1Image(data, nii_affine)
    img.set_sform(nii_affine, code=1)
    img.set_qform(nii_affine, code=1)
    img.header.set_xyzt_units("mm")
    img.set_data_dtype(data.dtype)
    nib.save(img, str(path))


def _write_itk(arr: np.ndarray, like: Case, path: Path) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(arr)
    if like.affine is not None:
        origin, spacing, direction = case_to_sitk_geometry(like.affine, like.ndim)
        img.SetOrigin(origin)
        img.SetDirection(direction)
    else:
        spacing = tuple(float(s) for s in reversed(like.spacing))
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), True)


def _write_png(arr: np.ndarray, like: Case, path: Path) -> None:
    from PIL import Image

    if arr.ndim != 2:
        raise DataError(f"{path}: PNG holds 2D masks; case {like.id!r} is 3D: write .nii.gz instead")
    Image.fromarray(arr if arr.dtype == np.uint8 else arr.astype(np.uint16)).save(path)


def _write_tiff(arr: np.ndarray, like: Case, path: Path) -> None:
    import tifffile

    tifffile.imwrite(path, arr)


def save_mask(mask: np.ndarray, like: Case, path: str | Path) -> Path:
    """Write `mask` ((H, W) or (D, H, W) class or instance map on `like`'s grid) to `path`.

    The format follows the extension (see `MASK_FORMATS`). The dtype is the smallest unsigned integer
    that holds the values. Parent folders are created. Returns the path written.

    Raises:
        DataError: wrong shape, non-integer values, unsupported extension, or the write failed.
    """
    p = Path(path)
    arr = _mask_array(mask, like, p)
    low = p.name.lower()
    if low.endswith((".nii", ".nii.gz")):
        writer = write_nifti
    elif low.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        writer = _write_itk
    elif low.endswith(".png"):
        writer = _write_png
    elif low.endswith((".tif", ".tiff")):
        writer = _write_tiff
    elif low.endswith(".npy"):
        writer = lambda a, _c, q: np.save(q, a)  # noqa: E731
    else:
        raise DataError(f"{p}: cannot write masks in this format; use one of {MASK_FORMATS}")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        writer(arr, like, p)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{p}: cannot write mask: {exc}") from exc
    return p
