"""Fluorescence nuclei (stardist's example image, BSD-3) -> 64 x 64 tiles with instance masks.

Source: `stardist/data/images/img2d.tif` (512 x 512, uint16) and `mask2d.tif` (instance ids), found via
`importlib.util.find_spec("stardist")` without importing stardist (it pulls in TensorFlow-era deps).
Labels are the source's annotations ("expert" as published with stardist).

Regions: the image is cut into four 128 px wide vertical bands, each split into a top and bottom half:
eight 128 x 256 regions of eight tiles each; a region is a subject and goes wholly to one split:
train = band 0 (both halves) + band 1 top, val = band 1 bottom, test = bands 2 and 3 (four regions).
Nuclei cut by a tile border keep a (relabelled) fragment in each tile. No physical pixel size is given in
the source: spacing is a nominal 1.0 per pixel.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import numpy as np

from medagent.data.builtin.base import record
from medagent.errors import DataError

NUCLEI_CLASSES = {0: "background", 1: "nucleus"}
TILE = 64
BAND = 128
SOURCE = "stardist wheel: stardist/data/images/img2d.tif + mask2d.tif"
LICENSE = "BSD-3-Clause (stardist)"


def _split_of(band: int, half: int) -> str:
    if band >= 2:
        return "test"
    if band == 1 and half == 1:
        return "val"
    return "train"


def stardist_paths() -> tuple[str, str]:
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 'nuclei' dataset needs the 'stardist' package (for its data files), which is not installed")
    base = os.path.join(list(spec.submodule_search_locations)[0], "data", "images")
    img, msk = os.path.join(base, "img2d.tif"), os.path.join(base, "mask2d.tif")
    for p in (img, msk):
        if not os.path.exists(p):
            raise DataError(f"stardist data file not found: {p}")
    return img, msk


def build_nuclei(seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Derive the `nuclei` tiles (seed unused: the derivation is deterministic)."""
    import tifffile
    from skimage.segmentation import relabel_sequential

    img_path, msk_path = stardist_paths()
    image = tifffile.imread(img_path)
    mask = tifffile.imread(msk_path)
    if image.shape != mask.shape or image.ndim != 2:
        raise DataError(f"{img_path}: expected matching 2D image and mask, got {image.shape} and {mask.shape}")
    h, w = image.shape
    arrays: dict[str, np.ndarray] = {}
    records = []
    k = 0
    for y in range(0, h - TILE + 1, TILE):
        for x in range(0, w - TILE + 1, TILE):
            band, half = x // BAND, int(y >= h // 2)
            inst = relabel_sequential(mask[y : y + TILE, x : x + TILE].astype(np.int64))[0].astype(np.uint16)
            arrays[f"image_{k}"] = image[None, y : y + TILE, x : x + TILE].astype(np.uint16)
            arrays[f"label_{k}"] = (inst > 0).astype(np.uint8)
            arrays[f"instances_{k}"] = inst
            records.append(
                record(
                    f"nuclei_y{y:03d}_x{x:03d}", f"band{band}-{'top' if half == 0 else 'bottom'}", _split_of(band, half),
                    (1.0, 1.0), None, tile_origin_yx=[y, x], tile_size=TILE, spacing_unit="pixel (nominal)",
                    n_instances=int(inst.max()),
                )
            )
            k += 1
    return arrays, {"cases": records}
