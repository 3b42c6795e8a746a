"""Evaluation: score every test image with both banks (ExDD, every mode) and with the normal bank alone
(PatchCore), compute image and pixel metrics, and write scores, curves and heatmap overlays."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.banks.distributed import shard_stores
from exdd_core.banks.health import defect_bank_health
from exdd_core.data.imageio import load_mask
from exdd_core.data.records import SYNTHETIC_PREFIX, ImageRecord, read_manifest
from exdd_core.evaluation.calibration import calibration_ids, false_alarm_bound, line_rates, threshold_at_fpr
from exdd_core.evaluation.heatmaps import HEATMAP_RANGE_PERCENTILES, write_heatmaps
from exdd_core.evaluation.image_metrics import image_metrics
from exdd_core.evaluation.pixel_metrics import pixel_report
from exdd_core.evaluation.plots import write_plot_data
from exdd_core.features.provenance import line_verdicts
from exdd_core.features.store import Store, check_compatible
from exdd_core.runtime.atomic import write_csv_atomic
from exdd_core.runtime.choices import SCORE_MODES as MODES
from exdd_core.runtime.distributed import Ranks, gather_shards
from exdd_core.runtime.errors import InputError
from exdd_core.scoring.model import ExddModel, ScoringSettings, StoreScores


@dataclass
class EvalResult:
    metrics: dict[str, Any]
    ids: list[str]
    labels: np.ndarray
    scores: dict[str, np.ndarray]
    # What `exdd score` needs to reproduce these scores and colour its overlays alike (inference.build_card).
    test_attrs: dict[str, Any] = field(default_factory=dict)
    map_range: tuple[float, float] = (0.0, 1.0)
    thresholds: dict[str, float | None] = field(default_factory=dict)  # calibrated, per mode + patchcore
    oracle_thresholds: dict[str, float | None] = field(default_factory=dict)  # F1-optimal on the test set


def load_banks(normal: Path, defect: Path, test: Path) -> tuple[Store, Store, Store]:
    """Open the three stores and refuse any pair built with different feature settings (design.md, "The DAG")."""
    bn, bp, ts = Store(normal), Store(defect), Store(test)
    check_compatible(ts.attrs, bn.attrs, f"test features ({test}) and normal bank ({normal})")
    check_compatible(ts.attrs, bp.attrs, f"test features ({test}) and defect bank ({defect})")
    return bn, bp, ts


@dataclass(frozen=True)
class EvalInputs:
    """Where evaluate reads from: both banks, the test features and manifest, the normal features whose
    held-out images calibrate the threshold (None: the oracle's thresholds, with a note)."""

    normal_bank: Path
    defect_bank: Path
    test_features: Path
    test_manifest: Path
    normal_features: Path | None = None


def evaluate(
    inputs: EvalInputs,
    scoring: dict,
    eval_params: dict,
    device: str,
    out_dir: Path | None,
    run: dict[str, Any],
    progress: Callable = lambda it, desc, total: it,
    seed: int = 0,
    ranks: Ranks | None = None,
    shard_banks: bool = False,
) -> EvalResult | None:
    """Score the test set with ExDD (every mode) and PatchCore through one ExddModel; metrics.json's dict
    (`build_metrics`, with `run`: what `describe_run` says of the run), scores.csv, curves and heatmaps.

    Under torchrun (`ranks`) each rank scores a shard of the test images with the whole banks
    (`distributed.gather_shards`), or, with `shard_banks`, every rank scores every image with its shard of
    each bank (collectives throughout); either way rank 0 writes everything and the others return None."""
    bn, bp, ts = load_banks(inputs.normal_bank, inputs.defect_bank, inputs.test_features)
    records = _records_of(ts, inputs.test_manifest)
    sharded = shard_banks and ranks is not None and ranks.world > 1
    settings = ScoringSettings.from_params(scoring)
    banks = shard_stores((bn, bp), ranks.world, ranks.rank, device) if sharded and ranks else None
    model = ExddModel.from_stores(bn, bp, settings, device, banks=banks)
    health = defect_bank_health(model.normal.bank, bp.read_all(), synthetic_rows(bp), model.normal_scale)
    t = gather_shards(
        lambda lo, hi: model.score_store(ts, lo, hi, progress),
        len(ts.images),
        None if sharded else ranks,
        StoreScores.concatenate,
    )
    calibration = (inputs.normal_features, eval_params["calibration_fraction"], seed)
    if sharded and ranks is not None and not ranks.main:  # rank 0 scores these too: the same collectives
        _calibration_scores(model, *calibration)
        return None
    if t is None:  # a rank other than 0: its shard went to rank 0, which writes everything
        return None
    ids = list(ts.images)
    truth = GroundTruth.of(ids, records, model.image_size)
    default = scoring["mode"]
    # Pixel metrics over the images whose pixels are labelled: normal ones, and defective ones with a mask
    # (a defective image without one has defect pixels nobody marked; counting them normal would be wrong).
    px = (truth.labels == 0) | truth.has_mask
    pixel = {
        "exdd": pixel_report(truth.masks[px], t.maps_exdd[px], eval_params["max_fpr"]),
        "patchcore": pixel_report(truth.masks[px], t.maps_pc[px], eval_params["max_fpr"]),
    }
    scores = {**t.scores, "exdd": t.scores[default]}
    oracle = f1_thresholds(truth.labels, scores)
    held_out = _calibration_scores(model, *calibration)
    thresholds, cal = _calibrate(held_out, oracle, truth.labels, scores, eval_params, default)
    run = {**per_type(truth, scores, thresholds, default), **run}
    metrics = build_metrics(truth, scores, pixel, default, model, health, (bn, bp), cal, run)
    value_range = map_range(t.maps_exdd)
    written = (metrics, pixel, thresholds, value_range)
    _write_outputs(out_dir, ids, truth, records, scores, t, written, eval_params, default)
    return EvalResult(metrics, ids, truth.labels, scores, dict(ts.attrs), value_range, thresholds, oracle)


@dataclass
class GroundTruth:
    """The test images' labels, masks at image size (all False without one) and which images have a mask."""

    labels: np.ndarray  # int64 (n,)
    masks: np.ndarray  # bool (n, H, W)
    has_mask: np.ndarray  # bool (n,)
    types: list[str | None]  # each image's defect type, where the data names one

    @classmethod
    def of(cls, ids: list[str], records: dict[str, ImageRecord], size: tuple[int, int]) -> GroundTruth:
        labels = np.array([records[i].label for i in ids], dtype=np.int64)
        masks = np.zeros((len(ids), *size), dtype=bool)
        has_mask = np.zeros(len(ids), dtype=bool)
        for k, i in enumerate(ids):
            if records[i].mask_path is not None:
                masks[k], has_mask[k] = load_mask(records[i].mask_path, size), True
        return cls(labels, masks, has_mask, [records[i].defect_type for i in ids])


def _records_of(ts: Store, manifest: Path) -> dict[str, ImageRecord]:
    """The manifest's records by id, refusing test features of images the manifest lacks (stale features)."""
    records = {r.id: r for r in read_manifest(manifest)}
    missing = [i for i in ts.images if i not in records]
    if missing:
        raise InputError(f"{ts.path}: images {missing[:3]} are not in {manifest} (stale features?)")
    return records


def map_range(maps: np.ndarray) -> tuple[float, float]:
    """The heatmaps' colour range: HEATMAP_RANGE_PERCENTILES of every ExDD map value."""
    lo, hi = (float(v) for v in np.percentile(maps, HEATMAP_RANGE_PERCENTILES))
    return lo, hi


def build_metrics(
    truth: GroundTruth,
    scores: dict[str, np.ndarray],
    pixel: dict[str, Any],
    default: str,
    model: ExddModel,
    health: Any,
    banks: tuple[Store, Store],
    calibration: dict[str, Any],
    run: dict[str, Any],
) -> dict[str, Any]:
    """metrics.json, built in this one place: the reported mode and PatchCore (image and pixel blocks), every
    mode, the test set, the banks and their health, the calibration, then `run` (per defect type, fusion,
    profile, notes)."""
    labels, has_mask = truth.labels, truth.has_mask
    modes = {m: _image_block(labels, scores[m]) for m in MODES}
    metrics: dict[str, Any] = {
        "exdd": {**modes[default], **_pixel_block(pixel["exdd"].metrics()), "mode": default},
        "patchcore": {
            **_image_block(labels, scores["patchcore"]),
            **_pixel_block(pixel["patchcore"].metrics()),
        },
        "patchcore_reweighted": _image_block(labels, scores["patchcore_reweighted"]),
        "modes": modes,
        "fallback": model.fallback,
        "test_images": {
            "normal": int((labels == 0).sum()),
            "defective": int((labels == 1).sum()),
            "defective_with_mask": int(has_mask[labels == 1].sum()),
        },
        "bank_sizes": model.bank_sizes,
        "defect_bank": {k: _round(v) if isinstance(v, float) else v for k, v in health.as_dict().items()},
        "coverage_radius": {
            k: b.attrs.get("coverage_radius") for k, b in zip(("normal", "defect"), banks, strict=True)
        },
        "line_verdicts": {
            k: line_verdicts(b.attrs) for k, b in zip(("normal", "defect"), banks, strict=True)
        },
    }
    unlabelled = int(((labels == 1) & ~has_mask).sum())
    if unlabelled:
        metrics["pixel_note"] = (
            f"{unlabelled} of {int((labels == 1).sum())} defective test images have no mask: pixel metrics "
            + ("are over the others" if has_mask.any() else "are null (no defective image has a mask)")
        )
    return {**metrics, "calibration": calibration, **run}


def per_type(
    truth: GroundTruth, scores: dict[str, np.ndarray], thresholds: dict[str, float | None], default: str
) -> dict[str, Any]:
    """{"per_type": ...} when the data names defect types (else {}): per type, its test images, the image
    AUROC of those against every normal test image, and the recall at the calibrated threshold - for the
    reported ExDD mode and for PatchCore. Kept beside the calibration it depends on."""
    kinds = sorted({t for t in truth.types if t})
    if not kinds:
        return {}
    types = np.array([t or "" for t in truth.types])
    normal = truth.labels == 0
    out: dict[str, Any] = {}
    for kind in kinds:
        mine = (types == kind) & (truth.labels == 1)
        block: dict[str, Any] = {"images": int(mine.sum())}
        for name, key in (("exdd", default), ("patchcore", "patchcore")):
            s, thr = scores[key], thresholds.get(key)
            keep = normal | mine
            auroc = image_metrics(truth.labels[keep], s[keep])["auroc"] if normal.any() else float("nan")
            block[name] = {
                "image_auroc": _round(auroc),
                "recall": None if thr is None else _round(float((s[mine] >= thr).mean())),
            }
        out[kind] = block
    return {"per_type": out}


def describe_run(params: dict[str, Any], fit: dict[str, Any], device: str) -> dict[str, Any]:
    """metrics.json's account of the run: the fusion fit (without the head's weights, which travel in the
    card), the profile, and whether the numbers are comparable to the paper (with a note when not)."""
    head = fit.get("head")
    fusion = {**{k: v for k, v in fit.items() if k != "head"}, "head_dim": len(head["weight"]) if head else 0}
    p = params
    comparable = p["data"]["source"] == "ksdd2" and p["backbone"]["weights"] != "random"
    run: dict[str, Any] = {
        "fusion": fusion,
        "profile": {
            "data_source": p["data"]["source"],
            "image_size": p["data"]["image_size"],
            "backbone": p["backbone"]["name"],
            "weights": p["backbone"]["weights"],
            "synth_backend": p["synth"]["backend"],
            "synth_count": p["synth"]["count"],
            "device": device,
        },
        "comparable_to_paper": comparable,
    }
    if not comparable:
        run["note"] = (
            "not the paper's setting (demo or other data, or random weights): real detection on this data, "
            "but the numbers are not comparable to the paper's KSDD2 results"
        )
    return run


def _write_outputs(
    out_dir: Path | None,
    ids: list[str],
    truth: GroundTruth,
    records: dict[str, ImageRecord],
    scores: dict[str, np.ndarray],
    t: StoreScores,
    written: tuple[dict[str, Any], dict[str, Any], dict[str, float | None], tuple[float, float]],
    eval_params: dict,
    default: str,
) -> None:
    """scores.csv, the curves' data and the heatmap grid into `out_dir`; `written`: the metrics, the pixel
    reports, the thresholds and the heatmaps' colour range."""
    if out_dir is None:
        return
    metrics, pixel, thresholds, value_range = written
    _write_scores(out_dir, ids, truth.labels, scores)
    write_plot_data(out_dir / "plots", truth.labels, scores, default, metrics, pixel, thresholds)
    thr = thresholds[default]
    write_heatmaps(
        out_dir,
        ids,
        truth.labels,
        scores["exdd"],
        t.maps_exdd,
        truth.masks,
        records,
        t.maps_exdd.shape[1:],
        thr if thr is not None else float(np.median(scores["exdd"])),
        eval_params["heatmaps"],
        value_range=value_range,
    )


def _calibration_scores(
    model: ExddModel, normal_features: Path | None, fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Every score (modes, patchcore) of the normal training images the normal bank held out."""
    if normal_features is None:
        return {}
    store = Store(normal_features)
    held_out = calibration_ids(store.images, fraction, seed)
    rows = [(i, r) for _, i, r, _ in store.iter_images() if i in held_out]
    results = [model.score(r) for _, r in rows]
    out = {m: np.array([res.exdd[m] for res in results]) for m in MODES}
    out["patchcore"] = np.array([res.patchcore for res in results])
    return out


def _calibrate(
    held_out: dict[str, np.ndarray],
    oracle: dict[str, float | None],
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    eval_params: dict,
    default: str,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Deployment thresholds at eval.target_fpr on the held-out normals, and what the test set says of
    them (false-alarm and miss rates: what the line would see). Without held-out images: the oracle."""
    target = eval_params["target_fpr"]
    n = len(held_out.get("patchcore", []))
    if n == 0:
        note = "no normal training image held out (eval.calibration_fraction 0): thresholds are the oracle's"
        return dict(oracle), {"images": 0, "target_fpr": target, "note": note}
    thresholds: dict[str, float | None] = {k: threshold_at_fpr(v, target) for k, v in held_out.items()}

    def block(key: str) -> dict[str, Any]:
        flagged = int((held_out[key] >= thresholds[key]).sum())  # type: ignore[operator]
        return {
            "threshold": _round(thresholds[key]),
            **line_rates(labels, scores[key], thresholds[key]),  # type: ignore[arg-type]
            "held_out_flagged": flagged,
            "false_alarm_upper_95": _round(false_alarm_bound(flagged, n)),
        }

    report: dict[str, Any] = {
        "images": n,
        "target_fpr": target,
        "exdd": block(default),
        "patchcore": block("patchcore"),
    }
    if n * target < 1:
        report["note"] = (
            f"{n} held-out normal images cannot resolve a false-alarm rate of {target}: the threshold is the "
            f"highest held-out score (raise eval.calibration_fraction or add normal images)"
        )
    return thresholds, report


def synthetic_rows(bank: Store) -> np.ndarray:
    """bool (rows,): which rows of a bank come from synthesized images (banks group rows by source image)."""
    flags = np.array([i.startswith(SYNTHETIC_PREFIX) for i in bank.images], dtype=bool)
    return np.repeat(flags, np.diff(bank.offsets))


def f1_thresholds(labels: np.ndarray, scores: dict[str, np.ndarray]) -> dict[str, float | None]:
    """The F1-optimal threshold of each ExDD mode and of PatchCore at full precision (metrics.json rounds to
    6 decimals, which could move a threshold past the very score that defines it); None for one class."""
    out: dict[str, float | None] = {}
    for name in (*MODES, "patchcore"):
        t = image_metrics(labels, scores[name])["f1_threshold"]
        out[name] = float(t) if np.isfinite(t) else None
    return out


def _round(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def _image_block(labels: np.ndarray, s: np.ndarray) -> dict[str, float | None]:
    m = image_metrics(labels, s)
    return {
        "image_auroc": _round(m["auroc"]),
        "image_ap": _round(m["ap"]),
        "image_f1_max": _round(m["f1_max"]),
        "oracle_threshold": _round(m["f1_threshold"]),
    }


def _pixel_block(m: dict[str, float]) -> dict[str, float | None]:
    return {"pixel_auroc": _round(m["auroc"]), "pixel_ap": _round(m["ap"]), "aupro": _round(m["aupro"])}


def _write_scores(out_dir: Path, ids: list[str], labels: np.ndarray, scores: dict) -> None:
    """scores.csv: per image, its label and every score."""
    rows = [
        {"image": i, "label": int(labels[k]), **{m: f"{scores[m][k]:.8g}" for m in scores}}
        for k, i in enumerate(ids)
    ]
    write_csv_atomic(out_dir / "scores.csv", rows)
