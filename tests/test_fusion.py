"""exdd_core.fusion against plain, obviously-correct references (loops over small random inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from exdd_core.scoring import fusion


def _ref_fused(
    dn: list[float],
    dp: list[float],
    tn: float,
    tp: float,
    lam: float,
    form: str,
    z: list[float] | None = None,
) -> list[float]:
    out = []
    for i, (a, b) in enumerate(zip(dn, dp, strict=True)):
        if form == "tau":
            g = max(0.0, 1.0 - b / tp)
        elif form == "margin":
            g = max(0.0, a - b) / tn
        else:
            g = max(0.0, z[i])  # type: ignore[index]
        out.append(a / tn + lam * g)
    return out


@pytest.mark.parametrize("form", fusion.FORMS)
@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_fused_map_matches_reference(form: str, lam: float) -> None:
    rng = np.random.default_rng(3)
    dn, dp, z = rng.uniform(0, 2, 50), rng.uniform(0, 2, 50), rng.normal(0, 2, 50)
    got = fusion.fused_map(torch.tensor(dn), torch.tensor(dp), 0.7, 0.4, lam, form, torch.tensor(z)).numpy()
    ref = _ref_fused(list(dn), list(dp), 0.7, 0.4, lam, form, list(z))
    np.testing.assert_allclose(got, ref, rtol=1e-9)


@pytest.mark.parametrize("form", fusion.FORMS)
def test_fused_reduces_to_patchcore_without_evidence(form: str) -> None:
    """Far-away (or absent) defect bank, or a head that sees nothing -> exactly d_N / tau_N, the PatchCore
    map up to a constant."""
    dn = torch.tensor([0.1, 0.5, 1.3])
    far = torch.tensor([10.0, 10.0, 10.0])
    quiet = torch.tensor([-0.5, -3.0, 0.0])  # the head's logit at or below the normal rows' median
    for dp in (None, far):
        got = fusion.fused_map(dn, dp, 0.5, 0.3, 3.0, form, quiet)
        torch.testing.assert_close(got, dn / 0.5)
    torch.testing.assert_close(fusion.fused_map(dn, far, 0.5, 0.3, 3.0, "head", None), dn / 0.5)


def test_head_form_needs_logits() -> None:
    with pytest.raises(ValueError, match="head_z"):
        fusion.defect_evidence(torch.ones(2), torch.ones(2), 1.0, 1.0, "head")


def test_evidence_is_non_negative_and_bounded_for_tau() -> None:
    rng = np.random.default_rng(4)
    dn, dp = torch.tensor(rng.uniform(0, 3, 200)), torch.tensor(rng.uniform(0, 3, 200))
    g = fusion.defect_evidence(dn, dp, 1.0, 0.8, "tau")
    assert torch.all(g >= 0) and torch.all(g <= 1)
    assert torch.all(fusion.defect_evidence(dn, dp, 1.0, 0.8, "margin") >= 0)
    with pytest.raises(ValueError):
        fusion.defect_evidence(dn, dp, 1.0, 0.8, "ratio")  # type: ignore[arg-type]


@pytest.mark.parametrize("k", [1, 3, 7, 1000])
def test_topk_mean(k: int) -> None:
    v = torch.tensor(np.random.default_rng(5).normal(size=(4, 5)))
    ref = float(np.mean(sorted(v.reshape(-1).tolist(), reverse=True)[: min(k, 20)]))
    assert fusion.topk_mean(v, k) == pytest.approx(ref, rel=1e-12)


def test_fused_scores_wiring() -> None:
    dn, dp = torch.tensor([0.2, 0.9, 0.4, 0.1]), torch.tensor([1.0, 1.0, 0.05, 1.0])
    s, m = fusion.fused_scores(dn, dp, (2, 2), tau_n=0.5, tau_p=0.1, lam=1.0, form="tau", topk=1)
    ref = _ref_fused(dn.tolist(), dp.tolist(), 0.5, 0.1, 1.0, "tau")
    np.testing.assert_allclose(m, np.array(ref).reshape(2, 2), rtol=1e-6)
    assert s == pytest.approx(max(ref), rel=1e-6)
    s0, m0 = fusion.fused_scores(dn, None, (2, 2), tau_n=0.5, tau_p=0.1, lam=1.0)
    assert s0 == pytest.approx(0.9 / 0.5) and m0.shape == (2, 2)


def test_select_by_cv_prefers_smaller_within_tolerance() -> None:
    table = {0.0: 0.70, 0.5: 0.798, 1.0: 0.80, 2.0: 0.79}
    assert fusion.select_by_cv(list(table), table.__getitem__, tol=0.005) == 0.5
    assert fusion.select_by_cv(list(table), table.__getitem__, tol=0.0) == 1.0
    flat = {0.0: 0.6, 1.0: 0.6}
    assert fusion.select_by_cv([1.0, 0.0], flat.__getitem__) == 0.0


def test_channel_weights_matches_loop() -> None:
    """The dev suite's channel metric (benchmarks/quality_scoring.py: measured, not adopted) against a loop."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from quality_scoring import channel_weights

    rng = np.random.default_rng(6)
    dres, nres = rng.normal(size=(7, 4)) * [3, 1, 1, 0.5], rng.normal(size=(30, 4))
    for gamma in (0.5, 1.0):
        raw = [
            ((sum(r[c] ** 2 for r in dres) / 7 + 1e-8) / (sum(r[c] ** 2 for r in nres) / 30 + 1e-8)) ** gamma
            for c in range(4)
        ]
        ref = np.array(raw) / np.mean(raw)
        got = channel_weights(torch.tensor(dres), torch.tensor(nres), gamma).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    ones = channel_weights(torch.tensor(dres), torch.tensor(nres), 0.0)
    torch.testing.assert_close(ones, torch.ones(4))
    empty = channel_weights(torch.zeros((0, 4)), torch.tensor(nres), 1.0)
    torch.testing.assert_close(empty, torch.ones(4))
