"""Which defect rows enter M_P (banks.purify) against a plain numpy reference, and build_bank honouring it."""

from __future__ import annotations

import numpy as np
import pytest

from exdd_core.banks import Bank, build_bank
from exdd_core.banks.purify import defect_row_filter, unmasked_rows
from exdd_core.features import Store, StoreWriter


def spacing(normal: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(normal[:, None].astype(np.float64) - normal[None], axis=2)
    np.fill_diagonal(d, np.inf)
    return d.min(1)


def make_store(tmp_path, rng) -> tuple[Store, np.ndarray]:
    """A defect store of 3 images: 'a' and 'b' masked, 'c' unmasked (all its patches stored)."""
    normal = rng.normal(size=(200, 6)).astype(np.float32)
    with StoreWriter(
        tmp_path / "defect.zarr", 6, "float32", {"unmasked_images": ["c"], "dtype": "float32"}
    ) as w:
        for name in "abc":
            near = normal[rng.choice(200, 10)] + 0.05 * rng.normal(size=(10, 6)).astype(np.float32)
            far = rng.normal(loc=3.0, size=(5, 6)).astype(np.float32)
            w.add(name, np.concatenate([near, far]))
    return Store(tmp_path / "defect.zarr"), normal


@pytest.mark.parametrize("purify", [None, 0.0, 0.5, 0.9])
@pytest.mark.parametrize("top", [0.1, 0.5, 1.0])
def test_filter_matches_reference(tmp_path, purify, top) -> None:
    store, normal = make_store(tmp_path, np.random.default_rng(0))
    f = defect_row_filter(store, Bank(normal), purify, top)
    rows = store.read_all().astype(np.float64)
    d_n = np.linalg.norm(rows[:, None] - normal[None].astype(np.float64), axis=2).min(1)
    unmasked = np.repeat([False, False, True], 15)
    want = np.ones(45, bool)
    if purify is not None:
        want[~unmasked] = d_n[~unmasked] >= np.quantile(spacing(normal), purify) * (1 - 1e-6)
    ranked = np.argsort(-d_n[unmasked], kind="stable")[: int(np.ceil(top * 15))]  # the image's top patches
    pseudo = np.zeros(15, bool)
    pseudo[ranked] = True
    want[unmasked] = pseudo & (d_n[unmasked] > np.median(spacing(normal)))
    assert np.array_equal(unmasked_rows(store), unmasked)
    assert np.array_equal(f.keep, want)
    assert f.pseudo_candidates == 15 and f.pseudo_kept == int(want[unmasked].sum())
    assert 0 < f.pseudo_kept <= min(5, int(np.ceil(top * 15)))  # only the 5 far rows are outside M_N
    assert f.masked_dropped == int((~want[~unmasked]).sum())


def test_build_bank_takes_only_kept_rows(tmp_path) -> None:
    store, _ = make_store(tmp_path, np.random.default_rng(1))
    keep = np.zeros(45, bool)
    keep[[3, 10, 20, 44]] = True
    res = build_bank(
        tmp_path / "defect.zarr",
        tmp_path / "bank.zarr",
        ratio=1.0,
        min_size=1,
        projection_dim=4,
        seed=0,
        keep=keep,
    )
    bank = Store(tmp_path / "bank.zarr")
    assert res["rows"] == 4 and res["candidate_rows"] == 4 and res["source_rows"] == 45
    np.testing.assert_array_equal(bank.read_all(), store.read_all()[[3, 10, 20, 44]])
    assert bank.images == ["a", "b", "c"]  # rows stay grouped under their source image
