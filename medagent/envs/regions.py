"""The regions of a mask as text a policy can read and act on: each connected region's box in the 0-999
frame and its area in pixels of the image the policy sees, ranked the way instructions rank targets (centroid
nearest the top-left corner first, as `medagent.envs.targets` orders instances).

    describe_regions(mask, max_regions=3, min_area=8)
    -> " in 2 regions, nearest the top-left first: 1: [102, 240, 187, 330] 148 px; 2: [640, 512, 701, 580] 61 px"

With `with_size_ranks` (`EnvConfig.region_size_ranks`) each item also carries its rank by area among the
listed regions: "1: [102, 240, 187, 330] 148 px, size rank 1".

Regions are numbered by that rank, so "the 2nd nearest the top-left corner (2 of 3 ...)" of an instruction
meets the region labelled "2:" (a small policy matches the label instead of counting list items).

A policy that cannot regress boxes from pixels can copy one of these boxes into `add_bbox` to isolate the
region it wants; a large VLM reads the same text. Areas are integer pixel counts rather than percentages so
that, at the tiny policy's 128 px, an area below 1000 is one token (every integer 0-999 is, see
`medagent.agents.vlm`): comparing two regions' sizes is comparing two tokens, not digits after a point.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from medagent.envs.coords import convert_coords


def region_boxes(mask: np.ndarray, min_area: int = 8) -> list[tuple[list[int], int]]:
    """Connected regions of a bool (H, W) mask with >= `min_area` pixels, nearest the top-left first:
    [(box [x1, y1, x2, y2] in the 0-999 frame, area in pixels)]."""
    labels, n = ndimage.label(mask)
    if n == 0:
        return []
    h, w = mask.shape
    found = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        region = labels[sl] == k
        area = int(region.sum())
        if area < min_area:
            continue
        ys, xs = np.nonzero(region)
        ys, xs = ys + sl[0].start, xs + sl[1].start
        box = convert_coords([xs.min(), ys.min(), xs.max(), ys.max()], w, h, to="frame").tolist()
        found.append((float(np.hypot(ys.mean(), xs.mean())), box, area))
    found.sort(key=lambda r: r[0])
    return [(box, area) for _, box, area in found]


def size_ranks(regions: list[tuple[list[int], int]]) -> list[int]:
    """Each region's rank by area among `regions` (1 = largest; ties keep the listed order), in listed order."""
    order = sorted(range(len(regions)), key=lambda i: -regions[i][1])
    ranks = [0] * len(regions)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def describe_regions(mask: np.ndarray, max_regions: int = 3, min_area: int = 8, with_size_ranks: bool = False) -> str:
    """Text listing the first `max_regions` regions (module docstring); "" when there are none or max_regions is 0.

    `with_size_ranks` adds each listed region's rank by area among the listed ones ("148 px, size rank 1"), so
    "the n largest" is read off small labels instead of compared across area tokens.
    """
    if max_regions <= 0:
        return ""
    regions = region_boxes(mask, min_area)
    if not regions:
        return ""
    shown = regions[:max_regions]
    ranks = size_ranks(shown) if with_size_ranks else [None] * len(shown)
    items = "; ".join(f"{k}: [{b[0]}, {b[1]}, {b[2]}, {b[3]}] {area} px" + (f", size rank {r}" if r else "")
                      for k, ((b, area), r) in enumerate(zip(shown, ranks), start=1))
    if len(regions) == 1:
        return f" in 1 region: {items}"
    head = f" in {len(regions)} regions, nearest the top-left first"
    if len(regions) > len(shown):
        head += f" (the first {len(shown)})"
    return f"{head}: {items}"
