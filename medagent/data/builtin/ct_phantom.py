"""Procedural axial chest CT phantom in Hounsfield units, with exact label maps.

Each patient (one subject) is drawn from `numpy.random.default_rng([seed, 2002, patient])`: body size and
shape, fat thickness, lung size, spine/rib positions, aorta/vena cava, pulmonary vessel dots and 1-4
spherical lung nodules (radius 3-12 mm) at random 3D positions. `N_SLICES` axial slices 10 mm apart
(apex -> base) are rasterised on a 256 x 256 grid of 1.25 mm pixels; the lungs grow and shrink along z
and nodules are cut as spheres. Image = clean HU map blurred (sigma 0.7 px, partial volume) + correlated
Gaussian noise (std 10-20 HU per patient), rounded to integer HU and clipped to [-1024, 3071].

Classes (label = the structure painted last at each pixel; later structures overwrite earlier ones):
1 soft tissue (body, mediastinum, heart; ~40 HU), 2 fat (~-100 HU), 3 muscle (~50 HU),
4 bone (cortical ~700-1000 HU, cancellous ~300 HU), 5 lung (~-850 HU), 6 vessel (aorta ~200 HU contrast,
vena cava ~120 HU, pulmonary vessel dots ~30 HU), 7 nodule (0-50 HU).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medagent.data.builtin.base import record

CT_CLASSES = {0: "background", 1: "soft tissue", 2: "fat", 3: "muscle", 4: "bone", 5: "lung", 6: "vessel", 7: "nodule"}
SIZE = 256
PIXEL_MM = 1.25
SLICE_MM = 10.0
N_SLICES = 12
N_PATIENTS = 16
PATIENT_SPLITS = ("train",) * 10 + ("val",) * 2 + ("test",) * 4


def _ellipse(X: np.ndarray, Y: np.ndarray, cx: float, cy: float, a: float, b: float, angle: float = 0.0, p: float = 2.0) -> np.ndarray:
    """Boolean mask of a (super)ellipse with centre (cx, cy) mm, semi-axes a, b mm, rotated by `angle` rad."""
    c, s = np.cos(angle), np.sin(angle)
    u = ((X - cx) * c + (Y - cy) * s) / a
    v = (-(X - cx) * s + (Y - cy) * c) / b
    return np.abs(u) ** p + np.abs(v) ** p <= 1.0


def _patient(seed: int, patient: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(image (Z, H, W) int16 HU, label (Z, H, W) uint8, parameters) of one patient."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng([seed, 2002, patient])
    half = (SIZE - 1) / 2 * PIXEL_MM
    coords = np.linspace(-half, half, SIZE)
    X, Y = np.meshgrid(coords, coords)  # X: patient right -> left across columns; Y: anterior (top) -> posterior
    a, b = rng.uniform(120, 148), rng.uniform(85, 112)
    p_body = rng.uniform(2.0, 2.6)
    fat = rng.uniform(6, 25)
    muscle = rng.uniform(6, 12)
    lung_a, lung_b = rng.uniform(0.30, 0.36) * a, rng.uniform(0.58, 0.70) * b
    lung_x = rng.uniform(0.42, 0.48) * a
    spine_y = b - rng.uniform(32, 40)
    spine_r = rng.uniform(13, 17)
    aorta = (rng.uniform(10, 22), spine_y - rng.uniform(22, 30), rng.uniform(10, 14))
    cava = (-rng.uniform(15, 25), rng.uniform(-15, 5), rng.uniform(8, 11))
    heart = (rng.uniform(5, 20), rng.uniform(-20, -5), rng.uniform(40, 55), rng.uniform(35, 45), rng.uniform(-0.6, -0.2))
    hu = {
        "soft": rng.uniform(30, 50), "fat": rng.uniform(-115, -85), "muscle": rng.uniform(45, 60),
        "cortical": rng.uniform(700, 1000), "cancellous": rng.uniform(250, 400), "lung": rng.uniform(-880, -820),
        "aorta": rng.uniform(170, 240), "cava": rng.uniform(100, 140), "pvessel": rng.uniform(10, 50),
    }
    n_nod = int(rng.integers(1, 5))
    nodules = []
    for _ in range(n_nod):
        side = rng.choice([-1, 1])
        nodules.append(
            dict(
                x=float(side * lung_x + rng.uniform(-0.5, 0.5) * lung_a),
                y=float(rng.uniform(-0.5, 0.5) * lung_b),
                z=float(rng.uniform(1.5, N_SLICES - 2.5) * SLICE_MM),
                r=float(rng.uniform(3, 12)),
                hu=float(rng.uniform(0, 50)),
            )
        )
    noise_sd = rng.uniform(10, 20)
    rib_phase = rng.uniform(0, 2 * np.pi)
    n_ribs = int(rng.integers(8, 13))

    image = np.zeros((N_SLICES, SIZE, SIZE), np.float32)
    label = np.zeros((N_SLICES, SIZE, SIZE), np.uint8)
    for zi in range(N_SLICES):
        t = zi / (N_SLICES - 1)  # 0 apex .. 1 base
        z_mm = zi * SLICE_MM
        lab = np.zeros((SIZE, SIZE), np.uint8)
        hum = np.full((SIZE, SIZE), -1000.0, np.float32)

        def paint(mask: np.ndarray, cls: int, value: float | np.ndarray) -> None:
            lab[mask] = cls
            hum[mask] = value if np.isscalar(value) else value[mask]

        body = _ellipse(X, Y, 0, 0, a, b, p=p_body)
        paint(body, 2, hu["fat"])
        inner = _ellipse(X, Y, 0, 0, a - fat, b - fat, p=p_body)
        paint(inner, 3, hu["muscle"])
        paint(_ellipse(X, Y, 0, 0, a - fat - muscle, b - fat - muscle, p=p_body), 1, hu["soft"])
        for sx in (-1, 1):  # paraspinal muscles
            paint(_ellipse(X, Y, sx * 30, spine_y + 8, 22, 16) & inner, 3, hu["muscle"])
        # ribs: small bone ellipses along the inner muscle ring, shifting with z
        ring_a, ring_b = a - fat - muscle / 2, b - fat - muscle / 2
        for r in range(n_ribs):
            th = rib_phase + 0.5 * t + 2 * np.pi * r / n_ribs
            if np.sin(th) < -0.6:  # none over the sternum region (anterior)
                continue
            paint(_ellipse(X, Y, ring_a * np.cos(th), ring_b * np.sin(th), 6, 4, angle=th + np.pi / 2), 4, hu["cortical"])
        # lungs grow from apex to mid-chest, then give way to the diaphragm
        g = 0.55 + 0.45 * np.sin(np.pi * (0.15 + 0.8 * t))
        lungs = np.zeros((SIZE, SIZE), bool)
        for sx in (-1, 1):
            lungs |= _ellipse(X, Y, sx * lung_x, -0.02 * b, lung_a * g, lung_b * g, angle=sx * 0.15, p=2.2)
        lung_tex = ndi.gaussian_filter(rng.normal(0, 1, (SIZE, SIZE)), 2.0) * 60
        paint(lungs, 5, hu["lung"] + lung_tex)
        if t > 0.3:  # heart in the lower chest
            hx, hy, ha, hb, hang = heart
            paint(_ellipse(X, Y, hx, hy, ha * min(1.0, (t - 0.2) * 2), hb * min(1.0, (t - 0.2) * 2), angle=hang), 1, hu["soft"])
        # spine: vertebral body (cortical rim, cancellous core) and spinous process
        paint(_ellipse(X, Y, 0, spine_y, spine_r, spine_r * 0.9), 4, hu["cortical"])
        paint(_ellipse(X, Y, 0, spine_y, spine_r - 2.5, spine_r * 0.9 - 2.5), 4, hu["cancellous"])
        paint(_ellipse(X, Y, 0, spine_y + spine_r + 9, 4, 10), 4, hu["cortical"])
        paint(_ellipse(X, Y, aorta[0], aorta[1], aorta[2], aorta[2]), 6, hu["aorta"])
        paint(_ellipse(X, Y, cava[0], cava[1], cava[2], cava[2]), 6, hu["cava"])
        # pulmonary vessel dots (hard negatives for nodules): small, inside the lungs only
        for _ in range(int(rng.integers(6, 14))):
            ys, xs = np.nonzero(lungs)
            if len(ys) == 0:
                break
            j = int(rng.integers(len(ys)))
            rad = rng.uniform(1.0, 2.5)
            paint(_ellipse(X, Y, X[ys[j], xs[j]], Y[ys[j], xs[j]], rad, rad) & lungs, 6, hu["pvessel"])
        for nod in nodules:  # spheres cut by this slice, kept inside the lungs
            dz = z_mm - nod["z"]
            if abs(dz) < nod["r"]:
                rr = float(np.sqrt(nod["r"] ** 2 - dz**2))
                if rr >= 1.0:
                    paint(_ellipse(X, Y, nod["x"], nod["y"], rr, rr) & lungs, 7, nod["hu"])
        # acquisition: partial-volume blur, then correlated noise scaled to noise_sd
        img = ndi.gaussian_filter(hum, 0.7)
        noise = ndi.gaussian_filter(rng.normal(0, 1, (SIZE, SIZE)), 0.8)
        img = img + noise / noise.std() * noise_sd
        image[zi] = img
        label[zi] = lab
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)
    params = {"body_semi_axes_mm": [a, b], "fat_mm": fat, "noise_sd_hu": noise_sd, "nodules": nodules, "hu": hu}
    return image, label, params


def build_ct_phantom(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Derive the `ct-phantom` dataset: N_PATIENTS patients x N_SLICES axial slices."""
    arrays: dict[str, np.ndarray] = {}
    records = []
    k = 0
    for p in range(N_PATIENTS):
        image, label, params = _patient(seed, p)
        for zi in range(N_SLICES):
            # (z, y, x) index -> RAS mm: columns run patient right -> left (+x), rows anterior -> posterior (-y)
            half = (SIZE - 1) / 2 * PIXEL_MM
            affine = np.array(
                [[0, 0, PIXEL_MM, -half], [0, -PIXEL_MM, 0, half], [-SLICE_MM, 0, 0, -zi * SLICE_MM], [0, 0, 0, 1]],
                dtype=float,
            )
            arrays[f"image_{k}"] = image[zi][None]
            arrays[f"label_{k}"] = label[zi]
            records.append(
                record(
                    f"ctph_p{p:02d}_z{zi:02d}", f"patient-{p:02d}", PATIENT_SPLITS[p], (PIXEL_MM, PIXEL_MM), affine,
                    seed=seed, patient=p, slice_index=zi, slice_mm=SLICE_MM,
                    **({"patient_parameters": params} if zi == 0 else {}),
                )
            )
            k += 1
    return arrays, {"cases": records}
