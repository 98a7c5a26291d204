"""SAM architectures: the official ViT-B/L/H builds and medagent's tiny configuration.

Every model is a `segment_anything.modeling.Sam` built from `SamArchConfig`, so the official
checkpoints (and MedSAM's ViT-B) load into the same class that the tiny embedded model uses. The tiny
configuration shrinks both ends: a small ViT encoder at 256 px and a mask decoder whose transformer
width (= the prompt embedding width) and MLP are a fraction of SAM's (SAM's decoder alone is ~4 M
parameters).

Official `.pth` files are read with `torch.load(weights_only=True)` only; the architecture is chosen
from the checkpoint's patch-embedding width unless the caller names it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from medagent.errors import CheckpointError, ConfigError
from medagent.tools.checkpoint import load_state_strict


@dataclass(frozen=True)
class SamArchConfig:
    """Shape of a SAM model (encoder, prompt encoder, mask decoder).

    Attributes:
        image_size: side of the square encoder input, pixels.
        patch_size: ViT patch side, pixels; the embedding grid is image_size // patch_size.
        encoder_embed_dim / encoder_depth / encoder_num_heads: ViT width, blocks, heads.
        encoder_global_attn_indexes: blocks with global attention (the rest use windows).
        window_size: side of the attention window, in patches.
        prompt_embed_dim: width of the image embedding, the prompt tokens and the decoder transformer
            (one number: SAM's prompt encoder, encoder neck and decoder must agree).
        decoder_depth / decoder_mlp_dim / decoder_num_heads: the two-way transformer of the decoder.
        iou_head_hidden_dim: hidden width of the IoU-prediction MLP.
        mask_in_chans: channels of the mask-input downscaler in the prompt encoder.
    """

    image_size: int = 1024
    patch_size: int = 16
    encoder_embed_dim: int = 768
    encoder_depth: int = 12
    encoder_num_heads: int = 12
    encoder_global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ConfigError(f"encoder_embed_dim {self.encoder_embed_dim} not divisible by encoder_num_heads {self.encoder_num_heads}")
        if self.prompt_embed_dim % self.decoder_num_heads or self.prompt_embed_dim % 8:
            raise ConfigError(
                f"prompt_embed_dim {self.prompt_embed_dim} must be divisible by decoder_num_heads "
                f"{self.decoder_num_heads} and by 8 (the decoder upscaler uses dim // 8 channels)"
            )
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise ConfigError(f"encoder_global_attn_indexes {self.encoder_global_attn_indexes} outside 0..{self.encoder_depth - 1}")

    @property
    def embedding_size(self) -> int:
        """Side of the image-embedding grid (patches)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's low-resolution logits and of the mask input (4x the embedding grid)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SamArchConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown SAM architecture field(s) {sorted(unknown)}")
        data = dict(data)
        if "encoder_global_attn_indexes" in data:
            data["encoder_global_attn_indexes"] = tuple(int(i) for i in data["encoder_global_attn_indexes"])
        return cls(**data)


#: The published SAM image encoders (segment_anything/build_sam.py); prompt encoder and decoder are shared.
OFFICIAL_ARCHS: dict[str, SamArchConfig] = {
    "vit_b": SamArchConfig(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=12, encoder_global_attn_indexes=(2, 5, 8, 11)),
    "vit_l": SamArchConfig(encoder_embed_dim=1024, encoder_depth=24, encoder_num_heads=16, encoder_global_attn_indexes=(5, 11, 17, 23)),
    "vit_h": SamArchConfig(encoder_embed_dim=1280, encoder_depth=32, encoder_num_heads=16, encoder_global_attn_indexes=(7, 15, 23, 31)),
}

#: medagent's embedded default: 256 px, patch 16 (a 16x16 embedding grid, 64x64 low-res logits), ViT
#: width 128 x 4 blocks (windowed 8x8 attention, global in blocks 1 and 3), and a decoder shrunk to
#: width 96 / MLP 384 (about 0.43 M parameters instead of SAM's ~4 M). The builtin images are small
#: (64-256 px), so 256 px keeps them at or above native resolution; patch 8 was tried and costs ~4x
#: more CPU time per training step for the same width.
TINY_ARCH = SamArchConfig(
    image_size=256,
    patch_size=16,
    encoder_embed_dim=128,
    encoder_depth=4,
    encoder_num_heads=4,
    encoder_global_attn_indexes=(1, 3),
    window_size=8,
    prompt_embed_dim=96,
    decoder_depth=2,
    decoder_mlp_dim=384,
    decoder_num_heads=4,
    iou_head_hidden_dim=96,
    mask_in_chans=16,
)


def build_sam(arch: SamArchConfig) -> "torch.nn.Module":
    """A randomly initialised `segment_anything` `Sam` with architecture `arch`, in eval mode.

    Pixel normalisation is done by medagent's `Preprocessing`, not by `Sam.preprocess`, so the model's
    pixel_mean/std buffers are left at SAM's defaults and never used here.
    """
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch.embedding_size
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=arch.image_size,
            patch_size=arch.patch_size,
            embed_dim=arch.encoder_embed_dim,
            depth=arch.encoder_depth,
            num_heads=arch.encoder_num_heads,
            mlp_ratio=4.0,
            out_chans=arch.prompt_embed_dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=arch.window_size,
            global_attn_indexes=tuple(arch.encoder_global_attn_indexes),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.image_size, arch.image_size),
            mask_in_chans=arch.mask_in_chans,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=arch.decoder_depth,
                embedding_dim=arch.prompt_embed_dim,
                mlp_dim=arch.decoder_mlp_dim,
                num_heads=arch.decoder_num_heads,
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
    )
    sam.eval()
    return sam


def count_parameters(model: "torch.nn.Module") -> dict[str, int]:
    """Parameter counts of the whole model and of its three parts."""
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {
        "total": n(model),
        "image_encoder": n(model.image_encoder),
        "prompt_encoder": n(model.prompt_encoder),
        "mask_decoder": n(model.mask_decoder),
    }


_PATCH_KEY = "image_encoder.patch_embed.proj.weight"
_WIDTH_TO_TYPE = {768: "vit_b", 1024: "vit_l", 1280: "vit_h"}


def read_official_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an official SAM / MedSAM `.pth` as a flat state dict (tensors only, `weights_only=True`).

    A few re-exports wrap the weights in {"model": ...} or {"state_dict": ...}; those are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"SAM checkpoint {path} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or one that needs arbitrary unpickling
        raise CheckpointError(f"cannot read SAM checkpoint {path} with torch.load(weights_only=True): {exc}") from exc
    for wrapper in ("model", "state_dict"):
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict) and _PATCH_KEY not in state:
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"SAM checkpoint {path} is not a state dict of tensors")
    return state


def detect_model_type(state: dict[str, torch.Tensor], path: str | Path = "checkpoint") -> str:
    """'vit_b' / 'vit_l' / 'vit_h' from the patch-embedding width of an official state dict."""
    if _PATCH_KEY not in state:
        raise CheckpointError(
            f"{path}: no {_PATCH_KEY!r} key, so this is not a SAM image-encoder checkpoint "
            f"(first keys: {list(state)[:5]})"
        )
    width = int(state[_PATCH_KEY].shape[0])
    if width not in _WIDTH_TO_TYPE:
        raise CheckpointError(f"{path}: patch-embedding width {width} matches no official SAM (768, 1024, 1280)")
    return _WIDTH_TO_TYPE[width]


def load_state_dict_strict(model: "torch.nn.Module", state: dict[str, torch.Tensor], path: str | Path) -> None:
    """`load_state_dict` that turns missing/unexpected keys and shape mismatches into a CheckpointError."""
    load_state_strict(model, state, path, what="this SAM architecture")


def load_official(path: str | Path, model_type: str | None = None) -> tuple["torch.nn.Module", str]:
    """Build the official architecture for `path` and load its weights. Returns (model, model_type)."""
    state = read_official_state_dict(path)
    detected = detect_model_type(state, path) if model_type is None else model_type
    if detected not in OFFICIAL_ARCHS:
        raise ConfigError(f"model_type {detected!r} is not one of {sorted(OFFICIAL_ARCHS)}")
    model = build_sam(OFFICIAL_ARCHS[detected])
    load_state_dict_strict(model, state, path)
    return model, detected


def decode_per_prompt(
    decoder: "torch.nn.Module",
    image_embeddings: torch.Tensor,
    image_pe: torch.Tensor,
    sparse: torch.Tensor,
    dense: torch.Tensor,
    multimask: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`MaskDecoder.forward` for a batch where prompt set i has its own image embedding.

    segment_anything's decoder repeats one image embedding for every prompt set; training on several
    images at once needs one embedding per prompt set. Same computation, same modules:
    image_embeddings / dense (N, C, G, G), image_pe (1, C, G, G), sparse (N, T, C).
    Returns low-res logits (N, K, 4G, 4G) and predicted IoU (N, K), K = 3 with multimask else 1.
    """
    n = sparse.shape[0]
    out_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([out_tokens.unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
    src = image_embeddings + dense
    pos = image_pe.expand(n, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    iou_out = hs[:, 0, :]
    mask_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    up = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    hyper = torch.stack([mlp(mask_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)
    b, c, h, w = up.shape
    masks = (hyper @ up.view(b, c, h * w)).view(b, -1, h, w)
    iou = decoder.iou_prediction_head(iou_out)
    sl = slice(1, None) if multimask else slice(0, 1)
    return masks[:, sl], iou[:, sl]
