"""DICOM: one file (2D, or multi-frame 3D) or a folder holding one series, through the modality LUT.

A series is sorted by the projection of ImagePositionPatient on the slice normal (the cross product
of the two ImageOrientationPatient directions), so the z index grows along the normal whatever the
file names or InstanceNumbers say. Pixel values go through RescaleSlope/Intercept (the modality LUT),
so CT arrives in Hounsfield units.

`read_series_headers` checks a series folder from its headers alone (no pixel data): one series, one
slice size and orientation, distinct and evenly spaced positions, every file that claims to be DICOM
readable. Dataset folders call it when they are opened, so a broken series is refused (or skipped)
before any pixel is read; `read_dicom_series` runs the same checks, then reads the pixels.
DICOM-SEG objects are refused with a message: medagent reads labels from NIfTI/NRRD/MHA and the like.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medagent.data.io.formats import EXTENSIONS, is_image_file
from medagent.data.io.geometry import dicom_to_case_affine
from medagent.errors import DataError

#: SOP Class UID of DICOM Segmentation Storage (DICOM-SEG), which medagent does not read.
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_SEG_HINT = "DICOM-SEG is not supported; export the segmentation as NIfTI/NRRD/MHA on the image's grid"


@dataclass
class DicomVolume:
    """Pixels (D, H, W) in modality units (HU for CT) with their geometry."""

    array: np.ndarray
    affine: np.ndarray
    modality: str | None
    n_files: int


@dataclass
class SeriesHeaders:
    """What the headers of one series folder say, slices sorted along the normal.

    Attributes:
        folder: the series folder.
        files: the image files, one per slice, in z order.
        headers: their pydicom datasets (no pixel data), same order.
        positions: (D, 3) ImagePositionPatient per slice, LPS mm.
        orientation: (6,) ImageOrientationPatient.
        pixel_spacing: (between rows, between columns) mm.
        shape: (D, H, W) of the volume the series makes.
        modality, patient_id, series_uid: the tags of the first slice ("" / None when missing).
    """

    folder: Path
    files: list[Path]
    headers: list[Any]
    positions: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int, int]
    modality: str | None
    patient_id: str
    series_uid: str


def _claims_dicom(path: Path) -> bool:
    """A DICOM extension, or (for a file no reader claims by extension) the DICM magic at byte 128."""
    low = path.name.lower()
    if low.endswith(EXTENSIONS["dicom"]):
        return True
    if is_image_file(path):  # .png, .nii.gz, ...: another reader's file
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def is_dicom_series_folder(folder: Path) -> bool:
    """True when `folder` directly holds at least one file that claims to be DICOM (cheap: stops at the first)."""
    if not folder.is_dir():
        return False
    return any(p.is_file() and not p.name.startswith(".") and _claims_dicom(p) for p in sorted(folder.iterdir()))


def _is_seg(ds: Any) -> bool:
    return str(getattr(ds, "SOPClassUID", "")) == SEG_SOP_CLASS or str(getattr(ds, "Modality", "")) == "SEG"


def _geometry(ds, path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """(position, orientation, pixel spacing); identity geometry when the tags are missing."""
    pos = np.asarray(getattr(ds, "ImagePositionPatient", [0.0, 0.0, 0.0]), dtype=np.float64)
    ori = np.asarray(getattr(ds, "ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]), dtype=np.float64)
    ps = getattr(ds, "PixelSpacing", None) or getattr(ds, "ImagerPixelSpacing", None) or [1.0, 1.0]
    if pos.shape != (3,) or ori.shape != (6,):
        raise DataError(f"{path}: malformed ImagePositionPatient/ImageOrientationPatient")
    return pos, ori, (float(ps[0]), float(ps[1]))


def _pixels(ds, path: Path) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut

    try:
        raw = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for missing/compressed/truncated pixel data
        raise DataError(f"{path}: cannot decode DICOM pixel data: {exc}") from exc
    return np.asarray(apply_modality_lut(raw, ds), dtype=np.float32)


def read_dicom_file(path: Path) -> DicomVolume:
    """One DICOM file: single frame -> (1, H, W); multi-frame -> (F, H, W)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read DICOM file: {exc}") from exc
    if _is_seg(ds):
        raise DataError(f"{path}: is a DICOM-SEG object; {_SEG_HINT}")
    arr = _pixels(ds, path)
    if getattr(ds, "SamplesPerPixel", 1) != 1:
        raise DataError(f"{path}: colour DICOM (SamplesPerPixel={ds.SamplesPerPixel}) is not supported; convert it to PNG")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    arr = arr.reshape((frames,) + arr.shape[-2:])
    pos, ori, ps = _geometry(ds, path)
    step_mm = float(getattr(ds, "SpacingBetweenSlices", 0) or getattr(ds, "SliceThickness", 0) or 1.0)
    normal = np.cross(ori[:3], ori[3:])
    affine = dicom_to_case_affine(pos, ori, ps, normal * step_mm)
    return DicomVolume(arr, affine, getattr(ds, "Modality", None), 1)


def _image_headers(folder: Path) -> list[tuple[Path, Any]]:
    """(file, header) of the image objects directly in `folder`; files that claim DICOM must parse."""
    import pydicom

    out = []
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception as exc:
            if _claims_dicom(f):  # a .dcm (or DICM-tagged) file that does not parse: a slice may be lost
                why = str(exc).replace("\n", " ").split(" Use force=True")[0]  # pydicom's hint is for its API, not for users
                raise DataError(f"{folder}: {f.name} is not a readable DICOM file ({why}); fix or remove it") from exc
            continue  # not DICOM at all (readmes, thumbnails): ignore it
        if _is_seg(ds):
            raise DataError(f"{folder}: {f.name} is a DICOM-SEG object; {_SEG_HINT}, outside the series folder")
        if "Rows" in ds:  # image objects only; RTSTRUCT, SR, DICOMDIR and the like are ignored
            out.append((f, ds))
    return out


def _one_series(folder: Path, headers: list[tuple[Path, Any]]) -> str:
    """The series UID all headers share, or a DataError naming each series and one of its files."""
    series: dict[str, list[Path]] = {}
    for f, h in headers:
        series.setdefault(str(getattr(h, "SeriesInstanceUID", "")), []).append(f)
    if len(series) > 1:
        listed = "; ".join(f"{uid or '<no UID>'}: {len(fs)} file{'s' * (len(fs) > 1)}, e.g. {fs[0].name}" for uid, fs in sorted(series.items()))
        raise DataError(f"{folder}: folder holds {len(series)} DICOM series ({listed}); a case is one series: "
                        "put each series in its own folder")
    return next(iter(series))


def read_series_headers(folder: Path) -> SeriesHeaders:
    """Check the series in `folder` from its headers alone and sort its slices along the normal.

    Raises:
        DataError: naming the folder: no DICOM image files, an unreadable .dcm file, a DICOM-SEG object,
            several series, multi-frame files among several, slices of different sizes or orientations,
            two slices at the same position, or uneven slice gaps (a missing slice).
    """
    headers = _image_headers(folder)
    if not headers:
        raise DataError(f"{folder}: folder holds no DICOM image files")
    uid = _one_series(folder, headers)
    frames = [int(getattr(h, "NumberOfFrames", 1) or 1) for _, h in headers]
    if len(headers) > 1 and max(frames) > 1:
        raise DataError(f"{folder}: series mixes multi-frame files with others; give a multi-frame file on its own")
    sizes = {(int(h.Rows), int(h.Columns)) for _, h in headers}
    if len(sizes) > 1:
        raise DataError(f"{folder}: DICOM series has slices of different sizes {sorted(sizes)}")
    _, ori, ps = _geometry(headers[0][1], headers[0][0])
    for f, h in headers:
        if not np.allclose(_geometry(h, f)[1], ori, atol=1e-4):
            raise DataError(f"{folder}: DICOM series mixes slice orientations ({f.name})")
    normal = np.cross(ori[:3], ori[3:])
    positions = np.array([_geometry(h, f)[0] for f, h in headers])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    if len(headers) > 1 and np.min(np.diff(positions @ normal)) < 1e-4:
        raise DataError(f"{folder}: DICOM series has two slices at the same position; is it several series or a time series?")
    if len(headers) > 2:
        gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        if np.ptp(gaps) > 0.01 * max(float(np.median(gaps)), 1e-6) + 1e-3:
            raise DataError(f"{folder}: DICOM series has uneven slice gaps ({gaps.min():.3f}..{gaps.max():.3f} mm); a slice may be missing")
    first = headers[order[0]][1]
    (rows, cols), = sizes
    return SeriesHeaders(folder, [headers[i][0] for i in order], [headers[i][1] for i in order], positions, ori, ps,
                         (max(frames[0], len(headers)), rows, cols), getattr(first, "Modality", None),
                         str(getattr(first, "PatientID", "") or ""), uid)


def read_dicom_series(folder: Path) -> DicomVolume:
    """Every DICOM image file directly inside `folder`, as one (D, H, W) volume (`read_series_headers`' checks).

    Raises:
        DataError: what `read_series_headers` raises, or a file whose pixel data cannot be decoded.
    """
    import pydicom

    series = read_series_headers(folder)
    if len(series.files) == 1 and series.shape[0] > 1:  # one multi-frame file in a folder
        return read_dicom_file(series.files[0])
    slices = []
    for f in series.files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:
            raise DataError(f"{f}: cannot read DICOM file: {exc}") from exc
        slices.append(_pixels(ds, f))
    arr = np.stack([s.reshape(s.shape[-2:]) for s in slices])
    positions, ori = series.positions, series.orientation
    if len(slices) > 1:
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        thick = float(getattr(series.headers[0], "SliceThickness", 0) or 1.0)
        step = np.cross(ori[:3], ori[3:]) * thick
    affine = dicom_to_case_affine(positions[0], ori, series.pixel_spacing, step)
    return DicomVolume(arr, affine, series.modality, len(slices))


def dicom_shape(path: Path) -> tuple[int, int, int]:
    """(D, H, W) of a DICOM file (D = frames) or series folder, from headers only (no pixel data)."""
    import pydicom

    if path.is_dir():
        return read_series_headers(path).shape
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(getattr(ds, "NumberOfFrames", 1) or 1), int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise DataError(f"{path}: cannot read DICOM header: {exc}") from exc
