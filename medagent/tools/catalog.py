"""The tools that ship with medagent. Each line registers one; the module is imported on first use."""

from medagent.tools.base import ToolKind
from medagent.tools.registry import ToolSpec, register_tool

register_tool(ToolSpec(
    name="otsu",
    kind=ToolKind.AUTOMATIC,
    summary="Intensity baseline: multi-Otsu thresholds (k-means fallback), classes ordered by mean intensity. The floor of bench tables.",
    module="medagent.tools.intensity_baseline",
))

register_tool(ToolSpec(
    name="unet",
    kind=ToolKind.AUTOMATIC,
    summary="Plain 2D UNet (batch norm) trained with intensity augmentation; shipped for mni-tissue, mni-lesion, nuclei, ct-phantom (dataset=...).",
    module="medagent.tools.segmenters",
    builder="build_unet",
    weights="unet-mni-tissue",
))
register_tool(ToolSpec(
    name="ifunet",
    kind=ToolKind.AUTOMATIC,
    summary="IF-UNet: intuitionistic fuzzy input maps (membership, Sugeno non-membership, hesitation) into the same UNet.",
    module="medagent.tools.segmenters",
    builder="build_ifunet",
    weights="ifunet-mni-tissue",
))
register_tool(ToolSpec(
    name="allukan",
    kind=ToolKind.AUTOMATIC,
    summary="ALL U-KAN: U-shaped network of KA layers only (SaKAN shared activation, Grad-Free Spline, KAonv).",
    module="medagent.tools.segmenters",
    builder="build_allukan",
    weights="allukan-mni-tissue",
))

register_tool(ToolSpec(
    name="sam",
    kind=ToolKind.PROMPTABLE,
    summary="Segment Anything: box / points / previous-mask prompts, batched boxes, embedding cache; shipped tiny SAM or an official SAM / MedSAM .pth (checkpoint=PATH).",
    module="medagent.tools.sam.tool",
    weights="sam-tiny",
))

register_tool(ToolSpec(
    name="refine",
    kind=ToolKind.REFINER,
    summary="Discrete-diffusion contour refiner: image + coarse binary mask -> refined mask, contour map and closed polygons in a few steps.",
    module="medagent.tools.refiner.tool",
    weights="refine-tiny",
))
