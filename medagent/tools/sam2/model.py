"""SAM 2 / SAM 2.1 / MedSAM2 models: the architectures, their preprocessing, and loading official checkpoints.

The networks are Meta's (the `sam2` package, `pip install 'medagent[sam2]'`), built with the package's own
builder (`sam2.build_sam.build_sam2`, a hydra config shipped inside the package) with no weights, then loaded
here: official `.pt` files are read with `torch.load(weights_only=True)` only (a pickle holding anything but
tensors and plain containers is refused) and loaded strictly, naming every mismatched key. The package's own
loader also uses `weights_only=True` but reports a mismatch as a bare `RuntimeError()` after logging the keys.

Architectures (`SAM2_CONFIGS`): the package's config files, chosen from the weights when not given:
the trunk width (`image_encoder.trunk.patch_embed.proj.weight`) and block count tell tiny / small / base+ /
large apart, and SAM 2.1 files hold `no_obj_embed_spatial`, which SAM 2.0 files lack.

Preprocessing (`SAM2_PRESETS`, travelling with the checkpoint like SAM's `Preprocessing`):
- ``sam2``: SAM 2 / 2.1 (`sam2.utils.transforms.SAM2Transforms`): the image resized to 1024 x 1024 (aspect
  not kept, no padding), values in [0, 1], ImageNet mean/std.
- ``medsam2``: MedSAM2 (bowang-lab/MedSAM2, a SAM 2.1 hiera-tiny fine-tune built from its
  `sam2.1_hiera_t512.yaml`: image_size 512): the image resized to 512 x 512 (aspect not kept), values in
  [0, 1], ImageNet mean/std. MedSAM2's scripts window CT, min-max the windowed *volume* to 0-255 and divide
  by 255; here `medagent.data.intensity.normalize` (CT window, MR percentiles) gives the [0, 1] values, with
  no per-slice min-max (it would stretch each slice differently from MedSAM2's per-volume scaling).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from medagent.errors import CheckpointError, ConfigError, ToolUnavailable
from medagent.tools.checkpoint import load_state_strict
from medagent.tools.sam.preprocess import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Preprocessing per checkpoint family (module docstring).
SAM2_PRESETS: dict[str, Preprocessing] = {
    "sam2": Preprocessing("sam2", 1024, keep_aspect_ratio=False, value_scale=1.0, minmax=False,
                          pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD),
    "medsam2": Preprocessing("medsam2", 512, keep_aspect_ratio=False, value_scale=1.0, minmax=False,
                             pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD),
}

#: Architecture name -> the `sam2` package's config file (hydra config name).
SAM2_CONFIGS: dict[str, str] = {
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
}

#: (trunk width, trunk blocks) -> the size suffix of the config name.
_TRUNKS = {(96, 12): "t", (96, 16): "s", (112, 24): "b+", (144, 48): "l"}

#: The smallest architecture (MedSAM2's base).
SMALLEST = "sam2.1_hiera_t"

INSTALL_HINT = "pip install 'medagent[sam2]' (Meta's SAM 2 package, PyPI `sam2`)"


def require_sam2() -> None:
    """ToolUnavailable naming the extra when the `sam2` package is not installed."""
    try:
        import sam2  # noqa: F401
    except ImportError as exc:
        raise ToolUnavailable(f"tool 'sam2' needs the package 'sam2', which is not installed: {INSTALL_HINT}") from exc


def preset(checkpoint_type: str, image_size: int | None = None) -> Preprocessing:
    """The preprocessing of a checkpoint family, at `image_size` when given (a fine-tune at another size)."""
    if checkpoint_type not in SAM2_PRESETS:
        raise ConfigError(f"checkpoint_type must be one of {sorted(SAM2_PRESETS)}, got {checkpoint_type!r}")
    pre = SAM2_PRESETS[checkpoint_type]
    if image_size is not None and image_size != pre.image_size:
        if image_size <= 0 or image_size % 32:
            raise ConfigError(f"SAM 2 image_size must be a positive multiple of 32 (the trunk's stride), got {image_size}")
        pre = dataclasses.replace(pre, image_size=int(image_size))
    return pre


def build_sam2_model(config: str = SMALLEST, image_size: int = 1024, device: str = "cpu") -> torch.nn.Module:
    """An untrained `sam2.modeling.sam2_base.SAM2Base` of architecture `config` (a `SAM2_CONFIGS` name) for
    `image_size` px input, built by the package's own `build_sam2` from its hydra config (eval mode).

    Besides `image_size`, the memory attention's RoPE grid is set to image_size / 16 as MedSAM2's 512 px config
    does (only video tracking uses it). The package's image-predictor post-processing options are kept
    (`apply_postprocessing=True`, its default: multimask fallback when a single mask is unstable).
    """
    if config not in SAM2_CONFIGS:
        raise ConfigError(f"SAM 2 config must be one of {sorted(SAM2_CONFIGS)}, got {config!r}")
    require_sam2()
    from sam2.build_sam import build_sam2

    grid = image_size // 16
    overrides = [
        f"++model.image_size={int(image_size)}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{grid},{grid}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{grid},{grid}]",
    ]
    try:
        model = build_sam2(SAM2_CONFIGS[config], ckpt_path=None, device=device, hydra_overrides_extra=overrides)
    except Exception as exc:  # noqa: BLE001 - hydra's errors (config not found, global state) become one line
        raise ToolUnavailable(f"tool 'sam2': the sam2 package could not build {config!r} from its config "
                              f"{SAM2_CONFIGS[config]}: {type(exc).__name__}: {exc}") from exc
    return model.eval()


def read_sam2_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The model state dict of an official SAM 2 / 2.1 or MedSAM2 `.pt` ({"model": state_dict}; a bare state dict
    is accepted too), read with `torch.load(weights_only=True)`: CheckpointError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such SAM 2 checkpoint file (pass an official sam2.1_hiera_*.pt or a MedSAM2 .pt)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError for refused objects, others for corrupt files
        raise CheckpointError(
            f"{path}: refused or unreadable: SAM 2 checkpoints are read with torch.load(weights_only=True), which loads "
            f"only tensors and plain containers ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
            "re-save the weights as torch.save({'model': model.state_dict()}, path)"
        ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state = obj["model"]
    elif isinstance(obj, dict) and any(str(k).startswith("image_encoder.") for k in obj):
        state = obj
    else:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: not a SAM 2 checkpoint: expected a dict with a 'model' state dict "
                              f"(as Meta's and MedSAM2's .pt files hold), got {keys}")
    bad = sorted(str(k) for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: the 'model' state dict holds non-tensor entries: {', '.join(bad[:6])}")
    return state


def detect_config(state: dict[str, Any], path: str | Path = "checkpoint") -> str:
    """The `SAM2_CONFIGS` name that fits a state dict (trunk width and depth; SAM 2.1 vs 2.0)."""
    key = "image_encoder.trunk.patch_embed.proj.weight"
    if key not in state:
        raise CheckpointError(f"{path}: not a SAM 2 state dict (no {key!r}); pass config=NAME to say the architecture")
    width = int(state[key].shape[0])
    blocks = {k.split(".")[3] for k in state if k.startswith("image_encoder.trunk.blocks.")}
    size = _TRUNKS.get((width, len(blocks)))
    if size is None:
        raise CheckpointError(f"{path}: a Hiera trunk of width {width} with {len(blocks)} blocks is none of SAM 2's "
                              f"tiny/small/base+/large; pass config=NAME (one of {sorted(SAM2_CONFIGS)})")
    version = "sam2.1" if "no_obj_embed_spatial" in state else "sam2"
    return f"{version}_hiera_{size}"


def load_sam2_official(path: str | Path, config: str | None = None, image_size: int = 1024,
                       device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """Build the architecture of an official `.pt` (detected unless `config` is given) for `image_size` px and
    load its weights strictly. Returns (model, config name)."""
    state = read_sam2_checkpoint(path)
    name = detect_config(state, path) if config is None else config
    model = build_sam2_model(name, image_size, device="cpu")
    load_state_strict(model, state, path, what=f"the SAM 2 architecture {name!r}")
    return model.to(device).eval(), name
