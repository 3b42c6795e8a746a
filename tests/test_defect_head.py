"""The defect head (scoring.defect_head) against a plain scikit-learn pipeline, and its standardisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from exdd_core.scoring.defect_head import HEAD_C, DefectHead, fit_head, sample_rows


def rows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal rows around a shared positive mean (as ReLU features), defect rows shifted along 3 channels."""
    rng = np.random.default_rng(seed)
    normal = rng.normal(5.0, 1.0, (900, 12)).astype(np.float32)
    defect = rng.normal(5.0, 1.0, (60, 12)).astype(np.float32)
    defect[:, :3] += 2.5
    return normal, defect


@pytest.mark.parametrize("seed", [0, 1])
def test_head_is_the_standardised_logit_of_a_plain_pipeline(seed: int) -> None:
    normal, defect = rows(seed)
    head = fit_head(normal, defect, seed)
    assert head is not None
    ref = make_pipeline(
        StandardScaler(), LogisticRegression(C=HEAD_C, class_weight="balanced", max_iter=500, tol=1e-6)
    )
    x = np.concatenate([normal, defect]).astype(np.float64)
    ref.fit(x, np.r_[np.zeros(len(normal)), np.ones(len(defect))])
    raw = ref.decision_function(normal.astype(np.float64))
    centre, spread = np.median(raw), (np.quantile(raw, 0.99) - np.median(raw)) / 2.326
    probe = np.random.default_rng(seed + 7).normal(5.5, 1.5, (40, 12)).astype(np.float32)
    want = (ref.decision_function(probe.astype(np.float64)) - centre) / spread
    np.testing.assert_allclose(head.logits(torch.as_tensor(probe)).numpy(), want, rtol=1e-4, atol=1e-4)


def test_standardised_on_normal_rows_and_separates_defects() -> None:
    normal, defect = rows(2)
    head = fit_head(normal, defect, 0)
    assert head is not None
    zn, zd = head.logits(normal).numpy(), head.logits(defect).numpy()
    assert abs(np.median(zn)) < 1e-4
    assert np.quantile(zn, 0.99) == pytest.approx(2.326, rel=1e-3)
    assert np.median(zd) > 3.5  # most defect rows sit beyond 99.9 % of the normal rows


def test_no_evidence_no_head_and_round_trip() -> None:
    normal, defect = rows(3)
    assert fit_head(normal, defect[:1], 0) is None and fit_head(normal[:0], defect, 0) is None
    head = fit_head(normal, defect, 0)
    assert head is not None
    again = DefectHead.from_dict(head.to_dict())
    torch.testing.assert_close(again.logits(normal), head.logits(normal))


def test_a_floored_head_is_silent_on_every_calibration_row_and_keeps_its_direction() -> None:
    """head_floor calibration_max: z - max z over the calibration normals, streamed in blocks, in float64 by
    hand; relu of it is 0 on each of those rows, and the floor survives the card's round trip."""
    normal, defect = rows(4)
    head = fit_head(normal[:600], defect, 0)
    assert head is not None
    calibration = normal[600:]
    floored = head.with_floor([calibration[:100], calibration[100:0], calibration[100:]])
    w, b = head.weight.astype(np.float64), float(head.bias)
    top = (calibration.astype(np.float64) @ w + b).max()
    probe = np.concatenate([normal[:50], defect])
    want = probe.astype(np.float64) @ w + b - top
    np.testing.assert_allclose(floored.logits(probe).numpy(), want, rtol=1e-5, atol=1e-4)
    assert float(floored.logits(calibration).max()) == pytest.approx(0.0, abs=1e-4)
    assert floored.floor == pytest.approx(top, rel=1e-5) and top > 2.326  # beyond the 99 % of normal rows
    assert (floored.logits(defect).numpy() > 0).mean() > 0.3  # the strongest defect rows still fire
    again = DefectHead.from_dict(floored.to_dict())
    assert again.floor == floored.floor and head.with_floor([]) is head
    torch.testing.assert_close(again.logits(probe), floored.logits(probe))


def test_sample_rows_is_seeded_and_ordered() -> None:
    x = np.arange(100)[:, None]
    a, b = sample_rows(x, 10, 4), sample_rows(x, 10, 4)
    np.testing.assert_array_equal(a, b)
    assert len(a) == 10 and np.all(np.diff(a[:, 0]) > 0)
    assert sample_rows(x, 200, 4) is x


def test_model_scores_with_the_head_as_the_plain_formula() -> None:
    """ExddModel with form `head`: fused map = d_N / tau_N + lam * relu(z), image score its max; d_N from a
    brute-force nearest neighbour, z from the head's weights."""
    from exdd_core.scoring.model import ExddModel, ScoringSettings

    normal, defect = rows(4)
    head = fit_head(normal, defect, 0)
    assert head is not None
    scoring = {
        "mode": "fused", "neighbors": 2, "eps": 1e-6, "sigma": 1.0, "map_reweight": True, "map_8bit": False,
        "fusion": {"form": "head", "lam": 0.7, "topk": 1, "head": head.to_dict()},
    }  # fmt: skip
    model = ExddModel(normal[:300], defect[:40], ScoringSettings.from_params(scoring), (16, 20), (4, 5))
    image = np.random.default_rng(5).normal(5.0, 1.0, (20, 12)).astype(np.float32)
    image[7, :3] += 3.0  # one defect-like patch
    got = model.score(image)
    d_n = np.sqrt(((image[:, None, :].astype(np.float64) - normal[None, :300]) ** 2).sum(-1)).min(1)
    z = image.astype(np.float64) @ head.weight.astype(np.float64) + head.bias
    want = d_n / model.tau_n + 0.7 * np.maximum(z, 0.0)
    np.testing.assert_allclose(got.fused_map.reshape(-1), want, rtol=1e-4)
    assert got.exdd["fused"] == pytest.approx(want.max(), rel=1e-4)
    # without the head (lam 0 leaves none in fusion.json) the same settings give PatchCore's map / tau_N
    plain = {**scoring, "fusion": {**scoring["fusion"], "head": None}}
    base = ExddModel(normal[:300], defect[:40], ScoringSettings.from_params(plain), (16, 20), (4, 5))
    np.testing.assert_allclose(base.score(image).fused_map.reshape(-1), d_n / base.tau_n, rtol=1e-4)
