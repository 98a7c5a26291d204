"""Tiny DICOM files built with pydicom for the reader tests (no network, no shipped data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_dicom_slice(path: Path, pixels: np.ndarray, position=(0.0, 0.0, 0.0), orientation=(1, 0, 0, 0, 1, 0),
                      pixel_spacing=(0.8, 0.6), slope: float = 2.0, intercept: float = -1024.0, modality: str = "CT",
                      series_uid: str = "1.2.826.0.1.3680043.8.498.1", instance: int = 1, patient_id: str = "") -> Path:
    """One uncompressed 16-bit DICOM slice with geometry and a modality LUT (stored = (HU - intercept) / slope)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    if patient_id:
        ds.PatientID = patient_id
    ds.InstanceNumber = instance
    ds.Rows, ds.Columns = (int(v) for v in pixels.shape)
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.SliceThickness = 2.5
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path
