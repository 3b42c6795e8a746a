"""Scoring new images with banks the pipeline built: the glue that turns one image file into the same ExDD /
PatchCore scores and anomaly map evaluate computed.

Nothing here re-implements the method. An image is loaded as prepare loads it (`imageio.load_image`) and
goes to the same `ExddModel` evaluate scores with, here holding the embedder the feature stages used
(`features.embedder`): a test image scored here gets evaluate's score.

The card (`eval/model.json`, `scoring.card`) says which settings the banks need; every mismatch between
card, banks, rebuilt backbone and image is refused with a message that names both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exdd_core.features.embedder import Embedder, make_extractor
from exdd_core.features.store import Store, check_compatible
from exdd_core.runtime.choices import NAMED_WEIGHTS
from exdd_core.scoring.card import Card, load_card
from exdd_core.scoring.maps import upsample
from exdd_core.scoring.model import ExddModel, ImageResult, ScoringSettings
from exdd_core.serve.inputs import LoadedImage, load_for_scoring, override_fusion

# Keys of the rebuilt extractor's provenance that must equal the banks' (a changed weights file shows here).
EXTRACTOR_KEYS = ("backbone", "weights_id", "layers", "channels", "patch_size", "aggregation")


# --------------------------------------------------------------------------------------------------------
# the scorer


@dataclass
class Scorer:
    """The model (embedder, banks, scoring settings) and the card it was opened from. `exdd score` calls
    `score_file` and `map_at_image_size` (an ONNX export's `serve.onnx_model.OnnxScorer` offers the same)."""

    card: Card
    model: ExddModel

    def score_file(
        self, path: Path, *, resize: bool = False, only: tuple[str, ...] | None = None
    ) -> ImageResult:
        return self.score_loaded(load_for_scoring(path, self.model.image_size, resize), only)

    def score_loaded(self, loaded: LoadedImage, only: tuple[str, ...] | None = None) -> ImageResult:
        """An image read by `serve.inputs.load_for_scoring`; `only`: the strategies to compute (all if None)."""
        result = self.model.score_image(loaded.at_size, only)
        result.image, result.resized = loaded.original, loaded.resized
        return result

    def map_at_image_size(self, result: ImageResult) -> np.ndarray:
        return map_at_image_size(result)


def _resolve_weights(weights: str, card_path: Path) -> str:
    """A relative weights file is relative to the project root; when scoring from elsewhere, look there."""
    if weights in NAMED_WEIGHTS or Path(weights).is_absolute() or Path(weights).exists():
        return weights
    candidate = card_path.resolve().parent.parent / weights
    return str(candidate) if candidate.exists() else weights


def open_scorer(
    banks: Path, card_path: Path, device: str = "cpu", fusion: dict | None = None, cached: bool = False
) -> Scorer:
    """Open both banks, check them against the card, rebuild the backbone and check it against the banks.
    `cached`: the backbone's runner from the runner cache when there (`exdd score`: features.runner_cache)."""
    card = override_fusion(load_card(card_path), fusion)  # `fusion`: run-time overrides (lam, topk)
    feats = card.features
    bn, bp = Store(Path(banks) / "normal.zarr"), Store(Path(banks) / "defect.zarr")
    check_compatible(feats, bn.attrs, f"deployment card ({card_path}) and normal bank ({bn.path})")
    check_compatible(feats, bp.attrs, f"deployment card ({card_path}) and defect bank ({bp.path})")
    bb = card.backbone
    backbone = {**bb, "weights": _resolve_weights(bb["weights"], card_path)}
    features = {
        "patch_size": feats["patch_size"],
        "aggregation": feats["aggregation"],
        "autocast": bool(feats.get("autocast")),  # as the banks were extracted (None in older cards: off)
    }
    extractor = make_extractor(backbone, features, int(bb["seed"]), device, cached=cached)
    card.check_preprocessing(str(card_path), extractor.stats)
    rebuilt = {**extractor.provenance(), "grid": list(extractor.grid_for(card.image_size))}
    check_compatible(
        bn.attrs, rebuilt, f"normal bank ({bn.path}) and the backbone rebuilt here", (*EXTRACTOR_KEYS, "grid")
    )
    settings = ScoringSettings.from_params(card.scoring)
    embedder = Embedder.for_stores(extractor, feats)
    return Scorer(card, ExddModel.from_stores(bn, bp, settings, device, embedder=embedder))


def map_at_image_size(result: ImageResult) -> np.ndarray:
    """The ExDD map at the file's own size (bilinear back from the scored size when --resize changed it)."""
    amap = result.exdd_map()
    if not result.resized or result.image is None:
        return amap
    return upsample(amap, result.image.shape[:2])
