"""Defect-bank health against a plain numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from exdd_core.banks import Bank, defect_bank_health, normal_nn_scale


def reference(normal: np.ndarray, defect: np.ndarray, synthetic: np.ndarray) -> tuple[float, float, float]:
    nn = np.linalg.norm(normal[:, None].astype(np.float64) - normal[None], axis=2)
    np.fill_diagonal(nn, np.inf)
    scale = float(np.median(nn.min(1)))
    d = np.linalg.norm(defect[:, None].astype(np.float64) - normal[None], axis=2).min(1)
    bg = d < scale
    return scale, float(bg.mean()), float(bg[synthetic].mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_health_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    normal = rng.normal(size=(300, 12)).astype(np.float32)
    # half the defect rows are near-copies of normal rows (background), half far away (real defects)
    near = normal[rng.choice(300, 40)] + 0.01 * rng.normal(size=(40, 12)).astype(np.float32)
    far = rng.normal(loc=4.0, size=(40, 12)).astype(np.float32)
    defect = np.concatenate([near, far])
    synthetic = rng.random(80) < 0.5
    h = defect_bank_health(Bank(normal), defect, synthetic)
    scale, share, syn_share = reference(normal, defect, synthetic)
    assert h.normal_nn_scale == pytest.approx(scale, rel=1e-5)
    assert h.background_share == pytest.approx(share) and h.background_share == pytest.approx(0.5)
    assert h.synthetic_background_share == pytest.approx(syn_share)
    assert h.defect_rows == 80 and h.synthetic_rows == int(synthetic.sum()) and not h.mostly_background


def test_scale_ignores_duplicates_of_the_row_itself_and_samples_large_banks() -> None:
    rng = np.random.default_rng(3)
    normal = rng.normal(size=(50, 4)).astype(np.float32)
    doubled = np.concatenate([normal, normal])  # every row has an exact twin: the nearest other is at 0
    assert normal_nn_scale(Bank(doubled)) == 0.0
    big = rng.normal(size=(3000, 4)).astype(np.float32)
    full = normal_nn_scale(Bank(big), sample=3000)
    assert normal_nn_scale(Bank(big), sample=500) == pytest.approx(full, rel=0.1)


def test_empty_defect_bank_and_no_synthetic_rows() -> None:
    normal = np.random.default_rng(4).normal(size=(20, 3)).astype(np.float32)
    h = defect_bank_health(Bank(normal), np.zeros((0, 3), np.float32), np.zeros(0, bool))
    assert h.defect_rows == 0 and h.background_share is None
    h = defect_bank_health(Bank(normal), normal[:5] + 100, np.zeros(5, bool))
    assert h.background_share == 0.0 and h.synthetic_background_share is None
