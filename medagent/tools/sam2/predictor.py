"""Embed once, prompt many, for SAM 2: the image encoder runs once per image, prompts reuse its features.

The same `EmbeddingCache` and cache key as the `sam` tool (`medagent.tools.sam.predictor`): a SHA-1 of the
image bytes, shape, dtype, modality and intensity settings plus the preprocessing key. A SAM 2 embedding is
the decoder's image embedding (256 x S/16 x S/16) plus its two high-resolution feature maps (32 x S/4 and
64 x S/8, already projected by the decoder's `conv_s0` / `conv_s1`), 16 MiB at 1024 px, 4 MiB at 512 px.

Decoding follows `sam2.SAM2ImagePredictor._predict`: the box enters as two corner points (labels 2, 3) placed
before the clicks, the prompt encoder gets no separate box, the decoder gets the high-resolution features,
and the low-res logits given back (for the next prompt's mask input) are clamped to [-32, 32]. Logits on the
image grid are one bilinear resize of the low-res map (the input frame covers the whole image: SAM 2 resizes
to S x S without keeping the aspect ratio). Unlike `SAM2ImagePredictor`, the feature-map sizes come from the
model's own image size (that class hard-codes 1024 px, which a 512 px MedSAM2 does not have).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medagent.errors import ConfigError
from medagent.tools.sam.predictor import CachedPredictor


@dataclass
class Sam2Embedding:
    """One encoded image.

    Attributes:
        image_embed: (1, 256, G, G) the decoder's image embedding (no-memory embedding added), G = S / 16.
        high_res: the (1, 32, 4G, 4G) and (1, 64, 2G, 2G) high-resolution features.
        original_size: (H, W) of the image as the case holds it.
    """

    image_embed: torch.Tensor
    high_res: tuple[torch.Tensor, ...]
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement() for t in (self.image_embed, *self.high_res))


class Sam2PredictorCached(CachedPredictor):
    """A `sam2` `SAM2Base` with medagent preprocessing and an embedding cache (`CachedPredictor`).

    The box enters as two corner points before the clicks; low-res logits come back clamped to [-32, 32].
    """

    def _check(self) -> None:
        size = int(self.model.image_size)
        if size != self.preprocessing.image_size:
            raise ConfigError(f"preprocessing image_size {self.preprocessing.image_size} differs from the SAM 2 model's {size}")
        if self.preprocessing.keep_aspect_ratio:
            raise ConfigError("SAM 2 preprocessing resizes to S x S (keep_aspect_ratio=False), as SAM2Transforms does")

    @property
    def low_res_size(self) -> int:
        """Side L of the low-res logits / mask input (S / 4)."""
        return int(self.model.sam_prompt_encoder.mask_input_size[0])

    def _encode(self, x: torch.Tensor, original_size: tuple[int, int]) -> Sam2Embedding:
        backbone_out = self.model.forward_image(x)
        _, feats, _, sizes = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        return Sam2Embedding(image_embed=maps[-1], high_res=tuple(maps[:-1]), original_size=original_size)

    def _decode(self, emb: Sam2Embedding, box_t: torch.Tensor | None, pts: tuple[torch.Tensor, torch.Tensor] | None,
                mask_t: torch.Tensor | None, boxes: np.ndarray | None, multimask: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dev = self.device
        coords = labels = None
        if box_t is not None:  # corners as points labelled 2 and 3, before the clicks
            coords = box_t.reshape(-1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int32, device=dev).repeat(coords.shape[0], 1)
        if pts is not None:
            clicks, clicks_labels = pts[0], pts[1].to(torch.int32)
            coords = clicks if coords is None else torch.cat([coords, clicks], dim=1)
            labels = clicks_labels if labels is None else torch.cat([labels, clicks_labels], dim=1)
        encoder = self.model.sam_prompt_encoder
        sparse, dense = encoder(points=None if coords is None else (coords, labels), boxes=None, masks=mask_t)
        low_res, scores, _, _ = self.model.sam_mask_decoder(
            image_embeddings=emb.image_embed,
            image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
            repeat_image=sparse.shape[0] > 1,
            high_res_features=list(emb.high_res),
        )
        full = F.interpolate(low_res, size=tuple(emb.original_size), mode="bilinear", align_corners=False)
        return full, scores, torch.clamp(low_res, -32.0, 32.0)
