"""The deployment threshold from held-out normal training images, against plain references and the binomial
tolerance of its false-alarm rate on fresh normals."""

from __future__ import annotations

import math

import numpy as np
import pytest

from exdd_core.evaluation.calibration import calibration_ids, line_rates, threshold_at_fpr


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.2, 0.5])
@pytest.mark.parametrize("ties", [False, True])
def test_threshold_flags_at_most_target_and_is_the_lowest_such(target: float, ties: bool) -> None:
    rng = np.random.default_rng(7)
    s = rng.normal(size=200)
    if ties:
        s = np.round(s, 1)
    t = threshold_at_fpr(s, target)
    allowed = int(np.floor(target * len(s) + 1e-9))
    assert (s >= t).sum() <= allowed
    # the lowest: every distinct score below t would flag more than allowed
    below = np.unique(s[s < t])
    assert below.size == 0 or (s >= below.max()).sum() > allowed


def binomial_tolerance(n: int, p: float, z: float = 3.0) -> float:
    """z standard deviations of an observed rate of n Bernoulli(p) trials: how far a measured false-alarm
    rate may sit from the target by chance alone."""
    return z * math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def test_false_alarm_rate_on_fresh_normals_within_binomial_tolerance() -> None:
    """Calibrate on 2,000 held-out normal scores at a 5 % target; 5,000 fresh normals from the same
    distribution are flagged at 5 % within the binomial tolerance of both samples."""
    rng = np.random.default_rng(0)
    for trial in range(5):
        held_out = rng.gamma(2.0, 1.0, 2000)
        t = threshold_at_fpr(held_out, 0.05)
        fresh = rng.gamma(2.0, 1.0, 5000)
        rates = line_rates(np.zeros(5000, int), fresh, t)
        tol = binomial_tolerance(2000, 0.05) + binomial_tolerance(5000, 0.05)
        assert abs(rates["false_alarm_rate"] - 0.05) <= tol, (trial, rates)


def test_line_rates_against_counting() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.9, 0.2, 0.95, 0.3, 0.6])
    assert line_rates(labels, scores, 0.55) == {"false_alarm_rate": 0.25, "miss_rate": 1 / 3}
    assert line_rates(np.zeros(2, int), np.ones(2), 0.5)["miss_rate"] is None


def test_calibration_ids_seeded_and_never_all() -> None:
    ids = [f"n{i}" for i in range(40)]
    a = calibration_ids(ids, 0.1, seed=0)
    assert len(a) == 4 and a == calibration_ids(ids, 0.1, seed=0) and a != calibration_ids(ids, 0.1, seed=1)
    assert calibration_ids(ids, 0.0, seed=0) == set() and len(calibration_ids(ids[:2], 0.9, 0)) == 1
    assert len(calibration_ids(ids[:3], 0.01, 0)) == 1  # at least one


@pytest.mark.parametrize(("flagged", "n"), [(0, 4), (0, 30), (1, 30), (3, 200), (7, 7)])
def test_false_alarm_bound_is_the_exact_one_sided_clopper_pearson(flagged: int, n: int) -> None:
    """Against scipy's exact binomial interval (two-sided 90 % = one-sided 95 % upper), and by its meaning:
    at the bound, seeing `flagged` or fewer alarms has probability 5 %."""
    from scipy.stats import binom, binomtest

    from exdd_core.evaluation.calibration import false_alarm_bound

    got = false_alarm_bound(flagged, n)
    assert got == pytest.approx(binomtest(flagged, n).proportion_ci(0.90, method="exact").high, rel=1e-9)
    if flagged < n:
        assert binom.cdf(flagged, n, got) == pytest.approx(0.05, abs=1e-9)
    assert false_alarm_bound(0, 4) == pytest.approx(1 - 0.05 ** (1 / 4), rel=1e-12)  # (1 - p)^n = 0.05
