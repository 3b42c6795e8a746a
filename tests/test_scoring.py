"""Dual-bank scoring, reweighting and anomaly maps against a plain reference written out here."""

import math

import numpy as np
import pytest
import torch

from exdd_core.runtime.choices import RATIO_MODES as MODES
from exdd_core.scoring import ExddModel, ImageResult, ScoringSettings, reweight
from exdd_core.scoring.maps import anomaly_map, upsample

EPS = 1e-6


def score_rows(x, grid, bn, bp, b=3, eps=EPS, map_reweight=True) -> ImageResult:
    """The model's strategies on rows x against banks bn, bp (None: empty defect bank)."""
    bp = np.zeros((0, bn.shape[1]), np.float32) if bp is None else bp
    settings = ScoringSettings(neighbors=b, eps=eps, map_reweight=map_reweight)
    return ExddModel(bn, bp, settings, grid, grid).score(x)


def nn(x, bank):
    d = np.linalg.norm(x[:, None, :].astype(np.float64) - bank[None].astype(np.float64), axis=2)
    return d.min(1), d.argmin(1)


def bank_neighbours(bank, m, b):
    """b nearest entries of bank[m] in the bank, besides m itself."""
    d = np.linalg.norm(bank.astype(np.float64) - bank[m], axis=1)
    d[m] = np.inf
    return np.argsort(d, kind="stable")[:b]


def weight(x_patch, s, bank, m, b, positive):
    dim = bank.shape[1]
    num = math.exp(s / math.sqrt(dim))
    den = sum(
        math.exp(np.linalg.norm(x_patch - bank[j]) / math.sqrt(dim)) for j in bank_neighbours(bank, m, b)
    )
    return num / den if positive else 1.0 - num / den


def reference(x, bn, bp, b, map_reweight=True):
    """design.md, "The method" 8-9, one patch at a time."""
    dn, inn = nn(x, bn)
    dp, ip = nn(x, bp)
    js = int(np.argmax(dn))
    s_n = weight(x[js], dn[js], bn, inn[js], b, False) * dn[js]
    out = {}
    for mode, jp in (("paper", int(np.argmax(dp))), ("same_patch", js)):
        s_p = weight(x[jp], dp[jp], bp, ip[jp], b, True) * dp[jp]
        out[mode] = s_n / (s_p + EPS)
    ratio = np.empty(len(x))
    for j in range(len(x)):
        if map_reweight:
            wn = weight(x[j], dn[j], bn, inn[j], b, False)
            wp = weight(x[j], dp[j], bp, ip[j], b, True)
            ratio[j] = wn * dn[j] / (wp * dp[j] + EPS)
        else:
            ratio[j] = dn[j] / (dp[j] + EPS)
    out["max_ratio"] = ratio.max()
    return out, ratio, dn


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("map_reweight", [True, False])
def test_score_image_matches_reference(seed, b, map_reweight):
    rng = np.random.default_rng(seed)
    d = 12
    bn = rng.standard_normal((60, d)).astype(np.float32)
    bp = (rng.standard_normal((25, d)) + 1.5).astype(np.float32)
    x = (rng.standard_normal((4 * 5, d)) + rng.uniform(0, 1.5, (20, 1))).astype(np.float32)
    res = score_rows(x, (4, 5), bn, bp, b, EPS, map_reweight)
    ref, ratio, dn = reference(x, bn, bp, b, map_reweight)
    for mode in MODES:
        assert res.exdd[mode] == pytest.approx(ref[mode], rel=1e-4), mode
    np.testing.assert_allclose(res.ratio_map.ravel(), ratio, rtol=1e-4)
    np.testing.assert_allclose(res.normal_map.ravel(), dn, rtol=1e-5)
    assert res.patchcore == pytest.approx(dn.max(), rel=1e-5)
    assert not res.fallback


def test_reweight_bounds_and_stability():
    s = torch.tensor([2.0, 2.0])
    nbr = torch.tensor([[2.0, 2.0, 2.0], [2.0, 50.0, 80.0]])
    wn = reweight(s, nbr, 16, positive=False)
    wp = reweight(s, nbr, 16, positive=True)
    # neighbours as close as m*: w = 1 - 1/b; isolated m*: w_N -> 1, w_P -> 0
    assert wn[0].item() == pytest.approx(1 - 1 / 3, rel=1e-6)
    assert wp[0].item() == pytest.approx(1 / 3, rel=1e-6)
    assert wn[1] > wn[0] and wp[1] < wp[0]
    huge = reweight(torch.tensor([5000.0]), torch.tensor([[5000.0, 6000.0]]), 1, positive=True)
    assert torch.isfinite(huge).all()


def test_moving_a_patch_toward_banks_changes_ratio_the_right_way():
    rng = np.random.default_rng(7)
    d = 10
    bn = rng.standard_normal((50, d)).astype(np.float32)
    bp = (rng.standard_normal((20, d)) + 3.0).astype(np.float32)
    x = (rng.standard_normal((9, d)) * 0.5 + 1.5).astype(np.float32)
    base = score_rows(x, (3, 3), bn, bp).ratio_map.ravel()[4]
    for target, sign in ((bp[5], +1), (bn[9], -1)):
        prev = base
        for t in (0.3, 0.6, 0.9):
            y = x.copy()
            y[4] = (1 - t) * x[4] + t * target
            r = score_rows(y, (3, 3), bn, bp).ratio_map.ravel()[4]
            assert (r - prev) * sign > 0, (sign, t, r, prev)
            prev = r


def test_empty_defect_bank_falls_back_to_patchcore():
    rng = np.random.default_rng(3)
    bn = rng.standard_normal((30, 6)).astype(np.float32)
    x = rng.standard_normal((6, 6)).astype(np.float32)
    res = score_rows(x, (2, 3), bn, None)
    assert res.fallback and res.defect_map is None
    assert all(res.exdd[m] == res.patchcore for m in MODES)  # the paper's three modes
    assert res.exdd["fused"] == pytest.approx(res.patchcore / res.model.tau_n, rel=1e-6)
    np.testing.assert_array_equal(res.ratio_map, res.normal_map)


@pytest.mark.parametrize(
    ("grid", "size"), [((79, 28), (632, 224)), ((40, 14), (316, 112)), ((7, 5), (33, 17)), ((10, 8), (5, 4))]
)
def test_upsample_is_torch_bilinear(grid, size):
    """The numpy upsampling against torch's F.interpolate (bilinear, align_corners=False) on random maps."""
    import torch.nn.functional as F

    m = np.random.default_rng(grid[0]).normal(0, 10, grid).astype(np.float32)
    want = F.interpolate(torch.as_tensor(m)[None, None], size=size, mode="bilinear", align_corners=False)[
        0, 0
    ]
    np.testing.assert_allclose(upsample(m, size), want.numpy(), rtol=0, atol=1e-4)


def test_upsample_and_gaussian_map():
    g = np.arange(6, dtype=np.float32).reshape(2, 3)
    up = upsample(g, (4, 6))
    assert up.shape == (4, 6)
    # half-pixel centres: output (0,0) maps to source (-0.25,-0.25) -> clamped to the corner value
    assert up[0, 0] == pytest.approx(0.0) and up[-1, -1] == pytest.approx(5.0)
    assert up[0, 1] == pytest.approx(0.25)  # source x = 0.25 between 0 and 1
    m = anomaly_map(g, (40, 60), sigma=2.0)
    assert m.shape == (40, 60) and m.dtype == np.float32
    assert m.std() < upsample(g, (40, 60)).std()  # smoothing reduces variation
    assert np.array_equal(anomaly_map(g, (4, 6), sigma=0), up)
    q = anomaly_map(g, (40, 60), sigma=2.0, quantize_8bit=True)
    assert len(np.unique(q)) <= 256
    with pytest.raises(ValueError, match="sigma"):
        anomaly_map(g, (4, 6), sigma=-1)


def test_only_the_strategies_asked_for_give_the_same_scores():
    """`exdd score` asks for the reported mode and PatchCore only; they equal the full scoring's."""
    rng = np.random.default_rng(11)
    normal = rng.standard_normal((120, 8)).astype(np.float32)
    defect = (rng.standard_normal((40, 8)) + 2).astype(np.float32)
    model = ExddModel(normal, defect, ScoringSettings(neighbors=2), (32, 24), (4, 3))
    rows = rng.standard_normal((12, 8)).astype(np.float32)
    full, part = model.score(rows), model.score(rows, ("fused", "patchcore"))
    assert set(part.scores) == {"fused", "patchcore"} and part.ratio_map is None
    assert part.scores == {k: full.scores[k] for k in ("fused", "patchcore")}
    assert np.array_equal(part.exdd_map(), full.exdd_map())
    with pytest.raises(ValueError, match="unknown strategies"):
        model.score(rows, ("fused", "nope"))
