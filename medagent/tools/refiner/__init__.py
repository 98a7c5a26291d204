"""Discrete-diffusion contour refiner (METHODS.md section 4; docs/refiner.md).

Modules, one job each:
    representation  band state, contour map, polygons, clean-up
    diffusion       forward process (x_T = coarse), reverse sampling
    network         the denoiser: small UNet with self-attention at the bottleneck
    perturb         coarse masks made from ground truth
    synthetic       procedural blob images (tests, a share of training data)
    tool            the `refine` Tool, its config and the registry builder
"""

from medagent.tools.refiner.tool import RefineTool, RefinerConfig, build

__all__ = ["RefineTool", "RefinerConfig", "build"]
