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

from exdd_core.data.imageio import image_size_of, load_image
from exdd_core.features.embedder import Embedder, make_extractor
from exdd_core.features.store import Store, check_compatible
from exdd_core.runtime.choices import IMAGE_SUFFIXES, NAMED_WEIGHTS
from exdd_core.runtime.errors import InputError
from exdd_core.scoring.card import CARD_NAME, Card, load_card
from exdd_core.scoring.maps import upsample
from exdd_core.scoring.model import ExddModel, ImageResult, ScoringSettings

# Keys of the rebuilt extractor's provenance that must equal the banks' (a changed weights file shows here).
EXTRACTOR_KEYS = ("backbone", "weights_id", "layers", "channels", "patch_size", "aggregation")


def find_card(banks: Path, model: Path | None) -> Path:
    """--model if given, else `<banks>/../eval/model.json` (a project checkout), else `eval/model.json`."""
    if model is not None:
        return Path(model)
    beside = Path(banks).resolve().parent / "eval" / CARD_NAME
    return beside if beside.is_file() else Path("eval") / CARD_NAME


# --------------------------------------------------------------------------------------------------------
# inputs


def expand_inputs(items: list[Path]) -> list[Path]:
    """Files as given, folders as their image files (sorted, not recursive). KSDD2-style `<id>_GT.*` masks in
    a folder are skipped: scoring a ground-truth mask as a surface is never what was meant."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(
                p
                for p in item.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_GT")
            )
            if not found:
                raise InputError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return out


def check_sizes(paths: list[Path], expected: tuple[int, int], skip_unreadable: bool = False) -> None:
    """Refuse, before any work, images whose size differs from the banks' (they would be scored at another
    scale than every bank patch was seen at). Lists the offenders with their sizes. `skip_unreadable`: a file
    whose header cannot be read is left to the scoring loop (it gets a row saying why) instead of stopping."""
    bad = []
    for p in paths:
        try:
            bad.append((p, image_size_of(p)))
        except InputError:
            if not skip_unreadable:
                raise
    bad = [(p, hw) for p, hw in bad if tuple(hw) != tuple(expected)]
    if not bad:
        return
    eh, ew = expected
    shown = "; ".join(f"{p} is {h}x{w}" for p, (h, w) in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    raise InputError(
        f"{shown}{more} (H x W), but the banks were built from {eh}x{ew} images: refusing "
        f"{len(bad)} image(s) that would be scored at another scale. Pass --resize to resize them to "
        f"{eh}x{ew} as the prepare stage does (bilinear)"
    )


# --------------------------------------------------------------------------------------------------------
# the scorer


@dataclass
class Scorer:
    """The model (embedder, banks, scoring settings) and the card it was opened from."""

    card: Card
    model: ExddModel


def _resolve_weights(weights: str, card_path: Path) -> str:
    """A relative weights file is relative to the project root; when scoring from elsewhere, look there."""
    if weights in NAMED_WEIGHTS or Path(weights).is_absolute() or Path(weights).exists():
        return weights
    candidate = card_path.resolve().parent.parent / weights
    return str(candidate) if candidate.exists() else weights


def open_scorer(banks: Path, card_path: Path, device: str = "cpu") -> Scorer:
    """Open both banks, check them against the card, rebuild the backbone and check it against the banks."""
    card = load_card(card_path)
    card.check_preprocessing(str(card_path))
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
    extractor = make_extractor(backbone, features, int(bb["seed"]), device)
    rebuilt = {**extractor.provenance(), "grid": list(extractor.grid_for(card.image_size))}
    check_compatible(
        bn.attrs, rebuilt, f"normal bank ({bn.path}) and the backbone rebuilt here", (*EXTRACTOR_KEYS, "grid")
    )
    settings = ScoringSettings.from_params(card.scoring)
    embedder = Embedder.for_stores(extractor, feats)
    return Scorer(card, ExddModel.from_stores(bn, bp, settings, device, embedder=embedder))


def score_file(scorer: Scorer, path: Path, *, resize: bool = False) -> ImageResult:
    """Load, (optionally) resize, embed and score one image file; the result keeps the image as loaded."""
    size = scorer.model.image_size
    original = load_image(path)
    resized = original.shape[:2] != size
    if resized and not resize:
        check_sizes([Path(path)], size)
    result = scorer.model.score_image(load_image(path, size) if resized else original)
    result.image, result.resized = original, resized
    return result


def map_at_image_size(result: ImageResult) -> np.ndarray:
    """The ExDD map at the file's own size (bilinear back from the scored size when --resize changed it)."""
    amap = result.exdd_map()
    if not result.resized or result.image is None:
        return amap
    return upsample(amap, result.image.shape[:2])
