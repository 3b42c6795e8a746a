"""Projection and greedy k-center coreset against plain references."""

import numpy as np
import pytest

from exdd_core.banks import coreset_size, greedy_coreset, greedy_lazy, greedy_plain, greedy_pruned
from exdd_core.features import project, projection_matrix
from exdd_core.runtime.choices import CORESET_METHODS


def coverage_radius(x: np.ndarray, selected: np.ndarray) -> float:
    """Reference: max over rows of the float64 distance to the nearest selected row."""
    x64 = x.astype(np.float64)
    return float(np.linalg.norm(x64[:, None, :] - x64[selected][None], axis=2).min(1).max())


def test_projection_unit_columns_seeded_and_pinned():
    a = projection_matrix(1536, 128, seed=0)
    assert a.shape == (1536, 128) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a.astype(np.float64), axis=0), 1.0, atol=1e-6)
    assert np.array_equal(a, projection_matrix(1536, 128, seed=0))
    assert not np.array_equal(a, projection_matrix(1536, 128, seed=1))
    # pinned values: the matrix must be identical on every machine for a seed (numpy PCG64 is portable)
    ref = np.random.default_rng([0, 0x5EED]).standard_normal((1536, 128))
    np.testing.assert_allclose(a[:3, :3], (ref / np.linalg.norm(ref, axis=0))[:3, :3], rtol=1e-6)
    x = np.random.default_rng(2).standard_normal((5, 1536)).astype(np.float32)
    np.testing.assert_allclose(
        project(x, a), x.astype(np.float64) @ a.astype(np.float64), rtol=1e-4, atol=1e-4
    )


def naive_greedy(x: np.ndarray, k: int, start: int) -> list[int]:
    """Obviously-correct farthest-point selection with explicit loops over points."""
    sel = [start]
    for _ in range(k - 1):
        best, best_d = -1, -1.0
        for p in range(len(x)):
            d = min(float(np.linalg.norm(x[p].astype(np.float64) - x[s])) for s in sel)
            if d > best_d:
                best, best_d = p, d
        sel.append(best)
    return sel


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_method_matches_naive(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((150, 6)).astype(np.float32)
    ref = naive_greedy(x, 25, start=7)
    assert greedy_plain(x, 25, 7).indices.tolist() == ref
    assert greedy_pruned(x, 25, 7).indices.tolist() == ref
    assert greedy_lazy(x, 25, 7, top=8, park=2).indices.tolist() == ref
    start_seed = next(s for s in range(100) if np.random.default_rng(s).integers(150) == 7)
    for method in CORESET_METHODS:  # auto on CPU is the lazy method; the public entry point of each
        assert greedy_coreset(x, 25, seed=start_seed, method=method).indices.tolist() == ref


@pytest.mark.parametrize("seed", [3, 4])
def test_pruned_equals_plain_on_clustered_data(seed):
    # clustered, low intrinsic dimension: the case where pruning actually skips work
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, 32)) * 5
    x = (centres[rng.integers(0, 12, 4000)] + rng.standard_normal((4000, 32)) * 0.3).astype(np.float32)
    plain = greedy_plain(x, 300, 11)
    pruned = greedy_pruned(x, 300, 11)
    assert np.array_equal(plain.indices, pruned.indices)
    assert plain.radius == pytest.approx(pruned.radius, rel=1e-6)
    assert pruned.radius == pytest.approx(coverage_radius(x, pruned.indices), rel=1e-4)


def test_radius_is_brute_force_coverage_and_shrinks():
    x = np.random.default_rng(5).standard_normal((500, 8)).astype(np.float32)
    radii = [greedy_coreset(x, k, seed=0).radius for k in (5, 20, 80)]
    assert radii[0] > radii[1] > radii[2]
    res = greedy_coreset(x, 20, seed=0)
    d = np.linalg.norm(x[:, None, :].astype(np.float64) - x[res.indices][None].astype(np.float64), axis=2)
    assert res.radius == pytest.approx(d.min(1).max(), rel=1e-5)
    assert len(set(res.indices.tolist())) == 20


def test_coreset_size_rules():
    assert coreset_size(100_000, 0.01, 1000) == 1000
    assert coreset_size(1_000_000, 0.01, 1000) == 10_000
    assert coreset_size(500, 0.1, 1000) == 500  # never more than the bank
    assert coreset_size(0, 0.1, 10) == 0
    with pytest.raises(ValueError, match="ratio"):
        coreset_size(10, 0.0, 1)
    with pytest.raises(ValueError, match="ratio"):
        coreset_size(10, 1.5, 1)


def test_seeded_start_and_nan_refused():
    x = np.random.default_rng(6).standard_normal((300, 4)).astype(np.float32)
    a = greedy_coreset(x, 10, seed=3)
    assert np.array_equal(a.indices, greedy_coreset(x, 10, seed=3).indices)
    assert a.indices[0] == np.random.default_rng(3).integers(300)
    x[5, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        greedy_coreset(x, 10)
