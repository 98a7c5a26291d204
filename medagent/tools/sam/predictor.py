"""Embed once, prompt many: SAM's image encoder runs once per image, prompts reuse the embedding.

`EmbeddingCache` is a bounded LRU keyed by a content hash of the image (bytes, shape, dtype, modality,
intensity settings) plus the checkpoint's preprocessing key, so a k-turn interactive episode pays for
one encoder pass and k cheap decoder passes; a changed image, a changed preprocessing or a different
model (each `SamPredictorCached` has its own cache) never reuses a stale embedding.

`SamPredictorCached.predict` takes prompts in original-image pixels, already validated (see tool.py),
and returns torch tensors; the tool turns them into a `Prediction`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medagent.data.intensity import IntensityConfig
from medagent.errors import ConfigError
from medagent.tools.sam.preprocess import (
    Preprocessing,
    box_edges_to_input,
    box_prior_logits,
    boxes_to_input,
    coords_to_input,
    image_to_rgb01,
    logits_to_image,
    prepare_input,
)


@dataclass
class ImageEmbedding:
    """One encoded image.

    Attributes:
        features: (1, C, G, G) float32 image embedding (G = embedding grid side).
        original_size: (H, W) of the image as the case holds it.
        nbytes: memory the features take, bytes.
    """

    features: torch.Tensor
    original_size: tuple[int, int]

    @property
    def nbytes(self) -> int:
        return self.features.element_size() * self.features.nelement()


class EmbeddingCache:
    """LRU cache of `ImageEmbedding`s bounded by entry count and by bytes.

    Attributes:
        max_entries: most embeddings kept (>= 1; 0 disables caching).
        max_bytes: most bytes of features kept (the newest entry is kept even when it alone is larger).
        hits / misses: counters since creation or `clear()`.
    """

    def __init__(self, max_entries: int = 32, max_bytes: int = 512 * 2**20) -> None:
        if max_entries < 0 or max_bytes < 0:
            raise ConfigError(f"cache bounds must be >= 0, got max_entries={max_entries}, max_bytes={max_bytes}")
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: str) -> bool:
        return key in self._items

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._items.values())

    def get(self, key: str) -> ImageEmbedding | None:
        item = self._items.get(key)
        if item is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return item

    def put(self, key: str, value: ImageEmbedding) -> None:
        if self.max_entries == 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_entries or (len(self._items) > 1 and self.nbytes > self.max_bytes):
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()
        self.hits = 0
        self.misses = 0


def content_key(image: np.ndarray, modality: str, intensity: IntensityConfig | None, pre: Preprocessing) -> str:
    """Cache key: SHA-1 of the image bytes + shape/dtype/modality/intensity + the preprocessing key."""
    h = hashlib.sha1()
    arr = np.ascontiguousarray(image)
    h.update(arr.tobytes())
    h.update(repr((arr.shape, str(arr.dtype), modality, intensity)).encode())
    h.update(pre.key().encode())
    return h.hexdigest()


class CachedPredictor:
    """Embed once, prompt many: what the SAM-family predictors share (SAM here, SAM 2 in `medagent.tools.sam2`).

    A subclass says how its model encodes an image (`_encode`) and decodes prompts on the embedding (`_decode`),
    and checks that the checkpoint's preprocessing fits the model (`_check`); caching, the cache key and the
    argument conventions of `predict` live here once.

    Args:
        model: the model (eval mode is set here).
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
        self._check()

    def _check(self) -> None:
        """Raise `ConfigError` when the preprocessing does not fit the model."""

    @property
    def low_res_size(self) -> int:
        """Side L of the low-res logits / mask input."""
        raise NotImplementedError

    @torch.no_grad()
    def embed(self, image: np.ndarray, modality: str) -> tuple[Any, bool]:
        """Embedding of a (C, H, W) image, from the cache when possible. Returns (embedding, cache_hit)."""
        key = content_key(image, modality, self.intensity, self.preprocessing)
        hit = self.cache.get(key)
        if hit is not None:
            return hit, True
        rgb = image_to_rgb01(image, modality, self.intensity)
        x = prepare_input(rgb, self.preprocessing).to(self.device)
        emb = self._encode(x, (int(image.shape[-2]), int(image.shape[-1])))
        self.cache.put(key, emb)
        return emb, False

    def _encode(self, x: torch.Tensor, original_size: tuple[int, int]) -> Any:
        """The embedding of one prepared (1, 3, S, S) input of an image of `original_size` (H, W)."""
        raise NotImplementedError

    @torch.no_grad()
    def predict(
        self,
        emb: Any,
        boxes: np.ndarray | None = None,
        points: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Decode prompts on one embedding, all prompt sets in one decoder call.

        Args:
            emb: the image embedding (`embed`).
            boxes: (N, 4) float [x0, y0, x1, y1] original pixels, or None.
            points: (N, P, 2) float [x, y] original pixels, or None.
            point_labels: (N, P) 1 positive / 0 negative, with `points`.
            mask_logits: (N, 1, L, L) previous low-res logits, or None (the subclass says what it does then).
            multimask: return the decoder's 3 candidate masks per prompt set instead of 1.

        Returns:
            (mask logits (N, K, H, W) on the original grid, scores (N, K) predicted IoU, low_res (N, K, L, L)),
            K = 3 with multimask else 1.
        """
        pre, dev = self.preprocessing, self.device
        box_t = None if boxes is None else torch.as_tensor(boxes_to_input(boxes, emb.original_size, pre), device=dev)
        pts = None
        if points is not None:
            coords = torch.as_tensor(coords_to_input(points, emb.original_size, pre), device=dev)
            pts = (coords, torch.as_tensor(np.asarray(point_labels), dtype=torch.int64, device=dev))
        mask_t = None if mask_logits is None else torch.as_tensor(mask_logits, dtype=torch.float32, device=dev)
        return self._decode(emb, box_t, pts, mask_t, boxes, bool(multimask))

    def _decode(self, emb: Any, box_t: torch.Tensor | None, pts: tuple[torch.Tensor, torch.Tensor] | None,
                mask_t: torch.Tensor | None, boxes: np.ndarray | None, multimask: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`predict` on tensors in the model's input frame: boxes (N, 4), points ((N, P, 2), labels (N, P)),
        mask logits (N, 1, L, L); `boxes` are the original-pixel boxes (for a box mask prior)."""
        raise NotImplementedError


class SamPredictorCached(CachedPredictor):
    """A `segment_anything` `Sam` with medagent preprocessing and an embedding cache (`CachedPredictor`).

    Without `mask_logits`, boxes and a preprocessing with `box_mask_prior` give the boxes rendered as mask input.
    """

    def _check(self) -> None:
        enc_size = int(self.model.image_encoder.img_size)
        if enc_size != self.preprocessing.image_size:
            raise ConfigError(f"preprocessing image_size {self.preprocessing.image_size} differs from the encoder's {enc_size}")

    @property
    def low_res_size(self) -> int:
        """Side L of the low-res logits / mask input."""
        return int(self.model.prompt_encoder.mask_input_size[0])

    def _encode(self, x: torch.Tensor, original_size: tuple[int, int]) -> ImageEmbedding:
        return ImageEmbedding(features=self.model.image_encoder(x), original_size=original_size)

    def _decode(self, emb: ImageEmbedding, box_t: torch.Tensor | None, pts: tuple[torch.Tensor, torch.Tensor] | None,
                mask_t: torch.Tensor | None, boxes: np.ndarray | None, multimask: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pre = self.preprocessing
        if mask_t is None and boxes is not None and pre.box_mask_prior:
            edges = box_edges_to_input(boxes, emb.original_size, pre)
            mask_t = box_prior_logits(torch.from_numpy(edges), pre.image_size, self.low_res_size).to(self.device)
        sparse, dense = self.model.prompt_encoder(points=pts, boxes=box_t, masks=mask_t)
        low_res, scores = self.model.mask_decoder(
            image_embeddings=emb.features,
            image_pe=self.model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        full = logits_to_image(low_res, emb.original_size, pre)
        return full, scores, low_res
