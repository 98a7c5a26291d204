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


def grid_reorientation(label_affine: np.ndarray, image_affine: np.ndarray, label_shape: tuple[int, ...],
                       image_shape: tuple[int, ...], tol_voxels: float = 0.1) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """How a 3D label array lies on an image's grid when both cover the same voxel centres.

    Both affines map a (z, y, x, 1) index to world mm. When the label grid is the image grid up to an
    axis permutation and flips (a viewer that orders rows or slices the other way round), the answer is
    (perm, flips) with `np.flip(np.transpose(label, perm), [a for a in range(3) if flips[a]])` the label
    indexed like the image; identity is ((0, 1, 2), (False, False, False)). Exact: no resampling.

    Args:
        label_affine, image_affine: 4x4 index -> world affines.
        label_shape, image_shape: (D, H, W) of each array.
        tol_voxels: how far (label voxels) any image corner may land from a label voxel centre.

    Returns:
        (perm, flips), or None when the two grids are not the same set of voxel centres.
    """
    m = np.linalg.inv(np.asarray(label_affine, dtype=np.float64)) @ np.asarray(image_affine, dtype=np.float64)
    rot = np.round(m[:3, :3])
    if not (np.abs(rot).sum(axis=0) == 1).all() or not (np.abs(rot).sum(axis=1) == 1).all():
        return None  # not a signed permutation: rotated, scaled or sheared against the image
    shift = np.round(m[:3, 3])
    corners = np.array([[z, y, x, 1.0] for z in (0, image_shape[0] - 1) for y in (0, image_shape[1] - 1)
                        for x in (0, image_shape[2] - 1)]).T
    exact = np.vstack([np.hstack([rot, shift[:, None]]), [0, 0, 0, 1]])
    if np.abs((m - exact) @ corners)[:3].max() > tol_voxels:
        return None
    perm, flips = [], []
    for axis in range(3):
        src = int(np.argmax(np.abs(rot[:, axis])))
        flip = bool(rot[src, axis] < 0)
        if label_shape[src] != image_shape[axis] or shift[src] != (image_shape[axis] - 1 if flip else 0):
            return None  # the grids overlap but do not coincide (another extent or origin)
        perm.append(src)
        flips.append(flip)
    return tuple(perm), tuple(flips)
