"""Shepp-Logan phantom (scikit-image) -> exact grey-level labels on seeded geometric variants.

scikit-image's modified Shepp-Logan phantom has exactly 6 grey levels (0, 0.1, 0.2, 0.3, 0.4, 1.0).
Labels follow the grey level; level 0 inside the skull (the two dark ellipses) is told apart from the
background outside the head. Each subject applies its own anisotropic scale/shear and intensity gain;
each of its variants adds a rotation, a shift, a slight blur and Gaussian noise. The label is warped with
nearest-neighbour sampling and the image rebuilt from it, so labels are exact ("procedural").
Images are 200 x 200 px (the 400 px source halved), grey values in the phantom's units (about 0-1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medagent.data.builtin.base import record

PHANTOM_CLASSES = {
    0: "background",
    1: "skull",
    2: "brain",
    3: "ventricles",
    4: "level 0.1 ellipse overlaps",
    5: "level 0.3 ellipses",
    6: "level 0.4 ellipse overlap",
}
#: class -> grey level of the clean phantom
LEVELS = np.array([0.0, 1.0, 0.2, 0.0, 0.1, 0.3, 0.4], dtype=np.float32)
SIZE = 200
N_SUBJECTS = 10
N_VARIANTS = 16
SUBJECT_SPLITS = ("train",) * 6 + ("val",) * 2 + ("test",) * 2
SPACING = (1.0, 1.0)  # nominal: the phantom has no physical size


def phantom_label() -> np.ndarray:
    """(400, 400) uint8 class map of scikit-image's Shepp-Logan phantom (see `PHANTOM_CLASSES`)."""
    from scipy import ndimage as ndi
    from skimage.data import shepp_logan_phantom

    ph = shepp_logan_phantom()
    q = np.round(ph * 10).astype(int)  # 0, 1, 2, 3, 4, 10 (the PNG stores 0.098 and 0.298)
    label = np.zeros(ph.shape, np.uint8)
    for cls, lev in ((1, 10), (2, 2), (4, 1), (5, 3), (6, 4)):
        label[q == lev] = cls
    zero, n = ndi.label(q == 0)
    outside = {int(v) for v in np.concatenate([zero[0], zero[-1], zero[:, 0], zero[:, -1]]) if v}
    inside = (zero > 0) & ~np.isin(zero, list(outside))
    label[inside] = 3
    return label


def build_phantom(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Derive the `phantom` dataset: N_SUBJECTS x N_VARIANTS seeded variants."""
    from scipy import ndimage as ndi
    from skimage.transform import AffineTransform, warp

    base = phantom_label()
    src = base.shape[0]
    rng = np.random.default_rng([seed, 1001])
    arrays: dict[str, np.ndarray] = {}
    records = []
    k = 0
    for s in range(N_SUBJECTS):
        scale = rng.uniform(0.8, 1.05, size=2)
        shear = rng.uniform(-0.15, 0.15)
        gain = rng.uniform(0.85, 1.15)
        for v in range(N_VARIANTS):
            rot = np.deg2rad(rng.uniform(-30, 30))
            shift = rng.uniform(-8, 8, size=2)
            noise = rng.uniform(0.01, 0.05)
            blur = rng.uniform(0.0, 1.0)
            # output pixel -> centred coords -> inverse of (scale, shear, rotation) -> source pixel
            c_out = (SIZE - 1) / 2
            c_src = (src - 1) / 2
            fwd = (
                AffineTransform(translation=(-c_src, -c_src))
                + AffineTransform(scale=tuple(scale), shear=shear, rotation=rot)
                + AffineTransform(scale=SIZE / src)
                + AffineTransform(translation=(c_out + shift[0], c_out + shift[1]))
            )
            label = warp(base, fwd.inverse, output_shape=(SIZE, SIZE), order=0, preserve_range=True, mode="constant", cval=0).astype(np.uint8)
            image = LEVELS[label] * gain
            if blur > 0.05:
                image = ndi.gaussian_filter(image, blur)
            image = (image + rng.normal(0.0, noise, image.shape)).astype(np.float32)
            arrays[f"image_{k}"] = image[None].astype(np.float16)  # halves the cache; noise >> fp16 step
            arrays[f"label_{k}"] = label
            records.append(
                record(
                    f"phantom_s{s}_v{v:02d}", f"phantom-{s}", SUBJECT_SPLITS[s], SPACING, None,
                    seed=seed, scale=scale.tolist(), shear=float(shear), rotation_deg=float(np.rad2deg(rot)),
                    noise_sigma=float(noise), blur_sigma=float(blur), gain=float(gain), downsampled_from=[src, src],
                )
            )
            k += 1
    return arrays, {"cases": records}
