"""The pruned greedy k-center against the plain loop in the cases that stress its bounds and bookkeeping:
ties and duplicate rows, data where pruning cannot work (its plain-pass fallback), far-from-origin data (float
rounding of the bounds), and a coreset as large as the number of distinct rows."""

import numpy as np
import pytest

from exdd_core.banks.full_pass import FullPass
from exdd_core.banks.greedy import greedy_plain, row_distances
from exdd_core.banks.pruned import _Screen, _sq_dists, greedy_pruned


def same_picks(x: np.ndarray, k: int, start: int) -> None:
    plain = greedy_plain(x, k, start)
    pruned = greedy_pruned(x, k, start)
    assert pruned.indices.tolist() == plain.indices.tolist()
    assert pruned.radius == plain.radius


@pytest.mark.parametrize("seed", [0, 1])
def test_low_dimensional_manifold(seed):
    # a curved 3-d sheet in 48 dims plus a little noise: the case pruning is built for
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (6000, 3))
    w = rng.standard_normal((9, 48))
    feats = np.concatenate([u, np.sin(2 * u), u**2], axis=1) @ w
    x = (feats + 0.01 * rng.standard_normal(feats.shape)).astype(np.float32)
    same_picks(x, 400, 17)


def test_duplicates_and_ties_pick_lowest_index():
    rng = np.random.default_rng(2)
    base = rng.integers(-3, 4, (60, 5)).astype(np.float32)  # integer grid: many exactly equal distances
    x = np.concatenate([base, base, base[:20]])  # every row duplicated
    same_picks(x, 50, 3)


def test_coreset_larger_than_distinct_rows():
    rng = np.random.default_rng(3)
    x = np.repeat(rng.standard_normal((30, 4)).astype(np.float32), 4, axis=0)  # 30 distinct rows
    same_picks(x, 45, 0)  # radius reaches 0 after 30 picks; then picks repeat like the plain loop's


def test_isotropic_noise_uses_the_plain_fallback():
    # 64-d Gaussian noise: the bounds prune almost nothing, every pick falls back to a plain pass
    x = np.random.default_rng(4).standard_normal((3000, 64)).astype(np.float32)
    same_picks(x, 120, 5)


def test_mixed_structure_switches_between_modes():
    # tight clusters plus a uniform background: early picks chase the background, later ones prune
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((8, 24)) * 10
    clustered = centres[rng.integers(0, 8, 5000)] + 0.05 * rng.standard_normal((5000, 24))
    background = rng.uniform(-15, 15, (300, 24))
    x = np.concatenate([clustered, background]).astype(np.float32)
    rng.shuffle(x)
    same_picks(x, 500, 9)


def test_far_from_origin_rounding():
    # large common offset: small differences between long vectors, where float32 bounds are most fragile
    rng = np.random.default_rng(6)
    x = (1000.0 + rng.standard_normal((4000, 16)) @ np.diag(np.geomspace(1, 1e-3, 16))).astype(np.float32)
    same_picks(x, 200, 11)


@pytest.mark.parametrize("offset", [0.0, 50.0])
def test_screen_lower_bounds_never_exceed_true_distances(offset):
    rng = np.random.default_rng(7)
    x = (offset + rng.standard_normal((2000, 32)) * np.geomspace(3, 0.01, 32)).astype(np.float32)
    s = _Screen(x, 8)
    for c in (0, 5, 1999):
        true = np.linalg.norm(x.astype(np.float64) - x[c].astype(np.float64), axis=1)
        assert np.all(s.lower(s.z, s.z[c]) <= true)
        md = (true / 1.0001).astype(np.float32)  # a min_d just below the true distance: must be kept
        assert s.may_be_closer(s.z.copy(), s.z[c], md, 1.0).all()


def test_row_distances_do_not_depend_on_the_batch():
    # the pruned method computes subsets, the plain loop all rows: each row's value must be bit-identical
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5000, 128)).astype(np.float32)
    full = row_distances(x, x[3])
    idx = np.sort(rng.choice(5000, 700, replace=False))
    assert np.array_equal(row_distances(x[idx], x[3]), full[idx])
    assert np.array_equal(row_distances(np.take(x, idx, axis=0), x[3], overwrite=True), full[idx])
    assert np.array_equal(row_distances(x[1:2], x[3]), full[1:2])


def test_full_pass_fallback_far_from_origin():
    # noise around a far point: the GEMV form's bound is loose there, so it must defer to exact distances
    x = (300.0 + np.random.default_rng(9).standard_normal((1500, 32))).astype(np.float32)
    same_picks(x, 80, 2)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_full_pass_keeps_every_row_that_gets_closer(offset):
    rng = np.random.default_rng(10)
    x = (offset + rng.standard_normal((3000, 40))).astype(np.float32)
    fp = FullPass(x)
    perm = rng.permutation(3000)
    exact = row_distances(x, x[7])
    min_d = np.nextafter(exact, np.float32(np.inf))[perm]  # every row just farther than the new centre
    moved, d = fp.update(x, perm, 7, min_d, 1.0)
    assert np.array_equal(np.sort(moved), np.arange(3000))
    assert np.array_equal(d, exact[perm[moved]])


@pytest.mark.parametrize("shape", [(0, 4), (3, 4), (1001, 4), (77, 16), (5, 1), (40, 7)])
def test_sq_dists_matches_plain_formula(shape):
    rng = np.random.default_rng(11)
    rows = rng.standard_normal(shape).astype(np.float32)
    c = rng.standard_normal(shape[1]).astype(np.float32)
    ref = ((rows.astype(np.float64) - c) ** 2).sum(1)
    np.testing.assert_allclose(_sq_dists(rows.copy(), c), ref, rtol=1e-5, atol=1e-6)
