"""The tools that ship with medagent, as a plain table (segment-anything's `sam_model_registry` style): each
entry names the module that builds it, imported on first use, so reading the table imports no torch.
`medagent.tools.registry` starts from this table; users add their own with `register_tool`."""

from medagent.tools.spec import ToolKind, ToolSpec

BUILTIN_TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        name="otsu",
        kind=ToolKind.AUTOMATIC,
        summary="Intensity baseline: multi-Otsu thresholds (k-means fallback), classes ordered by mean intensity. The floor of bench tables.",
        module="medagent.tools.intensity_baseline",
    ),
    ToolSpec(
        name="unet",
        kind=ToolKind.AUTOMATIC,
        summary="Plain 2D UNet (batch norm) trained with intensity augmentation; shipped for mni-tissue, mni-lesion, nuclei, ct-phantom (dataset=...).",
        module="medagent.tools.segmenters",
        builder="build_unet",
        weights="unet-mni-tissue",
    ),
    ToolSpec(
        name="ifunet",
        kind=ToolKind.AUTOMATIC,
        summary="IF-UNet: intuitionistic fuzzy input maps (membership, Sugeno non-membership, hesitation) into the same UNet.",
        module="medagent.tools.segmenters",
        builder="build_ifunet",
        weights="ifunet-mni-tissue",
    ),
    ToolSpec(
        name="allukan",
        kind=ToolKind.AUTOMATIC,
        summary="ALL U-KAN: U-shaped network of KA layers only (SaKAN shared activation, Grad-Free Spline, KAonv).",
        module="medagent.tools.segmenters",
        builder="build_allukan",
        weights="allukan-mni-tissue",
    ),
    ToolSpec(
        name="sam",
        kind=ToolKind.PROMPTABLE,
        summary="Segment Anything: box / points / previous-mask prompts, batched boxes, embedding cache; shipped tiny SAM or an official SAM / MedSAM .pth (checkpoint=PATH).",
        module="medagent.tools.sam.tool",
        weights="sam-tiny",
    ),
    ToolSpec(
        name="sam2",
        kind=ToolKind.PROMPTABLE,
        summary="SAM 2.1 / MedSAM2 (Meta's sam2 package: pip install 'medagent[sam2]'): the sam tool's prompts, sessions and embedding cache; no shipped weights: checkpoint=PATH to a sam2.1_hiera_*.pt or MedSAM2 .pt.",
        module="medagent.tools.sam2.tool",
    ),

    # -- few-shot (medagent.tools.cps; SAM from the shipped tiny weights or checkpoint=PATH) --
    ToolSpec(
        name="cps",
        kind=ToolKind.FEW_SHOT,
        summary="CPS few-shot: dense reference matching, points sparsified at a density chosen on the references (leave-one-out / augmented view), SAM prompted with them.",
        module="medagent.tools.cps",
        weights="sam-tiny",
    ),
    ToolSpec(
        name="dense-points",
        kind=ToolKind.FEW_SHOT,
        summary="Few-shot baseline (GF-SAM style): every dense matched point a single-point SAM prompt, masks filtered by similarity and merged.",
        module="medagent.tools.cps",
        builder="build_dense_points",
        weights="sam-tiny",
    ),
    ToolSpec(
        name="single-point",
        kind=ToolKind.FEW_SHOT,
        summary="Few-shot baseline (PerSAM style): one positive and one negative point from the reference-prototype similarity, one SAM prompt.",
        module="medagent.tools.cps",
        builder="build_single_point",
        weights="sam-tiny",
    ),
    ToolSpec(
        name="refine",
        kind=ToolKind.REFINER,
        summary="Discrete-diffusion contour refiner: image + coarse binary mask -> refined mask, contour map and closed polygons in a few steps.",
        module="medagent.tools.refiner.tool",
        weights="refine-tiny",
    ),

    # -- continual test-time adaptation (medagent.tools.tta; source models ctta-source-<dataset>) --
    ToolSpec(
        name="noadapt",
        kind=ToolKind.ADAPTIVE,
        summary="CTTA reference: the frozen clean-centre source UNet, unadapted (dataset=... picks ctta-source-<dataset>).",
        module="medagent.tools.tta.noadapt",
        weights="ctta-source-mni-tissue",
    ),
    ToolSpec(
        name="tent",
        kind=ToolKind.ADAPTIVE,
        summary="Tent: online entropy minimisation of the BN affine parameters with image statistics, batch 1.",
        module="medagent.tools.tta.tent",
        weights="ctta-source-mni-tissue",
    ),
    ToolSpec(
        name="cotta",
        kind=ToolKind.ADAPTIVE,
        summary="CoTTA: EMA teacher, augmentation-averaged pseudo-labels under a confidence threshold, stochastic restore.",
        module="medagent.tools.tta.cotta",
        weights="ctta-source-mni-tissue",
    ),
    ToolSpec(
        name="vptta",
        kind=ToolKind.ADAPTIVE,
        summary="VPTTA: frozen source, Fourier low-frequency prompt per image, warm-up BN statistics, memory bank.",
        module="medagent.tools.tta.vptta",
        weights="ctta-source-mni-tissue",
    ),
    ToolSpec(
        name="mgipt",
        kind=ToolKind.ADAPTIVE,
        summary="MGIPT: multi-scale global prompts (EMA teachers) + adaptive-scale instance prompt, mixed BN inference, confidence ensemble.",
        module="medagent.tools.tta.mgipt",
        weights="ctta-source-mni-tissue",
    ),
)
