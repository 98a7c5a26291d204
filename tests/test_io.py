"""Readers and writers on files the tests write themselves: every format, geometry round trips, overlays."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from io_fixtures import write_dicom_slice
from medagent.data import Case, load_image, save_mask, save_overlay_png
from medagent.data.io import load_label
from medagent.data.io.overlay import class_colour
from medagent.errors import DataError


def rotated_affine() -> np.ndarray:
    """A non-diagonal, flipped NIfTI affine: 30 degree rotation about z, x flipped, anisotropic voxels."""
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag([-1.5, 0.8, 3.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    return aff


def to_ras_from_lps(point) -> np.ndarray:
    p = np.asarray(point, dtype=float)
    return np.array([-p[0], -p[1], p[2]])


# -- NIfTI -------------------------------------------------------------------------------------------
def test_nifti_orientation_round_trip(tmp_path):
    aff = rotated_affine()
    data = np.random.default_rng(0).normal(size=(5, 6, 7)).astype(np.float32)
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(data, aff), src)

    case = load_image(src, modality="MR")
    assert case.image.shape == (1, 7, 6, 5)  # (c, z, y, x)
    np.testing.assert_allclose(case.image[0], data.transpose(2, 1, 0), rtol=1e-6)
    np.testing.assert_allclose(case.spacing, (3.0, 0.8, 1.5), rtol=1e-5)
    assert case.provenance["reader"] == "nifti" and case.provenance["path"] == str(src)
    # An asymmetric marker voxel lands on the same world point through Case.affine.
    i, j, k = 1, 2, 3
    np.testing.assert_allclose(case.affine @ [k, j, i, 1], aff @ [i, j, k, 1], atol=1e-5)

    mask = np.zeros(case.shape, np.uint8)
    mask[k, j, i] = 2
    out = save_mask(mask, case, tmp_path / "mask.nii.gz")
    back = nib.load(out)
    np.testing.assert_allclose(back.affine, aff, atol=1e-5)
    assert back.shape == data.shape
    arr = np.asarray(back.dataobj)
    assert arr.dtype == np.uint8 and arr[i, j, k] == 2 and arr.sum() == 2


def test_nifti_affine_agrees_with_simpleitk(tmp_path):
    """nibabel's and SimpleITK's readings of one file give the same (z, y, x) -> RAS affine."""
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6), np.int16), rotated_affine()), src)
    a = load_image(src).affine
    img = sitk.ReadImage(str(src))
    for idx in [(0, 0, 0), (3, 1, 2), (1, 4, 5)]:  # (x, y, z)
        world = to_ras_from_lps(img.TransformIndexToPhysicalPoint(idx))
        np.testing.assert_allclose(a @ [idx[2], idx[1], idx[0], 1], list(world) + [1], atol=1e-4)


def test_nifti_singleton_axis_is_2d_and_round_trips(tmp_path):
    aff = np.diag([0.5, 0.7, 4.0, 1.0])
    aff[:3, 3] = [1, 2, 3]
    data = np.arange(4 * 6, dtype=np.int16).reshape(4, 6, 1)
    src = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(data, aff), src)
    case = load_image(src)
    assert case.ndim == 2 and case.image.shape == (1, 6, 4)
    assert case.spacing == pytest.approx((0.7, 0.5))
    out = save_mask(np.ones(case.shape, bool), case, tmp_path / "m.nii.gz")
    back = nib.load(out)
    assert back.shape == (4, 6, 1)
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)


def test_nifti_4d_is_multichannel(tmp_path):
    data = np.random.default_rng(1).random((4, 5, 6, 2)).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "mc.nii.gz")
    case = load_image(tmp_path / "mc.nii.gz")
    assert case.image.shape == (2, 6, 5, 4)
    np.testing.assert_allclose(case.image[1], data[..., 1].transpose(2, 1, 0))


# -- NRRD / MHA --------------------------------------------------------------------------------------
@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_itk_formats_round_trip(tmp_path, ext):
    arr = np.random.default_rng(2).integers(-1000, 1000, size=(4, 5, 6)).astype(np.int16)  # (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.7, 2.0))
    img.SetOrigin((3.0, -4.0, 5.0))
    img.SetDirection((-1, 0, 0, 0, 0, 1, 0, -1, 0))  # flipped and permuted axes
    src = tmp_path / f"vol{ext}"
    sitk.WriteImage(img, str(src))

    case = load_image(src)
    assert case.provenance["reader"] == "itk"
    assert case.image.shape == (1, 4, 5, 6)
    np.testing.assert_array_equal(case.image[0], arr)
    assert case.spacing == pytest.approx((2.0, 0.7, 0.5))
    world = to_ras_from_lps(img.TransformIndexToPhysicalPoint((5, 1, 3)))
    np.testing.assert_allclose(case.affine @ [3, 1, 5, 1], list(world) + [1], atol=1e-6)
    assert case.modality == "CT"  # guessed from HU-like values

    mask = (arr > 0).astype(np.uint8)
    back = sitk.ReadImage(str(save_mask(mask, case, tmp_path / f"m{ext}")))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), mask)
    assert back.GetSpacing() == pytest.approx(img.GetSpacing())
    assert back.GetOrigin() == pytest.approx(img.GetOrigin())
    assert back.GetDirection() == pytest.approx(img.GetDirection())


def test_nifti_case_written_as_mha_keeps_world_position(tmp_path):
    src = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.float32), rotated_affine()), src)
    case = load_image(src)
    mask = np.zeros(case.shape, np.uint8)
    mask[4, 1, 2] = 1  # (z, y, x)
    back = sitk.ReadImage(str(save_mask(mask, case, tmp_path / "m.mha")))
    z, y, x = np.argwhere(sitk.GetArrayFromImage(back))[0]
    world = to_ras_from_lps(back.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
    np.testing.assert_allclose(world, (case.affine @ [4, 1, 2, 1])[:3], atol=1e-4)


# -- DICOM -------------------------------------------------------------------------------------------
def test_dicom_single_file_applies_modality_lut(tmp_path):
    stored = np.arange(12, dtype=np.uint16).reshape(3, 4) * 100
    path = write_dicom_slice(tmp_path / "one.dcm", stored, slope=2.0, intercept=-1024.0)
    case = load_image(path, modality="MR")
    assert case.ndim == 2 and case.modality == "CT"  # the DICOM tag wins over the argument
    np.testing.assert_allclose(case.image[0], stored * 2.0 - 1024.0)
    assert case.spacing == pytest.approx((0.8, 0.6))
    assert case.provenance["reader"] == "dicom"


def test_dicom_series_sorted_by_position(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    rng = np.random.default_rng(3)
    slices = [rng.integers(0, 2000, size=(3, 4)).astype(np.uint16) for _ in range(4)]
    zs = [10.0, 12.5, 15.0, 17.5]
    # file names and instance numbers in scrambled order: only the position decides
    for name, k in zip(["b", "d", "a", "c"], [2, 0, 3, 1]):
        write_dicom_slice(folder / f"{name}.dcm", slices[k], position=(-50.0, 30.0, zs[k]), instance=7 - k)
    (folder / "README.txt").write_text("not dicom")
    case = load_image(folder)
    assert case.image.shape == (1, 4, 3, 4)
    for k in range(4):
        np.testing.assert_allclose(case.image[0, k], slices[k] * 2.0 - 1024.0)
    assert case.spacing == pytest.approx((2.5, 0.8, 0.6))
    # voxel (z=2, y=1, x=3): LPS = IPP_2 + 3 * 0.6 * row_dir + 1 * 0.8 * col_dir
    lps = np.array([-50.0 + 3 * 0.6, 30.0 + 0.8, 15.0])
    np.testing.assert_allclose(case.affine @ [2, 1, 3, 1], list(to_ras_from_lps(lps)) + [1], atol=1e-6)
    mask = np.zeros(case.shape, np.uint8)
    mask[2, 1, 3] = 1
    back = nib.load(save_mask(mask, case, tmp_path / "m.nii.gz"))
    i, j, k = np.argwhere(np.asarray(back.dataobj))[0]
    np.testing.assert_allclose((back.affine @ [i, j, k, 1])[:3], to_ras_from_lps(lps), atol=1e-5)


# -- 2D raster formats and NumPy ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["png8", "png16", "png_rgb", "jpeg_rgb", "tif8", "tif16", "tif_rgb", "tif_stack"])
def test_raster_formats(tmp_path, kind):
    import tifffile

    rng = np.random.default_rng(4)
    grey8 = rng.integers(0, 255, (6, 7)).astype(np.uint8)
    grey16 = rng.integers(0, 60000, (6, 7)).astype(np.uint16)
    rgb = rng.integers(0, 255, (6, 7, 3)).astype(np.uint8)
    if kind == "png8":
        path, want = tmp_path / "a.png", grey8[None]
        Image.fromarray(grey8).save(path)
    elif kind == "png16":
        path, want = tmp_path / "a.png", grey16[None]
        Image.fromarray(grey16).save(path)
    elif kind == "png_rgb":
        path, want = tmp_path / "a.png", np.moveaxis(rgb, -1, 0)
        Image.fromarray(rgb).save(path)
    elif kind == "jpeg_rgb":
        path, want = tmp_path / "a.jpg", None
        Image.fromarray(rgb).save(path, quality=95)
    elif kind == "tif8":
        path, want = tmp_path / "a.tif", grey8[None]
        tifffile.imwrite(path, grey8)
    elif kind == "tif16":
        path, want = tmp_path / "a.tiff", grey16[None]
        tifffile.imwrite(path, grey16)
    elif kind == "tif_rgb":
        path, want = tmp_path / "a.tif", np.moveaxis(rgb, -1, 0)
        tifffile.imwrite(path, rgb, photometric="rgb")
    else:
        stack = rng.integers(0, 255, (3, 6, 7)).astype(np.uint8)
        path, want = tmp_path / "a.tif", stack[None]
        tifffile.imwrite(path, stack, photometric="minisblack")
    case = load_image(path)
    assert case.image.dtype == np.float32 and case.affine is None
    if want is None:
        assert case.image.shape == (3, 6, 7) and case.modality == "photo"
    else:
        np.testing.assert_array_equal(case.image, want.astype(np.float32))
    if "rgb" in kind:
        assert case.modality == "photo"


def test_numpy_files_and_png_mask_writer(tmp_path):
    vol = np.random.default_rng(5).random((3, 4, 5)).astype(np.float32)
    np.save(tmp_path / "v.npy", vol)
    case = load_image(tmp_path / "v.npy", modality="MR")
    assert case.image.shape == (1, 3, 4, 5) and case.modality == "MR" and case.provenance["reader"] == "numpy"

    img2d = np.random.default_rng(6).random((2, 4, 5)).astype(np.float32)  # (C, H, W), said by the 2-value spacing
    lab = np.zeros((4, 5), np.uint8)
    lab[1:3, 1:4] = 2
    np.savez(tmp_path / "c.npz", image=img2d, label=lab, spacing=np.array([0.5, 0.25]))
    case = load_image(tmp_path / "c.npz", class_names={0: "background", 1: "a", 2: "b"})
    assert case.image.shape == (2, 4, 5) and case.spacing == (0.5, 0.25)
    np.testing.assert_array_equal(case.label, lab)

    out = save_mask(lab, case, tmp_path / "m.png")
    np.testing.assert_array_equal(np.array(Image.open(out)), lab)
    np.testing.assert_array_equal(load_label(out, case), lab)
    np.testing.assert_array_equal(np.load(save_mask(lab, case, tmp_path / "m.npy")), lab)
    with pytest.raises(DataError, match="3D"):
        save_mask(np.zeros((3, 4, 5), np.uint8), load_image(tmp_path / "v.npy"), tmp_path / "x.png")


def test_object_npy_refused(tmp_path):
    np.save(tmp_path / "o.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="o.npy"):
        load_image(tmp_path / "o.npy")


def test_binary_png_mask_0_255_reads_as_class_1(tmp_path):
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "i.png")
    m = np.zeros((4, 4), np.uint8)
    m[1, 1] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    lab = load_label(tmp_path / "m.png", load_image(tmp_path / "i.png"))
    assert lab[1, 1] == 1 and lab.sum() == 1


# -- overlays ----------------------------------------------------------------------------------------
def test_overlay_2d_and_3d(tmp_path):
    img = np.full((1, 20, 30), 10.0, np.float32)
    img[0, :, 15:] = 100.0
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 2:8] = 1
    mask[10:18, 20:28] = 2
    case = Case(image=img, modality="MR")
    out = np.array(Image.open(save_overlay_png(case, mask, tmp_path / "o.png", min_size=60)))
    assert out.shape == (60, 90, 3)  # upscaled by 3
    c1, c2 = out[3 * 5, 3 * 5], out[3 * 14, 3 * 24]  # centres of the two regions
    assert not np.array_equal(c1, c2)
    assert np.array_equal(out[3 * 2, 3 * 2], class_colour(1))  # contour drawn opaque
    assert np.array_equal(out[0, 0], [0, 0, 0]) and np.array_equal(out[0, -1], [255, 255, 255])

    vol = np.zeros((1, 5, 8, 8), np.float32)
    m3 = np.zeros((5, 8, 8), np.uint8)
    m3[1, 2:4, 2:4] = 1
    m3[3, 1:7, 1:7] = 1  # slice 3 has the most foreground
    case3 = Case(image=vol, spacing=(3.0, 1.0, 1.0), label=m3, modality="MR")
    out3 = np.array(Image.open(save_overlay_png(case3, None, tmp_path / "o3.png", alpha=1.0, contours=False, min_size=8)))
    assert out3.shape == (8, 8, 3)
    assert (out3.reshape(-1, 3) == class_colour(1)).all(axis=1).sum() == 36


def test_pydicom_shipped_ct_file_reads_in_hu():
    from pydicom.data import get_testdata_file

    case = load_image(get_testdata_file("CT_small.dcm"))
    assert case.modality == "CT" and case.image.shape == (1, 128, 128)
    assert case.image.min() < -500 < 500 < case.image.max()  # air and bone in HU after the modality LUT
