"""medagent.metrics against hand-computed values and MONAI's implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medagent import metrics as M
from medagent.errors import ConfigError, DataError


def blob(shape: tuple[int, ...], seed: int, sigma: float = 3.0, level: float = 0.0) -> np.ndarray:
    """A random smooth blob mask (bool) filling roughly half the grid."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return field > level


def square(shape: tuple[int, int], y0: int, x0: int, size: int) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[y0:y0 + size, x0:x0 + size] = True
    return m


# -- hand-computed values ---------------------------------------------------------------------------
def test_two_squares_offset_by_k_pixels():
    gt = square((40, 40), 10, 10, 10)
    k = 3
    pred = square((40, 40), 10, 10 + k, 10)  # shifted right by k columns
    inter, total = 10 * (10 - k), 200
    assert M.dice(pred, gt) == pytest.approx(2 * inter / total)
    assert M.iou(pred, gt) == pytest.approx(inter / (total - inter))
    # Every boundary pixel on the moved left/right sides is k away; top/bottom pixels are 0..k away.
    assert M.hausdorff(pred, gt, percentile=100) == pytest.approx(k)
    assert M.hd95(pred, gt) == pytest.approx(k)
    # Spacing along x scales the distances; along y it does not change them.
    assert M.hd95(pred, gt, spacing=(5.0, 0.5)) == pytest.approx(0.5 * k)
    # NSD with tolerance >= k is perfect, with a tolerance below 1 px only the shared boundary counts.
    assert M.nsd(pred, gt, tolerance_mm=k) == 1.0
    assert 0 < M.nsd(pred, gt, tolerance_mm=0.5) < 1
    assert M.boundary_f1(pred, gt, tol_px=k) == 1.0


def test_hand_values_assd_and_nsd():
    # A 1-pixel-thick vertical line vs the same line 2 px to the right: every distance is 2 (its whole
    # set is boundary), so ASSD = HD = 2, NSD(1 mm) = 0, NSD(2 mm) = 1.
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5] = True
    pred = np.zeros_like(gt)
    pred[5:15, 7] = True
    assert M.assd(pred, gt) == pytest.approx(2.0)
    assert M.hd95(pred, gt) == pytest.approx(2.0)
    assert M.nsd(pred, gt, tolerance_mm=1.0) == 0.0
    assert M.nsd(pred, gt, tolerance_mm=2.0) == 1.0
    assert M.dice(pred, gt) == 0.0
    # Identical masks: perfect everywhere.
    out = M.binary_metrics(gt, gt, metrics=M.METRICS)
    assert out == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "assd": 0.0, "hd": 0.0, "boundary_f1": 1.0}


def test_cube_shift_3d_anisotropic():
    gt = np.zeros((12, 30, 30), bool)
    gt[3:9, 8:20, 8:20] = True
    pred = np.roll(gt, 2, axis=0)  # two slices deeper
    assert M.hd95(pred, gt, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.hausdorff(pred, gt, spacing=(3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert M.dice(pred, gt) == pytest.approx(4 / 6)
    assert M.nsd(pred, gt, tolerance_mm=6.0, spacing=(3.0, 1.0, 1.0)) == 1.0


# -- empty masks -------------------------------------------------------------------------------------
def test_empty_masks_documented_values():
    empty = np.zeros((16, 16), bool)
    full = square((16, 16), 4, 4, 5)
    both = M.binary_metrics(empty, empty, metrics=M.METRICS)
    assert both == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "assd": 0.0, "hd": 0.0, "boundary_f1": 1.0}
    for pred, gt in ((empty, full), (full, empty)):
        one = M.binary_metrics(pred, gt, metrics=M.METRICS)
        assert one["dice"] == one["iou"] == one["nsd"] == one["boundary_f1"] == 0.0
        assert math.isnan(one["hd95"]) and math.isnan(one["assd"]) and math.isnan(one["hd"])
        # A penalty in mm, or the image diagonal in mm.
        assert M.hd95(pred, gt, empty_distance=99.0) == 99.0
        diag = M.assd(pred, gt, spacing=(2.0, 0.5), empty_distance="diagonal")
        assert diag == pytest.approx(math.hypot(16 * 2.0, 16 * 0.5))
    with pytest.raises(ConfigError):
        M.hd95(empty, full, empty_distance="far")
    with pytest.raises(DataError):
        M.surface_distances(empty, full)


def test_bad_arguments():
    a = np.zeros((4, 4))
    with pytest.raises(DataError, match="differs"):
        M.dice(a, np.zeros((4, 5)))
    with pytest.raises(ConfigError, match="spacing"):
        M.hd95(a, a, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match="spacing"):
        M.hd95(a, a, spacing=(1.0, -1.0))
    with pytest.raises(ConfigError, match="unknown metric"):
        M.binary_metrics(a, a, metrics=("dice", "f2"))


def test_crop_is_exact_for_objects_touching_the_border():
    # Objects on the image border: the crop must not invent or lose boundary voxels.
    gt = np.zeros((30, 30), bool)
    gt[:10, :12] = True
    pred = np.zeros_like(gt)
    pred[:8, 20:] = True
    d_pg, d_gp = M.surface_distances(pred, gt, spacing=(1.0, 2.0))
    ep = pred & ~ndimage.binary_erosion(pred)
    eg = gt & ~ndimage.binary_erosion(gt)
    ref = ndimage.distance_transform_edt(~eg, sampling=(1.0, 2.0))[ep]
    np.testing.assert_allclose(np.sort(d_pg), np.sort(ref))
    assert d_gp.size == int(eg.sum())


# -- per class -------------------------------------------------------------------------------------------
def test_per_class_maps():
    gt = np.zeros((20, 20), np.uint8)
    gt[2:8, 2:8] = 1
    gt[10:18, 10:18] = 2
    pred = gt.copy()
    pred[10:18, 10:18] = 0  # class 2 missed entirely
    pred[0:2, 0:2] = 3  # class 3 only predicted
    out = M.per_class(pred, gt, spacing=(1.0, 1.0))
    assert sorted(out) == [1, 2, 3]
    assert out[1]["dice"] == 1.0 and out[1]["hd95"] == 0.0
    assert out[2]["dice"] == 0.0 and math.isnan(out[2]["hd95"])
    assert out[3]["dice"] == 0.0
    absent = M.per_class(pred, gt, classes=[4], metrics=("dice", "hd95"))
    assert absent == {4: {"dice": 1.0, "hd95": 0.0}}


# -- MONAI ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def monai_metrics():
    torch = pytest.importorskip("torch")
    mm = pytest.importorskip("monai.metrics")
    return torch, mm


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI warns about its own deprecated argument
@pytest.mark.parametrize(
    "shape,spacing,seed",
    [((48, 56), (0.7, 1.9), 0), ((48, 56), (1.0, 1.0), 1), ((14, 28, 24), (3.0, 0.8, 1.1), 2), ((14, 28, 24), (1.0, 1.0, 1.0), 3)],
)
def test_matches_monai(monai_metrics, shape, spacing, seed):
    torch, mm = monai_metrics
    sigma = 2.0 if len(shape) == 3 else 3.0
    gt = blob(shape, seed, sigma)
    # The prediction: the ground truth dilated and eroded in places plus a spurious blob, so distances vary.
    pred = ndimage.binary_dilation(gt, iterations=2) & blob(shape, seed + 100, sigma, level=-0.15)
    pred |= blob(shape, seed + 200, 1.5, level=0.5)
    assert gt.any() and pred.any()
    tol = 1.5
    ours = M.binary_metrics(pred, gt, spacing, metrics=("dice", "iou", "hd95", "hd", "nsd", "assd"), tolerance_mm=tol)

    t = lambda a: torch.from_numpy(a[None, None].astype(np.float32))  # noqa: E731  (B=1, C=1)
    yp, yt = t(pred), t(gt)
    ref = {
        "dice": mm.compute_dice(yp, yt, include_background=True).item(),
        "iou": mm.compute_iou(yp, yt, include_background=True).item(),
        "hd95": mm.compute_hausdorff_distance(yp, yt, include_background=True, percentile=95, spacing=list(spacing)).item(),
        "hd": mm.compute_hausdorff_distance(yp, yt, include_background=True, spacing=list(spacing)).item(),
        "nsd": mm.compute_surface_dice(yp, yt, [tol], include_background=True, spacing=list(spacing)).item(),
        "assd": mm.compute_average_surface_distance(yp, yt, include_background=True, symmetric=True, spacing=list(spacing)).item(),
    }
    for name, value in ref.items():
        # MONAI computes in float32; the definitions are the same, so only rounding differs.
        assert ours[name] == pytest.approx(value, rel=1e-4, abs=1e-4), name


def test_boundary_f1_tolerance_behaviour():
    # A square grown by 2 px per side: boundary distances are 2 px (sides) and 2*sqrt(2) px (corners).
    gt = square((40, 40), 10, 10, 12)
    pred = square((40, 40), 8, 8, 16)
    assert M.boundary_f1(pred, gt, tol_px=1.9) == 0.0
    assert 0.0 < M.boundary_f1(pred, gt, tol_px=2.0) < 1.0
    assert M.boundary_f1(pred, gt, tol_px=2.9) == 1.0
    # 3D works the same way (a cube grown by one voxel per face).
    cube = np.zeros((10, 10, 10), bool)
    cube[3:7, 3:7, 3:7] = True
    grown = np.zeros_like(cube)
    grown[2:8, 2:8, 2:8] = True
    assert M.boundary_f1(grown, cube, tol_px=1.8) == 1.0
    assert M.boundary_f1(grown, cube, tol_px=0.5) == 0.0
    assert M.boundary_f1(gt, gt, tol_px=0) == 1.0
