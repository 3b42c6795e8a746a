"""Image-level metrics: AUROC / AP / F1-max, and downsampled ROC and precision-recall curves for DVC plots
(docs/design.md, "Evaluation"). Image-level data is small, so everything goes through scikit-learn, the
reference everybody compares against; the pixel-level metrics are in `pixel_metrics`.

Conventions shared by both modules:

- a sample (image or pixel) is predicted defective when its score is **≥** the threshold;
- ties are handled as scikit-learn does: only the last index of each group of equal scores is a curve point,
  so equal scores are always on the same side of a threshold;
- a metric that is undefined because only one class is present is returned as NaN without an exception or
  a warning, so that a pipeline run on a degenerate split still writes its ``metrics.json`` (NaN is a
  visible "undefined", where 0 or 0.5 would look like a real result);
- non-finite scores are a caller's bug and raise :class:`~exdd_core.runtime.errors.InputError` naming the
  argument.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from exdd_core.runtime.errors import InputError, ParamError

NAN = float("nan")


# --------------------------------------------------------------------------------------------------------
# input checks


def _binary_labels(labels: object, name: str) -> np.ndarray:
    """Labels as a 1-D bool array; anything but 0/1 (or bool) is refused rather than guessed at (a 0/255
    mask or a float probability passed by mistake would otherwise silently change every number)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} must hold 0/1 labels, got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][:5].tolist()
        raise InputError(f"{name} must hold only 0 and 1, found e.g. {bad}")
    return arr.astype(bool)


def _finite_scores(scores: object, name: str, n: int) -> np.ndarray:
    """Scores as a 1-D float64 array of length `n` (image level: small, so precision is free)."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be numeric: {e}") from e
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{name} has {arr.shape[0]} entries but labels has {n}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN/Inf value(s)")
    return arr


def _check_image_inputs(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = _binary_labels(labels, "labels")
    if y.size == 0:
        raise InputError("labels is empty: nothing to evaluate")
    s = _finite_scores(scores, "scores", y.size)
    return y, s


def downsample_indices(n: int, max_points: int) -> np.ndarray:
    """At most `max_points` evenly spread indices of 0..n-1, always keeping the first and the last (the
    curve's end points, which a plot must not lose)."""
    if max_points < 2:
        raise ParamError(f"max_points must be at least 2 (first and last point), got {max_points}")
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, num=max_points)).astype(np.int64))


def _above_max(scores: np.ndarray) -> float:
    """A finite threshold that predicts nothing defective: the next float above the highest score.
    scikit-learn uses +inf for the curve's first point, which strict JSON (DVC plots) cannot hold."""
    return float(np.nextafter(scores.max(), np.inf))


# --------------------------------------------------------------------------------------------------------
# image level


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image-level metrics of defect scores (higher = more defective) against 0/1 labels (1 = defective).

    Returns plain Python floats (ready for ``json.dump``):

    - ``auroc``: area under the ROC curve (scikit-learn; ties count half, constant scores give 0.5);
    - ``ap``: average precision (scikit-learn's step-wise sum, not the trapezoid, which is optimistic);
    - ``f1_max``: the best F1 over all thresholds of the precision–recall curve, i.e. what a perfectly
      tuned threshold would reach; ``f1_threshold``: the lowest threshold reaching it (score ≥ threshold
      means defective).

    If only one class is present all four are NaN: AUROC and AP are undefined, and an F1 on such a split
    would say nothing about separating the classes. No exception and no warning, so a degenerate split
    still produces a metrics file. Raises InputError for NaN/Inf scores, non-0/1 labels or a length
    mismatch.
    """
    y, s = _check_image_inputs(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return {"auroc": NAN, "ap": NAN, "f1_max": NAN, "f1_threshold": NAN}
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold; it can never be the F1 maximum anyway.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))  # thresholds ascend, so the first maximum is the lowest threshold
    return {
        "auroc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "f1_max": float(f1[best]),
        "f1_threshold": float(thresholds[best]),
    }


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 500) -> list[dict[str, float]]:
    """The image ROC curve as ``[{"fpr", "tpr", "threshold"}, ...]`` (fpr ascending) for DVC plots,
    evenly downsampled to at most `max_points` points keeping the first (0, 0) and the last (1, 1).

    The first point's threshold, +inf in scikit-learn, is replaced by the next float above the highest
    score (it predicts nothing defective either way) so the list is valid strict JSON. With only one class
    the curve is undefined and an empty list is returned.
    """
    y, s = _check_image_inputs(labels, scores)
    if y.all() or not y.any():
        return []
    fpr, tpr, thr = roc_curve(y, s)
    thr = thr.copy()
    thr[~np.isfinite(thr)] = _above_max(s)
    keep = downsample_indices(fpr.size, max_points)
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": float(thr[i])} for i in keep]


def pr_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 500) -> list[dict[str, float]]:
    """The image precision–recall curve as ``[{"recall", "precision", "threshold"}, ...]`` (recall
    ascending, i.e. threshold descending) for DVC plots, downsampled to at most `max_points` keeping both
    ends.

    scikit-learn's closing point (recall 0, precision 1) has no threshold; it gets the next float above the
    highest score, the threshold at which nothing is predicted defective. With only one class an empty list
    is returned, as for :func:`roc_points`.
    """
    y, s = _check_image_inputs(labels, scores)
    if y.all() or not y.any():
        return []
    precision, recall, thr = precision_recall_curve(y, s)
    thr = np.append(thr, _above_max(s))
    precision, recall, thr = precision[::-1], recall[::-1], thr[::-1]
    keep = downsample_indices(recall.size, max_points)
    return [
        {"recall": float(recall[i]), "precision": float(precision[i]), "threshold": float(thr[i])}
        for i in keep
    ]
