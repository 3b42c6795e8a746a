"""The deployment card (`eval/model.json`): everything `exdd score` needs besides the banks, written by
evaluate, typed here so a misspelt or missing field is an error and not a KeyError deep in scoring.

Format `exdd-model/2` (CARD_FORMAT); `exdd-model/1` cards, whose thresholds were the test set's F1-optimal
ones, are read and migrated by `Card.from_dict`. A later format bumps the version and adds a migration there.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exdd_core.features.provenance import COMPAT_KEYS, IMAGENET_MEAN, IMAGENET_STD, input_stats
from exdd_core.runtime.atomic import write_text_atomic
from exdd_core.runtime.errors import InputError, MismatchError

if TYPE_CHECKING:
    from exdd_core.evaluation.report import EvalResult

CARD_FORMAT = "exdd-model/2"
OLD_FORMATS = ("exdd-model/1",)  # read and migrated by Card.from_dict
CARD_NAME = "model.json"
# Feature provenance copied from the test store into the card: what decides the feature space and grid.
FEATURE_KEYS = (*COMPAT_KEYS, "weights", "channels", "feature_dim", "autocast")
SCORING_KEYS = ("mode", "neighbors", "eps", "sigma", "map_reweight", "map_8bit", "fusion")
THRESHOLD_RULE = (
    "calibrated on normal training images held out of the normal bank: at most calibration.target_fpr of them "
    "score >= threshold; score >= threshold means defective"
)
ORACLE_RULE_V1 = "F1-optimal on the test set; score >= threshold means defective"


def preprocessing(backbone: str | None = None, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """How an image becomes input of `backbone` (its own normalisation; ImageNet's when None), recorded so a
    later code change cannot silently alter it. From a store's `attrs` when they record the normalisation
    the features stage applied (evaluate then needs no timm import: 1.5 s of its run)."""
    if attrs and attrs.get("input_mean") is not None and attrs.get("input_std") is not None:
        mean, std = tuple(attrs["input_mean"]), tuple(attrs["input_std"])
    else:
        mean, std = input_stats(backbone) if backbone else (IMAGENET_MEAN, IMAGENET_STD)
    return {
        "color": "RGB uint8 (grey replicated, alpha dropped)",
        "resize": "PIL bilinear to image_size (prepare stage)",
        "mean": list(mean),
        "std": list(std),
    }


@dataclass(kw_only=True)
class Card:
    """One evaluate run's deployment card. `thresholds` holds each ExDD mode's and PatchCore's threshold at
    full precision (None when the test set had one class); `map_range` is the colour range of the heatmaps.
    Field order is the JSON's order."""

    format: str = CARD_FORMAT
    thresholds: dict[str, float | None]
    threshold_rule: str = THRESHOLD_RULE
    oracle_thresholds: dict[str, float | None] = field(default_factory=dict)  # F1-optimal on the test set
    calibration: dict[str, Any] = field(default_factory=dict)
    test_images: dict[str, int] | None = None
    scoring: dict[str, Any]
    features: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=preprocessing)
    backbone: dict[str, Any]
    banks: dict[str, dict[str, Any]]
    map_range: list[float]
    metrics: dict[str, dict[str, Any]]
    fallback: bool = False
    comparable_to_paper: bool = False

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.features["image_size"][0]), int(self.features["image_size"][1])

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.features["grid"][0]), int(self.features["grid"][1])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, where: str) -> Card:
        """Refuse anything that is not a card of this format (a metrics.json passed by mistake, a newer
        format) or lacks a field, naming `where`."""
        if isinstance(data, dict) and data.get("format") in OLD_FORMATS:
            data = _migrate_v1(data)
        if not isinstance(data, dict) or data.get("format") != CARD_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise InputError(
                f"{where}: not an exdd deployment card (format {found!r}, expected {CARD_FORMAT})"
            )
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is f.default_factory is MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise InputError(f"{where}: deployment card lacks {missing}; rerun evaluate (dvc repro evaluate)")
        return cls(**{k: v for k, v in data.items() if k in names})

    def check_preprocessing(
        self, where: str, stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    ) -> None:
        """The card's preprocessing against this code's: the backbone's (mean, std) as `stats` when the caller
        has them (an extractor's: no timm import), else looked up in timm."""
        attrs = None if stats is None else {"input_mean": list(stats[0]), "input_std": list(stats[1])}
        expected = preprocessing(self.backbone.get("name"), attrs)
        if self.preprocessing != expected:
            raise MismatchError(
                f"{where}: the banks' preprocessing {self.preprocessing} differs from this code's "
                f"{expected}; rebuild the banks (dvc repro) with this version"
            )


def _migrate_v1(data: dict[str, Any]) -> dict[str, Any]:
    """exdd-model/1 cards hold the test set's F1-optimal thresholds: kept, and said to be the oracle's."""
    return {
        **data,
        "format": CARD_FORMAT,
        "oracle_thresholds": dict(data.get("thresholds") or {}),
        "threshold_rule": data.get("threshold_rule", ORACLE_RULE_V1),
        "calibration": {"images": 0, "note": "exdd-model/1 card: thresholds are the test set's (oracle)"},
    }


def write_card(path: Path, card: Card) -> None:
    write_text_atomic(Path(path), json.dumps(card.to_dict(), indent=2) + "\n")


def load_card(path: Path) -> Card:
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: deployment card not found. It is written by the evaluate stage (`dvc repro evaluate`) "
            f"and tracked in git; pass another one with --model"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    return Card.from_dict(data, str(path))


def build_card(
    metrics: dict[str, Any],
    result: EvalResult,
    settings: dict[str, Any],
    seed: int,
    comparable_to_paper: bool,
) -> Card:
    """The card of one evaluate run (`result`: evaluation.report.EvalResult), from its metrics, thresholds,
    the test store's provenance and the scoring settings."""
    test_attrs, map_range = result.test_attrs, result.map_range
    calibrated = metrics["calibration"].get("images", 0) > 0
    return Card(
        thresholds=dict(result.thresholds),
        threshold_rule=THRESHOLD_RULE if calibrated else ORACLE_RULE_V1 + " (no calibration images)",
        oracle_thresholds=dict(result.oracle_thresholds),
        calibration=metrics["calibration"],
        test_images=metrics.get("test_images"),
        scoring={k: settings.get(k) for k in SCORING_KEYS},
        features={k: test_attrs.get(k) for k in FEATURE_KEYS},
        preprocessing=preprocessing(test_attrs.get("backbone"), test_attrs),
        backbone={
            "name": test_attrs.get("backbone"),
            "weights": test_attrs.get("weights"),
            "layers": test_attrs.get("layers"),
            "seed": seed,
        },
        banks={
            k: {
                "rows": metrics["bank_sizes"][k],
                "coverage_radius": metrics["coverage_radius"][k],
                "line_verdicts": metrics["line_verdicts"][k],  # images confirmed on the line (exdd feedback)
            }
            for k in ("normal", "defect")
        },
        map_range=[float(map_range[0]), float(map_range[1])],
        metrics={
            "exdd": {k: metrics["exdd"].get(k) for k in ("mode", "image_auroc", "pixel_auroc")},
            "patchcore": {k: metrics["patchcore"].get(k) for k in ("image_auroc", "pixel_auroc")},
        },
        fallback=bool(metrics.get("fallback", False)),
        comparable_to_paper=comparable_to_paper,
    )
