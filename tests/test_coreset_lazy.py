"""The lazy greedy k-center against the plain loop: same picks and radius on the inputs that stress its rounds
(ties at a round's edge, duplicate and constant rows, parked rows that come back, far-from-origin rounding),
and its GEMM screen against exact distances. Small `top` / `park` make every path run on small inputs."""

import numpy as np
import pytest

from exdd_core.banks.greedy import greedy_plain, row_distances
from exdd_core.banks.lazy_greedy import _Screen, greedy_lazy

SETTINGS = [(2048, 8), (16, 1), (64, 4), (1, 1)]


def same_picks(x: np.ndarray, k: int, start: int) -> None:
    plain = greedy_plain(x, k, start)
    for top, park in SETTINGS:
        lazy = greedy_lazy(x, k, start, top=top, park=park)
        assert lazy.indices.tolist() == plain.indices.tolist(), (top, park)
        assert lazy.radius == plain.radius, (top, park)


@pytest.mark.parametrize("seed", [0, 1])
def test_low_dimensional_manifold(seed):
    rng = np.random.default_rng(seed)
    u = rng.uniform(-1, 1, (4000, 3))
    feats = np.concatenate([u, np.sin(2 * u), u**2], axis=1) @ rng.standard_normal((9, 48))
    x = (feats + 0.01 * rng.standard_normal(feats.shape)).astype(np.float32)
    same_picks(x, 300, 17)


def test_isotropic_noise():
    x = np.random.default_rng(4).standard_normal((3000, 64)).astype(np.float32)
    same_picks(x, 150, 5)


def test_duplicates_and_ties_pick_lowest_index():
    rng = np.random.default_rng(2)
    base = rng.integers(-3, 4, (60, 5)).astype(np.float32)  # integer grid: many exactly equal distances
    x = np.concatenate([base, base, base[:20]])
    same_picks(x, 50, 3)


def test_many_duplicates_of_the_farthest_row():
    # 500 copies of one far row: a round's top rows are all tied with the rows just outside them
    rng = np.random.default_rng(12)
    x = np.concatenate([rng.standard_normal((1500, 8)), np.full((500, 8), 9.0)]).astype(np.float32)
    rng.shuffle(x)
    same_picks(x, 40, 0)


@pytest.mark.parametrize("copies", [40, 3000])
def test_a_tie_wider_than_a_round_after_parking_starts(copies):
    # a group of equal rows wider than `top` reaches the top after the first round has set a park level:
    # no round can pick (its best equals tau), and the exact argmax must (it used to loop forever)
    rng = np.random.default_rng(14)
    x = np.concatenate(
        [
            rng.standard_normal((2000 if copies == 40 else 20000, 8)),
            20 * np.eye(8)[:1],
            np.tile(10 * np.eye(8)[1], (copies, 1)),
        ]
    ).astype(np.float32)
    plain = greedy_plain(x, 6, 0)
    for top, park in [(16, 4), (2048, 8)]:
        lazy = greedy_lazy(x, 6, 0, top=top, park=park)
        assert lazy.indices.tolist() == plain.indices.tolist() and lazy.radius == plain.radius


def test_zero_rows():
    # rows and picks at the origin: the screen's rounding slack is 0 there, and the best pair must stay
    rng = np.random.default_rng(15)
    x = np.concatenate([10 * np.eye(4)[:1] + 0.1 * rng.standard_normal((20, 4)), np.zeros((3, 4))]).astype(
        np.float32
    )
    same_picks(x, 6, 0)


def test_more_picks_than_distinct_rows_and_constant_rows():
    rng = np.random.default_rng(3)
    same_picks(np.repeat(rng.standard_normal((30, 4)).astype(np.float32), 4, axis=0), 45, 0)
    same_picks(np.ones((50, 3), dtype=np.float32), 5, 7)


def test_far_from_origin_rounding():
    rng = np.random.default_rng(6)
    x = (1000.0 + rng.standard_normal((3000, 16)) @ np.diag(np.geomspace(1, 1e-3, 16))).astype(np.float32)
    same_picks(x, 150, 11)


def test_clusters_with_background_park_and_return():
    # tight clusters plus a sparse background: background rows are parked early and needed late
    rng = np.random.default_rng(5)
    centres = rng.standard_normal((8, 24)) * 10
    clustered = centres[rng.integers(0, 8, 4000)] + 0.05 * rng.standard_normal((4000, 24))
    x = np.concatenate([clustered, rng.uniform(-15, 15, (300, 24))]).astype(np.float32)
    rng.shuffle(x)
    same_picks(x, 400, 9)


def test_every_row_and_bad_settings():
    x = np.random.default_rng(13).standard_normal((40, 3)).astype(np.float32)
    same_picks(x, 40, 1)
    assert len(greedy_lazy(x, 0, 0).indices) == 0
    with pytest.raises(ValueError, match="top and park"):
        greedy_lazy(x, 5, 0, top=0)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_screen_keeps_every_pair_that_gets_closer(offset):
    # every row's bound just above its distance to one of the picks: the screen must update every row to the
    # exact row_distances minimum over the picks, however many picks it is handed at once
    rng = np.random.default_rng(10)
    x = (offset + rng.standard_normal((3000, 40))).astype(np.float32)
    picks = np.array([7, 100, 2500, 9])
    exact = np.min([row_distances(x, x[p]) for p in picks], axis=0)
    ub = np.nextafter(exact, np.float32(np.inf))
    rows = np.sort(rng.choice(3000, 2000, replace=False))
    _Screen(x).apply(rows, picks, ub)
    assert np.array_equal(ub[rows], exact[rows])
    untouched = np.setdiff1d(np.arange(3000), rows)
    assert np.array_equal(ub[untouched], np.nextafter(exact, np.float32(np.inf))[untouched])
