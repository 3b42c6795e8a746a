"""Scoring new images with banks the pipeline built: the deployment card evaluate writes, and the glue that
turns one image file into the same ExDD / PatchCore scores and anomaly map evaluate computed.

Nothing here re-implements the method. An image goes through the library's own steps - `imageio.load_image`
(as prepare), `extract.make_extractor` + `patches.to_rows` (as the feature stages), the store's precision,
`scoring.score_image` and `maps.anomaly_map` (as evaluate) - so a test image scored here gets evaluate's score.

The card (`eval/model.json`, a git-tracked output of evaluate) says which settings the banks need: the feature
provenance they were built with, the scoring parameters, the thresholds evaluate chose (F1-optimal on the test
set, per mode), and the colour range of evaluate's heatmaps. Every mismatch between card, banks, rebuilt
backbone and image is refused with a message that names both sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exdd_core.atomic import write_text_atomic
from exdd_core.backbone import IMAGENET_MEAN, IMAGENET_STD, PatchFeatureExtractor
from exdd_core.errors import InputError, MismatchError
from exdd_core.extract import make_extractor
from exdd_core.imageio import image_size_of, load_image
from exdd_core.maps import anomaly_map, upsample
from exdd_core.patches import to_rows
from exdd_core.projection import projection_matrix
from exdd_core.scoring import ImageScore, ScoringBank, score_image
from exdd_core.store import COMPAT_KEYS, Store, check_compatible

CARD_FORMAT = "exdd-model/1"
CARD_NAME = "model.json"
# Feature provenance copied from the test store into the card: what decides the feature space and grid.
FEATURE_KEYS = (*COMPAT_KEYS, "weights", "channels", "feature_dim")
SCORING_KEYS = ("mode", "neighbors", "eps", "sigma", "map_reweight", "map_8bit")
# Keys of the rebuilt extractor's provenance that must equal the banks' (a changed weights file shows here).
EXTRACTOR_KEYS = ("backbone", "weights_id", "layers", "channels", "patch_size", "aggregation")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


# --------------------------------------------------------------------------------------------------------
# the deployment card


def preprocessing() -> dict[str, Any]:
    """How an image becomes backbone input, recorded so a later code change cannot silently alter it."""
    return {
        "color": "RGB uint8 (grey replicated, alpha dropped)",
        "resize": "PIL bilinear to image_size (prepare stage)",
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }


def build_card(
    metrics: dict[str, Any],
    thresholds: dict[str, float | None],
    test_attrs: dict[str, Any],
    scoring: dict[str, Any],
    seed: int,
    map_range: tuple[float, float],
) -> dict[str, Any]:
    """Everything `exdd score` needs besides the banks themselves, from one evaluate run."""
    return {
        "format": CARD_FORMAT,
        "thresholds": dict(thresholds),
        "threshold_rule": "F1-optimal on the test set; score >= threshold means defective",
        "test_images": metrics.get("test_images"),
        "scoring": {k: scoring[k] for k in SCORING_KEYS},
        "features": {k: test_attrs.get(k) for k in FEATURE_KEYS},
        "preprocessing": preprocessing(),
        "backbone": {
            "name": test_attrs.get("backbone"),
            "weights": test_attrs.get("weights"),
            "layers": test_attrs.get("layers"),
            "seed": seed,
        },
        "banks": {
            k: {"rows": metrics["bank_sizes"][k], "coverage_radius": metrics["coverage_radius"][k]}
            for k in ("normal", "defect")
        },
        "map_range": [float(map_range[0]), float(map_range[1])],
        "metrics": {
            "exdd": {k: metrics["exdd"].get(k) for k in ("mode", "image_auroc", "pixel_auroc")},
            "patchcore": {k: metrics["patchcore"].get(k) for k in ("image_auroc", "pixel_auroc")},
        },
        "fallback": metrics.get("fallback", False),
    }


def write_card(path: Path, card: dict[str, Any]) -> None:
    write_text_atomic(Path(path), json.dumps(card, indent=2) + "\n")


def load_card(path: Path) -> dict[str, Any]:
    """Read a card, refusing anything that is not one (a metrics.json passed by mistake, an older format)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: deployment card not found. It is written by the evaluate stage (`dvc repro evaluate`) "
            f"and tracked in git; pass another one with --model"
        )
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise InputError(f"{path}: not an exdd deployment card (format {found!r}, expected {CARD_FORMAT})")
    return card


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


def check_sizes(paths: list[Path], expected: tuple[int, int]) -> None:
    """Refuse, before any work, images whose size differs from the banks' (they would be scored at another
    scale than every bank patch was seen at). Lists the offenders with their sizes."""
    bad = [(p, image_size_of(p)) for p in paths]
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
    """Banks, the rebuilt feature extractor and the card, ready to score images one at a time."""

    card: dict[str, Any]
    extractor: PatchFeatureExtractor
    normal: ScoringBank
    defect: ScoringBank | None
    projection: torch.Tensor | None
    image_size: tuple[int, int]
    grid: tuple[int, int]
    dtype: np.dtype

    @property
    def scoring(self) -> dict[str, Any]:
        return self.card["scoring"]


def _resolve_weights(weights: str, card_path: Path) -> str:
    """A relative weights file is relative to the project root; when scoring from elsewhere, look there."""
    if weights in ("random", "imagenet") or Path(weights).is_absolute() or Path(weights).exists():
        return weights
    candidate = card_path.resolve().parent.parent / weights
    return str(candidate) if candidate.exists() else weights


def check_preprocessing(card: dict[str, Any], where: str) -> None:
    if card.get("preprocessing") != preprocessing():
        raise MismatchError(
            f"{where}: the banks' preprocessing {card.get('preprocessing')} differs from this code's "
            f"{preprocessing()}; rebuild the banks (dvc repro) with this version"
        )


def open_scorer(banks: Path, card_path: Path, device: str = "cpu") -> Scorer:
    """Open both banks, check them against the card, rebuild the backbone and check it against the banks."""
    card = load_card(card_path)
    check_preprocessing(card, str(card_path))
    feats = card["features"]
    bn, bp = Store(Path(banks) / "normal.zarr"), Store(Path(banks) / "defect.zarr")
    check_compatible(feats, bn.attrs, f"deployment card ({card_path}) and normal bank ({bn.path})")
    check_compatible(feats, bp.attrs, f"deployment card ({card_path}) and defect bank ({bp.path})")
    bb = card["backbone"]
    backbone = {**bb, "weights": _resolve_weights(bb["weights"], card_path)}
    features = {"patch_size": feats["patch_size"], "aggregation": feats["aggregation"]}
    extractor = make_extractor(backbone, features, int(bb["seed"]), device)
    image_size = (int(feats["image_size"][0]), int(feats["image_size"][1]))
    rebuilt = {**extractor.provenance(), "grid": list(extractor.grid_for(image_size))}
    check_compatible(
        bn.attrs, rebuilt, f"normal bank ({bn.path}) and the backbone rebuilt here", (*EXTRACTOR_KEYS, "grid")
    )
    projection = None
    if feats["projection_seed"] is not None:  # as write_store: stores hold projections iff it has a seed
        mat = projection_matrix(extractor.dim, feats["stored_dim"], feats["projection_seed"])
        projection = torch.as_tensor(mat, device=extractor.device)
    b = int(card["scoring"]["neighbors"])
    return Scorer(
        card=card,
        extractor=extractor,
        normal=ScoringBank(bn.read_all(), b, device),
        defect=ScoringBank(bp.read_all(), b, device) if len(bp) else None,
        projection=projection,
        image_size=image_size,
        grid=(int(feats["grid"][0]), int(feats["grid"][1])),
        dtype=np.dtype(feats["dtype"]),
    )


def image_rows(scorer: Scorer, image: np.ndarray) -> np.ndarray:
    """Patch rows of one image exactly as a feature store holds them: the feature stages' extractor and row
    order, projected when the stores hold projections, rounded to the store's precision (float16 by default)."""
    patches = scorer.extractor(image)
    if tuple(patches.shape[-2:]) != scorer.grid:
        raise MismatchError(f"patch grid {tuple(patches.shape[-2:])} != the banks' grid {scorer.grid}")
    rows = to_rows(patches)
    if scorer.projection is not None:
        rows = rows @ scorer.projection
    return rows.float().cpu().numpy().astype(scorer.dtype).astype(np.float32)


@dataclass
class Scored:
    """One scored image: the library's ImageScore, the ExDD map at the scored size, the image as loaded."""

    result: ImageScore
    amap: np.ndarray  # (H, W) at image_size, as evaluate's heatmaps
    image: np.ndarray  # uint8 (h, w, 3) at the file's own size
    resized: bool


def score_file(scorer: Scorer, path: Path, *, resize: bool = False) -> Scored:
    """Load, (optionally) resize, extract, score and map one image file."""
    original = load_image(path)
    resized = original.shape[:2] != scorer.image_size
    if resized and not resize:
        check_sizes([Path(path)], scorer.image_size)
    image = load_image(path, scorer.image_size) if resized else original
    s = scorer.scoring
    res = score_image(
        image_rows(scorer, image),
        scorer.grid,
        scorer.normal,
        scorer.defect,
        eps=s["eps"],
        map_reweight=s["map_reweight"],
    )
    amap = anomaly_map(res.ratio_map, scorer.image_size, s["sigma"], quantize_8bit=s["map_8bit"])
    return Scored(res, amap, original, resized)


def map_at_image_size(scored: Scored) -> np.ndarray:
    """The map at the file's own size (bilinear back from the scored size when --resize changed it)."""
    if not scored.resized:
        return scored.amap
    return upsample(scored.amap, scored.image.shape[:2])
