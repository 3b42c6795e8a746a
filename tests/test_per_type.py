"""Per defect type figures (evaluation.report.per_type) against scikit-learn and a plain count."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from exdd_core.evaluation.report import GroundTruth, per_type


def test_per_type_auroc_and_recall_match_a_plain_reference() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 12)
    types = [None] * 20 + ["crack"] * 5 + ["stain"] * 7
    scores = {"fused": rng.normal(0, 1, 32) + labels * np.r_[np.zeros(20), np.full(5, 2.0), np.full(7, 0.3)]}
    scores["patchcore"] = rng.normal(0, 1, 32)
    truth = GroundTruth(labels, np.zeros((32, 2, 2), bool), np.zeros(32, bool), types)
    thresholds = {"fused": 1.0, "patchcore": None}
    got = per_type(truth, scores, thresholds, "fused")["per_type"]
    assert list(got) == ["crack", "stain"]
    for kind, idx in (("crack", slice(20, 25)), ("stain", slice(25, 32))):
        keep = np.r_[np.arange(20), np.arange(32)[idx]]
        assert got[kind]["images"] == len(range(32)[idx])
        assert got[kind]["exdd"]["image_auroc"] == pytest.approx(
            roc_auc_score(labels[keep], scores["fused"][keep]), abs=1e-6
        )
        assert got[kind]["exdd"]["recall"] == pytest.approx(
            float(np.mean(scores["fused"][idx] >= 1.0)), abs=1e-6
        )
        assert got[kind]["patchcore"]["recall"] is None  # no threshold, no recall
    assert got["crack"]["exdd"]["image_auroc"] > got["stain"]["exdd"]["image_auroc"]
    untyped = GroundTruth(labels, np.zeros((32, 2, 2), bool), np.zeros(32, bool), [None] * 32)
    assert per_type(untyped, scores, thresholds, "fused") == {}
