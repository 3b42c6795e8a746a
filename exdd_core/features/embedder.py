"""The embedder: one image to its patch rows exactly as a feature store holds them.

Why one object: the recipe - the backbone and patch aggregation (`PatchFeatureExtractor`), the row order of
`patches.to_rows`, the random projection when the stores hold projections (`features.store_dim`), and the
rounding to the stores' precision - must be the same wherever an image is scored against banks: fit_fusion's
known defects, `exdd score`, an exported model. Writing it once is what makes their scores equal evaluate's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from exdd_core.features.backbone import BackboneSpec, PatchFeatureExtractor
from exdd_core.features.patches import to_rows
from exdd_core.features.projection import project, projection_matrix


def make_extractor(
    backbone: dict, features: dict, seed: int, device: str, cached: bool = False
) -> PatchFeatureExtractor:
    """The backbone cut at `backbone.layers` with the patch aggregation of `features` (params or a card);
    `cached`: its runner from the runner cache when there (features.runner_cache)."""
    spec = BackboneSpec(
        name=backbone["name"], weights=backbone["weights"], layers=tuple(backbone["layers"]), seed=seed
    )
    autocast = bool(features.get("autocast", False))
    return PatchFeatureExtractor(
        spec, features["patch_size"], features["aggregation"], device, autocast, cached=cached
    )


@dataclass
class Embedder:
    """Backbone + aggregation, the stores' projection (C, store_dim) or None, and the stores' precision."""

    extractor: PatchFeatureExtractor
    projection: torch.Tensor | None
    dtype: np.dtype

    @classmethod
    def from_params(cls, backbone: dict, features: dict, seed: int, device: str) -> Embedder:
        """As the feature stages embed: `backbone` and `features` params, the run's seed."""
        return cls.around(make_extractor(backbone, features, seed, device), features, seed)

    @classmethod
    def around(cls, extractor: PatchFeatureExtractor, features: dict, seed: int) -> Embedder:
        """An extractor with the stores' projection (`features.store_dim`, drawn from `seed`) and precision."""
        projection = stores_projection(extractor, features["store_dim"], seed)
        return cls(extractor, projection, np.dtype(features["dtype"]))

    @classmethod
    def for_stores(cls, extractor: PatchFeatureExtractor, store_attrs: dict[str, Any]) -> Embedder:
        """For stores (or a card's `features`) with these attributes: a projection iff they hold one."""
        seed = store_attrs.get("projection_seed")
        dim = store_attrs.get("stored_dim") if seed is not None else None
        return cls(extractor, stores_projection(extractor, dim, seed or 0), np.dtype(store_attrs["dtype"]))

    def rows(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> float32 (h*w, d): the extractor's row order, projected when the stores hold
        projections, rounded to the stores' precision (float16 by default)."""
        rows = to_rows(self.extractor(image))
        if self.projection is not None:
            rows = project(rows, self.projection)
        return rows.float().cpu().numpy().astype(self.dtype).astype(np.float32)


def stores_projection(
    extractor: PatchFeatureExtractor, store_dim: int | None, seed: int
) -> torch.Tensor | None:
    """The Gaussian projection the feature stores apply (features.store_dim), on the extractor's device; None
    when the stores hold full features."""
    if not store_dim:
        return None
    return torch.as_tensor(projection_matrix(extractor.dim, store_dim, seed), device=extractor.device)
