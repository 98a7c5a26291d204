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

from medagent.data.intensity import IntensityConfig
from medagent.errors import ConfigError
from medagent.tools.sam.predictor import EmbeddingCache, content_key
from medagent.tools.sam.preprocess import Preprocessing, boxes_to_input, coords_to_input, image_to_rgb01, prepare_input


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


class Sam2PredictorCached:
    """A `sam2` `SAM2Base` with medagent preprocessing and an embedding cache.

    Args:
        model: a `sam2.modeling.sam2_base.SAM2Base` (eval mode is set here).
        preprocessing: the checkpoint's `Preprocessing` (its image_size must be the model's).
        cache: an `EmbeddingCache` (a fresh default one when None).
        intensity: intensity settings for `medagent.data.intensity.normalize`.
        device: torch device string.
    """

    def __init__(self, model: torch.nn.Module, preprocessing: Preprocessing, cache: EmbeddingCache | None = None,
                 intensity: IntensityConfig | None = None, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.preprocessing = preprocessing
        self.cache = cache if cache is not None else EmbeddingCache()
        self.intensity = intensity
        self.device = torch.device(device)
        size = int(model.image_size)
        if size != preprocessing.image_size:
            raise ConfigError(f"preprocessing image_size {preprocessing.image_size} differs from the SAM 2 model's {size}")
        if preprocessing.keep_aspect_ratio:
            raise ConfigError("SAM 2 preprocessing resizes to S x S (keep_aspect_ratio=False), as SAM2Transforms does")

    @property
    def low_res_size(self) -> int:
        """Side L of the low-res logits / mask input (S / 4)."""
        return int(self.model.sam_prompt_encoder.mask_input_size[0])

    @torch.no_grad()
    def embed(self, image: np.ndarray, modality: str) -> tuple[Sam2Embedding, bool]:
        """Embedding of a (C, H, W) image, from the cache when possible. Returns (embedding, cache_hit)."""
        key = content_key(image, modality, self.intensity, self.preprocessing)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, True
        rgb = image_to_rgb01(image, modality, self.intensity)
        x = prepare_input(rgb, self.preprocessing).to(self.device)
        backbone_out = self.model.forward_image(x)
        _, feats, _, sizes = self.model._prepare_backbone_features(backbone_out)
        if self.model.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + self.model.no_mem_embed
        maps = [f.permute(1, 2, 0).reshape(1, -1, h, w) for f, (h, w) in zip(feats, sizes)]
        emb = Sam2Embedding(image_embed=maps[-1], high_res=tuple(maps[:-1]),
                            original_size=(int(image.shape[-2]), int(image.shape[-1])))
        self.cache.put(key, emb)
        return emb, False

    @torch.no_grad()
    def predict(
        self,
        emb: Sam2Embedding,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode prompts on one embedding, every prompt set in one decoder call.

        Args:
            emb: the image embedding.
            boxes: (N, 4) float [x0, y0, x1, y1] original pixels, or None.
            points: (N, P, 2) float [x, y] original pixels, or None.
            point_labels: (N, P) 1 positive / 0 negative, with `points`.
            mask_logits: (N, 1, L, L) previous low-res logits, or None.
            multimask: return the decoder's 3 candidate masks per prompt set instead of 1.

        Returns:
            (mask logits (N, K, H, W) on the original grid, scores (N, K) predicted IoU, low_res (N, K, L, L)
            clamped to [-32, 32]), K = 3 with multimask else 1.
        """
        pre, dev = self.preprocessing, self.device
        coords = labels = None
        if boxes is not None:
            coords = torch.as_tensor(boxes_to_input(boxes, emb.original_size, pre), device=dev).reshape(-1, 2, 2)
            labels = torch.tensor([[2, 3]], dtype=torch.int32, device=dev).repeat(coords.shape[0], 1)
        if points is not None:
            pts = torch.as_tensor(coords_to_input(points, emb.original_size, pre), device=dev)
            lab = torch.as_tensor(np.asarray(point_labels), dtype=torch.int32, device=dev)
            coords = pts if coords is None else torch.cat([coords, pts], dim=1)
            labels = lab if labels is None else torch.cat([labels, lab], dim=1)
        mask_t = None if mask_logits is None else torch.as_tensor(mask_logits, dtype=torch.float32, device=dev)
        encoder = self.model.sam_prompt_encoder
        sparse, dense = encoder(points=None if coords is None else (coords, labels), boxes=None, masks=mask_t)
        low_res, scores, _, _ = self.model.sam_mask_decoder(
            image_embeddings=emb.image_embed,
            image_pe=encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=bool(multimask),
            repeat_image=sparse.shape[0] > 1,
            high_res_features=list(emb.high_res),
        )
        full = F.interpolate(low_res, size=tuple(emb.original_size), mode="bilinear", align_corners=False)
        return full, scores, torch.clamp(low_res, -32.0, 32.0)
