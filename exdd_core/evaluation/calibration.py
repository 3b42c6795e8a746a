"""A deployment threshold learned from training data: the line has no labels, and a factory states its
tolerance as "flag at most 1 % of good parts" (design.md, "Calibrated threshold").

A seeded fraction of the normal training images (`eval.calibration_fraction`) is held out of the normal bank;
evaluate scores them against the banks built without them, and the threshold is set so that at most
`eval.target_fpr` of those held-out normals would be flagged. The test set's labels never touch it; the
F1-optimal threshold on the test set is still reported, named `oracle`, as a figure only.
"""

from __future__ import annotations

import math

import numpy as np

from exdd_core.banks.holdout import calibration_ids as calibration_ids


def threshold_at_fpr(normal_scores: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold that flags (score >= threshold) at most floor(target_fpr * n) of the n held-out
    normal scores: the (k+1)-th highest score, nudged up by one float so ties with it are not flagged."""
    s = np.sort(np.asarray(normal_scores, dtype=np.float64))[::-1]
    if s.size == 0:
        raise ValueError("no calibration scores: eval.calibration_fraction must hold out at least one image")
    k = min(math.floor(target_fpr * s.size + 1e-9), s.size - 1)
    return float(np.nextafter(s[k], np.inf))


def line_rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float | None]:
    """What the line would see at `threshold`: the false-alarm rate on normal test images and the miss rate
    on defective ones (None where the test set has no image of that class)."""
    labels = np.asarray(labels)
    flagged = np.asarray(scores) >= threshold
    normal, defective = labels == 0, labels == 1
    return {
        "false_alarm_rate": float(flagged[normal].mean()) if normal.any() else None,
        "miss_rate": float((~flagged[defective]).mean()) if defective.any() else None,
    }


def false_alarm_bound(flagged: int, n: int, confidence: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound on the false-alarm rate of new normal parts, from `flagged` of
    `n` held-out normals at the threshold: with `confidence`, the line's rate is at most this. Why: with few
    held-out images the observed rate (often 0) says little; the bound says how little (n = 4, 0 flagged:
    0.53). scipy's beta quantile does the numerics."""
    from scipy.stats import beta

    if n <= 0:
        raise ValueError("no held-out normals to bound a false-alarm rate with")
    if flagged >= n:
        return 1.0
    return float(beta.ppf(confidence, flagged + 1, n - flagged))
