"""DICOM: one file (2D, or multi-frame 3D) or a folder holding one series, through the modality LUT.

A series is sorted by the projection of ImagePositionPatient on the slice normal (the cross product
of the two ImageOrientationPatient directions), so the z index grows along the normal whatever the
file names or InstanceNumbers say. Pixel values go through RescaleSlope/Intercept (the modality LUT),
so CT arrives in Hounsfield units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medagent.data.io.geometry import dicom_to_case_affine
from medagent.errors import DataError


@dataclass
class DicomVolume:
    """Pixels (D, H, W) in modality units (HU for CT) with their geometry."""

    array: np.ndarray
    affine: np.ndarray
    modality: str | None
    n_files: int


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


def read_dicom_series(folder: Path) -> DicomVolume:
    """Every DICOM file directly inside `folder`, as one (D, H, W) volume.

    Raises:
        DataError: no DICOM files, several series, slices of different sizes or orientations, or
            two slices at the same position.
    """
    import pydicom

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    headers = []
    for f in files:
        try:
            headers.append((f, pydicom.dcmread(f, stop_before_pixels=True)))
        except Exception:  # not a DICOM file (DICOMDIR readmes, thumbnails): ignore it
            continue
    headers = [(f, h) for f, h in headers if "Rows" in h]
    if not headers:
        raise DataError(f"{folder}: folder holds no DICOM image files")
    series = {str(getattr(h, "SeriesInstanceUID", "")) for _, h in headers}
    if len(series) > 1:
        raise DataError(f"{folder}: folder holds {len(series)} DICOM series; point medagent at one series folder")
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
    slices = []
    for i in order:
        f = headers[i][0]
        try:
            ds = pydicom.dcmread(f)
        except Exception as exc:
            raise DataError(f"{f}: cannot read DICOM file: {exc}") from exc
        slices.append(_pixels(ds, f))
    arr = np.stack([s.reshape(s.shape[-2:]) for s in slices])
    if len(slices) > 1:
        step = (positions[-1] - positions[0]) / (len(slices) - 1)
    else:
        thick = float(getattr(headers[0][1], "SliceThickness", 0) or 1.0)
        step = normal * thick
    affine = dicom_to_case_affine(positions[0], ori, ps, step)
    if len(slices) > 2:
        gaps = np.linalg.norm(np.diff(positions, axis=0), axis=1)
        if np.ptp(gaps) > 0.01 * max(float(np.median(gaps)), 1e-6) + 1e-3:
            raise DataError(f"{folder}: DICOM series has uneven slice gaps ({gaps.min():.3f}..{gaps.max():.3f} mm); a slice may be missing")
    return DicomVolume(arr, affine, getattr(headers[0][1], "Modality", None), len(slices))
