"""`load_image` and `load_label`: any supported file into medagent's (C, [D,] H, W), (z, y, x) convention.

Each format reader returns a `RawImage` (array in the file's own dtype, channels first, plus geometry);
`load_image` turns it into a `Case`. Library exceptions become one `DataError` naming the file.
Geometry that lets a writer put a mask back on the input grid travels in `Case.affine` and
`Case.provenance["grid"]` (e.g. which NIfTI axis was the singleton axis of a 2D image).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medagent.data.case import Case, slice_affine
from medagent.data.io.formats import detect_format, stem
from medagent.data.io.geometry import sitk_to_case_affine, spacing_of, swap_xyz_zyx
from medagent.data.intensity import resolve_modality
from medagent.errors import DataError

DEFAULT_CLASSES = {0: "background", 1: "foreground"}


@dataclass
class RawImage:
    """What a format reader found.

    Attributes:
        array: (C, H, W) or (C, D, H, W) in the file's dtype (after the DICOM modality LUT).
        spacing: mm per spatial axis, (z, y, x) order.
        affine: (z, y, x) index -> RAS mm, or None when the format has no geometry.
        modality: modality named by the file's metadata (DICOM Modality tag), or None.
        is_rgb: the channels are colour channels.
        grid: how the file's grid maps onto the array (for writers).
        extras: other arrays stored beside the image (NPZ "label").
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    modality: str | None = None
    is_rgb: bool = False
    grid: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def _to_2d_if_singleton(arr: np.ndarray, affine: np.ndarray, grid: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """(C, D, H, W) with a singleton spatial axis -> (C, H, W) plus the slice's affine (virtual z axis)."""
    singles = [a for a in range(3) if arr.shape[a + 1] == 1]
    if not singles:
        return arr, affine
    axis = singles[0]
    grid["singleton_axis"] = axis
    return np.take(arr, 0, axis=axis + 1), slice_affine(affine, axis, 0)


def read_nifti(path: Path, as_label: bool = False) -> RawImage:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise DataError(f"{path}: cannot read NIfTI file: {exc}") from exc
    shape = data.shape
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 5 and data.shape[3] == 1:  # (x, y, z, 1, c): vector images
        data = data[:, :, :, 0, :]
    if data.ndim == 3:
        data = data[..., None]
    if data.ndim != 4:
        raise DataError(f"{path}: NIfTI shape {shape} is not 2D, 3D or 3D with channels")
    arr = np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)))  # (x, y, z, c) -> (c, z, y, x)
    affine = swap_xyz_zyx(img.affine)
    grid: dict[str, Any] = {"nifti_shape": list(shape)}
    arr, affine = _to_2d_if_singleton(arr, affine, grid)
    spacing = spacing_of(affine)[3 - (arr.ndim - 1):]
    return RawImage(arr, spacing, affine, grid=grid)


def _itk_reason(exc: Exception) -> str:
    """The one informative line of a SimpleITK exception (drops C++ file names and object addresses)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "ITK ERROR" in ln:
            return ln.split("): ", 1)[-1]
    return lines[-1] if lines else type(exc).__name__


def read_itk(path: Path, as_label: bool = False) -> RawImage:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
        data = sitk.GetArrayFromImage(img)
    except Exception as exc:
        raise DataError(f"{path}: cannot read {path.suffix} file with SimpleITK: {_itk_reason(exc)}") from exc
    dim = img.GetDimension()
    if dim not in (2, 3):
        raise DataError(f"{path}: {dim}D images are not supported (2D or 3D only)")
    ncomp = img.GetNumberOfComponentsPerPixel()
    arr = np.moveaxis(data, -1, 0) if ncomp > 1 else data[None]
    affine = sitk_to_case_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    grid: dict[str, Any] = {"itk_dim": dim}
    if dim == 3:
        arr, affine = _to_2d_if_singleton(arr, affine, grid)
    spacing = spacing_of(affine)[3 - (arr.ndim - 1):]
    return RawImage(np.ascontiguousarray(arr), spacing, affine, is_rgb=ncomp in (3, 4), grid=grid)


def read_dicom(path: Path, as_label: bool = False) -> RawImage:
    from medagent.data.io.dicom import read_dicom_file, read_dicom_series

    vol = read_dicom_series(path) if path.is_dir() else read_dicom_file(path)
    arr, affine = vol.array[None], vol.affine
    grid: dict[str, Any] = {"dicom_files": vol.n_files}
    if arr.shape[1] == 1:
        arr, affine = arr[:, 0], affine  # one slice: 2D; the affine's z column is already the normal
    spacing = spacing_of(affine)[3 - (arr.ndim - 1):]
    return RawImage(arr, spacing, affine, modality=vol.modality, grid=grid)


def _pil_array(path: Path, as_label: bool) -> tuple[np.ndarray, bool]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode == "P" and not as_label:
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif mode in ("LA", "PA"):
                im = im.convert("L")
            elif mode in ("CMYK", "YCbCr", "HSV", "LAB"):
                im = im.convert("RGB")
            arr = np.array(im)
    except Exception as exc:
        raise DataError(f"{path}: cannot read image file: {exc}") from exc
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim == 3:
        return np.moveaxis(arr[..., :3], -1, 0), True
    return arr[None], False


def read_pil(path: Path, as_label: bool = False) -> RawImage:
    arr, rgb = _pil_array(path, as_label)
    return RawImage(np.ascontiguousarray(arr), (1.0, 1.0), None, is_rgb=rgb, grid={"spacing_known": False})


def read_tiff(path: Path, as_label: bool = False) -> RawImage:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            arr = tf.asarray()
            photometric = tf.pages[0].photometric
    except Exception as exc:
        raise DataError(f"{path}: cannot read TIFF file: {exc}") from exc
    rgb = photometric == tifffile.PHOTOMETRIC.RGB
    if rgb and arr.ndim >= 3 and arr.shape[-1] in (3, 4):
        arr = np.moveaxis(arr[..., :3], -1, 0)  # (..., H, W, 3) -> (3, ..., H, W)
    elif rgb and arr.ndim == 3 and arr.shape[0] in (3, 4):
        arr = arr[:3]  # planar RGB
    else:
        rgb = False
        arr = arr[None]
    if arr.ndim not in (3, 4):
        raise DataError(f"{path}: TIFF of shape {arr.shape[1:]} is not a 2D image or a 3D stack")
    spacing = (1.0,) * (arr.ndim - 1)
    return RawImage(np.ascontiguousarray(arr), spacing, None, is_rgb=rgb, grid={"spacing_known": False})


def read_numpy(path: Path, as_label: bool = False) -> RawImage:
    """NPY: (H, W) grey, (H, W, 3|4) RGB, (D, H, W) volume, (C, D, H, W). NPZ: "image" (or the first
    array), optional "label", optional "spacing" whose length (2 or 3) settles whether a 3-axis array
    is (C, H, W) or (D, H, W)."""
    try:
        if path.name.lower().endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if not z.files:
                    raise DataError(f"{path}: NPZ file holds no arrays")
                key = "image" if "image" in z.files else z.files[0]
                arr = z[key]
                extras = {k: z[k] for k in ("label", "instances") if k in z.files and k != key}
                spacing = tuple(float(v) for v in z["spacing"]) if "spacing" in z.files else None
        else:
            arr, extras, spacing = np.load(path, allow_pickle=False), {}, None
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{path}: cannot read NumPy file (allow_pickle=False): {exc}") from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DataError(f"{path}: array dtype {arr.dtype} is not numeric")
    rgb = False
    if spacing is not None and len(spacing) == arr.ndim - 1:
        pass  # channels first, as the spacing says
    elif arr.ndim == 2 or (spacing is not None and len(spacing) == arr.ndim):
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (3, 4) and not as_label:
        arr, rgb = np.moveaxis(arr[..., :3], -1, 0), True
    elif arr.ndim == 3:
        arr = arr[None]
    if arr.ndim not in (3, 4):
        raise DataError(f"{path}: array of shape {arr.shape} is not a 2D or 3D image")
    known = spacing is not None
    if spacing is None:
        spacing = (1.0,) * (arr.ndim - 1)
    if len(spacing) != arr.ndim - 1:
        raise DataError(f"{path}: 'spacing' {spacing} does not fit image shape {arr.shape}")
    return RawImage(np.ascontiguousarray(arr), spacing, None, is_rgb=rgb, grid={"spacing_known": known}, extras=extras)


READERS: dict[str, Callable[..., RawImage]] = {
    "nifti": read_nifti,
    "itk": read_itk,
    "dicom": read_dicom,
    "dicom-series": read_dicom,
    "pil": read_pil,
    "tiff": read_tiff,
    "numpy": read_numpy,
}


def read_raw(path: str | Path, as_label: bool = False) -> tuple[RawImage, str]:
    """Pick the reader for `path` and run it; returns the raw image and the reader's name."""
    p = Path(path)
    reader = detect_format(p)
    try:
        raw = READERS[reader](p, as_label=as_label)
    except DataError:
        raise
    except Exception as exc:  # any library failure the reader did not anticipate
        raise DataError(f"{p}: cannot read {reader} file: {exc}") from exc
    return raw, "dicom" if reader == "dicom-series" else reader


def load_image(path: str | Path, modality: str | None = None, class_names: dict[int, str] | None = None,
               case_id: str | None = None) -> Case:
    """Read one image file (or DICOM series folder) into a `Case`.

    Args:
        path: the file or DICOM series folder.
        modality: the user's modality, used when the file's metadata names none.
        class_names: class index -> name for the case (default {0: "background", 1: "foreground"}).
        case_id: id of the case (default: the file name without its extension).

    Returns:
        A Case with float32 image (C, H, W) or (C, D, H, W), spacing (z, y, x) mm, affine (z, y, x) ->
        RAS (None for formats without geometry), provenance {"path", "reader", "grid"}. NPZ files with
        a "label" array give a labelled case.

    Raises:
        DataError: missing, unreadable or truncated file, unsupported format, NaN/Inf values.
    """
    p = Path(path)
    raw, reader = read_raw(p)
    image = raw.array.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise DataError(f"{p}: image contains {bad} NaN/Inf values")
    names = dict(class_names) if class_names else dict(DEFAULT_CLASSES)
    try:
        mod = resolve_modality(raw.modality, modality, image, raw.is_rgb)
    except Exception as exc:
        raise DataError(f"{p}: cannot decide the modality: {exc}") from exc
    label = None
    if "label" in raw.extras:
        label = check_label(raw.extras["label"], image.shape[1:], names, p)
    instances = raw.extras.get("instances")
    if instances is not None and tuple(instances.shape) != image.shape[1:]:
        raise DataError(f"{p}: 'instances' shape {instances.shape} differs from the image grid {image.shape[1:]}")
    provenance = {"path": str(p), "reader": reader, "grid": raw.grid}
    if raw.modality:
        provenance["modality_tag"] = str(raw.modality)
    try:
        return Case(image=image, label=label, spacing=raw.spacing, modality=mod, class_names=names,
                    id=case_id or stem(p), instances=instances, affine=raw.affine, provenance=provenance)
    except DataError as exc:
        raise DataError(f"{p}: {exc}") from exc


def check_label(values: np.ndarray, shape: tuple[int, ...], class_names: dict[int, str], path: Path) -> np.ndarray:
    """Validate a label array against the grid and the declared classes; returns uint8 (H, W) / (D, H, W).

    A binary mask stored as 0/255 (common for PNG masks) is read as 0/1 when 255 is not a declared class.
    """
    arr = np.asarray(values)
    if arr.ndim == len(shape) + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == len(shape) + 1 and arr.shape[0] in (3, 4) and all(np.array_equal(arr[0], c) for c in arr[1:]):
        arr = arr[0]  # a grey mask saved as RGB
    if tuple(arr.shape) != tuple(shape):
        raise DataError(f"{path}: label shape {tuple(arr.shape)} differs from the image grid {tuple(shape)}")
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or not np.array_equal(arr, np.round(arr)):
            raise DataError(f"{path}: label holds non-integer values; labels must be class indices")
    elif arr.dtype.kind not in "biu":
        raise DataError(f"{path}: label dtype {arr.dtype} is not an integer class map")
    present = {int(v) for v in np.unique(arr)}
    declared = set(class_names)
    if present <= {0, 255} and 255 not in declared and 1 in declared:
        arr = (arr == 255)
        present = {int(v) for v in np.unique(arr)}
    extra = sorted(present - declared)
    if extra:
        raise DataError(f"{path}: label values {extra} are not declared classes {dict(sorted(class_names.items()))}")
    return np.ascontiguousarray(arr.astype(np.uint8))


def _grid_text(affine: np.ndarray) -> str:
    """An affine as a person compares two grids: origin and each index axis's step, world mm (RAS)."""
    a = np.asarray(affine)
    axes = ", ".join(f"{n} {tuple(round(float(v), 3) for v in a[:3, i])}" for i, n in enumerate("zyx"))
    return f"origin {tuple(round(float(v), 3) for v in a[:3, 3])}, steps {axes}"


def _onto_dicom_grid(arr: np.ndarray, raw: RawImage, like: Case, path: Path, image_path: Any) -> tuple[np.ndarray, tuple[float, ...]]:
    """A 3D label (1, D, H, W) with geometry, put on a DICOM series' index grid when it is the same world grid.

    Other tools order a series' rows or slices differently (dcm2niix flips the rows, for one), so a label
    exported from them can match the image's shape and spacing and still be flipped; comparing the world
    grids catches that, and an exact permutation / flip puts such a label on the image's grid.
    """
    from medagent.data.io.geometry import grid_reorientation

    assert raw.affine is not None and like.affine is not None
    found = grid_reorientation(raw.affine, like.affine, arr.shape[1:], like.shape)
    if found is None:
        if tuple(arr.shape[1:]) != like.shape:
            raise DataError(f"{path}: label shape {tuple(arr.shape[1:])} differs from image {image_path} shape {like.shape}")
        raise DataError(f"{path}: label is not on the world grid of image {image_path}: label {_grid_text(raw.affine)}; "
                        f"image {_grid_text(like.affine)}; export the label on the image's grid (same origin, spacing "
                        "and orientation)")
    perm, flips = found
    out = np.flip(np.transpose(arr[0], perm), [a for a in range(3) if flips[a]])
    return np.ascontiguousarray(out)[None], tuple(like.spacing)


def load_label(path: str | Path, like: Case) -> np.ndarray:
    """Read a label map for `like`: uint8 (H, W) or (D, H, W) on its grid, values among its classes.

    For a 3D image read from DICOM, a label file with geometry (NIfTI, NRRD, MHA) must lie on the same
    world grid (its voxel centres the image's); one stored with its axes permuted or flipped against the
    series' order is put on the image's index grid exactly (no resampling).

    Raises:
        DataError: unreadable file, shape or spacing different from the image's, a DICOM image's label
            on another world grid, values outside `like.class_names`.
    """
    p = Path(path)
    raw, _ = read_raw(p, as_label=True)
    arr = raw.array
    if arr.shape[0] > 1 and not (arr.shape[0] in (3, 4) and raw.is_rgb):
        raise DataError(f"{p}: label has {arr.shape[0]} channels; a label is one class map")
    image_path = like.provenance.get("path", like.id)
    dicom_3d = like.provenance.get("reader") == "dicom" and like.ndim == 3 and arr.ndim == 4
    if dicom_3d and raw.affine is not None and like.affine is not None:
        arr, raw.spacing = _onto_dicom_grid(arr, raw, like, p, image_path)
    spatial = arr.shape[1:]
    if tuple(spatial) != like.shape:
        raise DataError(f"{p}: label shape {tuple(spatial)} differs from image {image_path} shape {like.shape}")
    both_known = raw.grid.get("spacing_known", True) and like.provenance.get("grid", {}).get("spacing_known", True)
    if both_known and not np.allclose(raw.spacing, like.spacing, rtol=1e-3, atol=1e-4):
        sp = tuple(round(s, 4) for s in raw.spacing)
        raise DataError(f"{p}: label spacing {sp} mm differs from image {image_path} spacing {tuple(round(s, 4) for s in like.spacing)} mm")
    return check_label(arr, like.shape, like.class_names, p)
