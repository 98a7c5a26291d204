"""Affine conversions between each file format's index convention and medagent's.

medagent's `Case.affine` maps a (z, y, x, 1) voxel index to RAS world mm. Formats differ:
- NIfTI: the stored affine maps (i, j, k) = (x, y, z) to RAS; the data array is indexed [x, y, z].
- SimpleITK (NRRD, MHA, DICOM series): origin, spacing, direction map (x, y, z) to LPS.
- DICOM headers: ImagePositionPatient / ImageOrientationPatient / PixelSpacing, in LPS.
Every conversion here is exact (column permutations and sign flips), so a mask written back through
the inverse conversion lands on the same world grid as the input.
"""

from __future__ import annotations

import numpy as np

#: LPS <-> RAS: flip the first two world axes (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def swap_xyz_zyx(affine: np.ndarray) -> np.ndarray:
    """Reorder the index columns of a 4x4 affine between (x, y, z) and (z, y, x) order (self-inverse)."""
    return np.asarray(affine, dtype=np.float64)[:, [2, 1, 0, 3]].copy()


def unslice_affine(affine2d: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of `medagent.data.case.slice_affine` at index 0: the 3D (z, y, x) affine of a 2D case.

    A 2D case stores its virtual singleton axis as column 0; `axis` says where that axis sits in the 3D grid.
    """
    a2 = np.asarray(affine2d, dtype=np.float64)
    keep = [a for a in range(3) if a != axis]
    out = np.eye(4)
    out[:3, axis] = a2[:3, 0]
    out[:3, keep[0]] = a2[:3, 1]
    out[:3, keep[1]] = a2[:3, 2]
    out[:3, 3] = a2[:3, 3]
    return out


def sitk_to_case_affine(origin: tuple[float, ...], spacing: tuple[float, ...], direction: tuple[float, ...]) -> np.ndarray:
    """(z, y, x) -> RAS affine from SimpleITK geometry (2D or 3D; a 2D image gets a unit virtual z axis)."""
    dim = len(spacing)
    d = np.eye(3)
    d[:dim, :dim] = np.asarray(direction, dtype=np.float64).reshape(dim, dim)
    s = np.ones(3)
    s[:dim] = spacing
    o = np.zeros(3)
    o[:dim] = origin
    lps = np.eye(4)
    lps[:3, :3] = d @ np.diag(s)
    lps[:3, 3] = o
    return swap_xyz_zyx(LPS_TO_RAS @ lps)


def case_to_sitk_geometry(affine: np.ndarray, dim: int) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(origin, spacing, direction) in SimpleITK's (x, y, z) LPS convention from a (z, y, x) -> RAS affine.

    For dim == 2 the in-plane part (world x/y of the x and y index columns) is kept; the virtual z is dropped.
    """
    lps = LPS_TO_RAS @ swap_xyz_zyx(affine)  # columns now (x, y, z, t), world LPS
    cols = lps[:3, :dim] if dim == 3 else lps[:2, :2]
    spacing = np.linalg.norm(cols, axis=0)
    spacing[spacing == 0] = 1.0
    direction = cols / spacing
    origin = lps[:dim, 3]
    return tuple(float(v) for v in origin), tuple(float(v) for v in spacing), tuple(float(v) for v in direction.ravel())


def dicom_to_case_affine(position: np.ndarray, orientation: np.ndarray, pixel_spacing: tuple[float, float], slice_step: np.ndarray) -> np.ndarray:
    """(z, y, x) -> RAS affine from DICOM geometry.

    Args:
        position: ImagePositionPatient of the first slice, LPS mm, shape (3,).
        orientation: ImageOrientationPatient, 6 direction cosines (row direction, then column direction).
        pixel_spacing: PixelSpacing (between rows, between columns) in mm.
        slice_step: LPS vector from one slice to the next, mm, shape (3,).
    """
    row_dir = np.asarray(orientation[:3], dtype=np.float64)  # direction of increasing column index (x)
    col_dir = np.asarray(orientation[3:], dtype=np.float64)  # direction of increasing row index (y)
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(slice_step, dtype=np.float64)
    lps[:3, 1] = col_dir * float(pixel_spacing[0])
    lps[:3, 2] = row_dir * float(pixel_spacing[1])
    lps[:3, 3] = np.asarray(position, dtype=np.float64)
    return LPS_TO_RAS @ lps


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (z, y, x) in mm: the lengths of the affine's index columns."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))  # type: ignore[return-value]
