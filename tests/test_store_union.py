"""A union of stores reads exactly as one store holding the same images in order, and a bank built from it is
the bank of that one store: what the bank stages rely on when they read the verdicts from the line."""

import numpy as np
import pytest

from exdd_core.banks.build import build_bank
from exdd_core.banks.knn import Bank
from exdd_core.banks.purify import defect_row_filter
from exdd_core.features.store import Store, StoreWriter
from exdd_core.features.store_union import StoreUnion
from exdd_core.runtime.errors import InputError, MismatchError

ATTRS = {"dtype": "float32", "backbone": "b", "grid": [2, 3]}


def write(path, images, rng, kind, unmasked=(), attrs=None):
    """A store of `images` (id -> row count) with random rows and positions; returns its rows."""
    rows_all = []
    a = {**ATTRS, "kind": kind, "unmasked_images": list(unmasked), **(attrs or {})}
    with StoreWriter(path, 5, "float32", a, chunk_rows=7) as w:
        for image_id, n in images.items():
            rows = rng.normal(size=(n, 5)).astype(np.float32)
            w.add(image_id, rows, rng.permutation(6)[:n].astype(np.int32) if n <= 6 else None)
            rows_all.append(rows)
    return np.concatenate(rows_all) if rows_all else np.zeros((0, 5), np.float32)


@pytest.fixture
def stores(tmp_path):
    rng = np.random.default_rng(0)
    a = write(tmp_path / "a.zarr", {"n0": 6, "n1": 4, "n2": 6, "n3": 5}, rng, "defect", unmasked=["n1"])
    e = write(tmp_path / "empty.zarr", {}, rng, "feedback_defect")
    b = write(tmp_path / "b.zarr", {"f0": 6, "f1": 3}, rng, "feedback_defect", unmasked=["f0"])
    return tmp_path, np.concatenate([a, e, b])


def test_union_reads_as_the_concatenated_store(stores):
    root, rows = stores
    u = StoreUnion([root / "a.zarr", root / "empty.zarr", root / "b.zarr"])
    assert len(u) == len(rows) == 30 and u.dim == 5
    assert u.images == ["n0", "n1", "n2", "n3", "f0", "f1"]
    assert u.offsets.tolist() == [0, 6, 10, 16, 21, 27, 30]
    assert u.attrs["unmasked_images"] == ["n1", "f0"]
    assert u.attrs["sources"] == {"defect": 4, "feedback_defect": 2}
    np.testing.assert_array_equal(u.read_all(), rows)
    np.testing.assert_array_equal(u.read_rows(4, 25), rows[4:25])
    idx = np.random.default_rng(1).permutation(30)[:17]
    np.testing.assert_array_equal(u.take(idx), rows[idx])
    blocks = list(u.iter_blocks())
    assert [a for a, _ in blocks] == sorted(a for a, _ in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), rows)
    for n, image_id, r, _ in u.iter_images():
        assert u.images[n] == image_id
        np.testing.assert_array_equal(r, rows[u.offsets[n] : u.offsets[n + 1]])
    one = Store(root / "a.zarr")
    np.testing.assert_array_equal(u.read_all()[:21], one.read_all())


def test_a_bank_of_the_union_is_the_bank_of_one_store_holding_it_all(stores, tmp_path):
    root, rows = stores
    u = StoreUnion([root / "a.zarr", root / "b.zarr"])
    with StoreWriter(root / "all.zarr", 5, "float32", {**ATTRS, "kind": "defect"}, chunk_rows=7) as w:
        for i, image_id in enumerate(u.images):
            w.add(image_id, rows[u.offsets[i] : u.offsets[i + 1]])
    common = dict(ratio=0.4, min_size=1, projection_dim=3, seed=0)
    a = build_bank(u, root / "bank_u.zarr", **common)
    b = build_bank(root / "all.zarr", root / "bank_one.zarr", **common)
    assert a["rows"] == b["rows"] and a["coverage_radius"] == pytest.approx(b["coverage_radius"])
    np.testing.assert_array_equal(
        Store(root / "bank_u.zarr").read_all(), Store(root / "bank_one.zarr").read_all()
    )
    assert Store(root / "bank_u.zarr").attrs["sources"] == {"defect": 4, "feedback_defect": 2}
    # pseudo-masks reach the unmasked images of every part
    f = defect_row_filter(
        u, Bank(np.random.default_rng(2).normal(size=(50, 5)).astype(np.float32)), None, 0.5
    )
    assert f.pseudo_candidates == 4 + 6


def test_parts_of_another_feature_space_or_sharing_ids_are_refused(tmp_path):
    rng = np.random.default_rng(0)
    write(tmp_path / "a.zarr", {"x": 3}, rng, "normal")
    write(tmp_path / "b.zarr", {"y": 3}, rng, "feedback_normal", attrs={"backbone": "other"})
    write(tmp_path / "c.zarr", {"x": 2}, rng, "feedback_normal")
    with pytest.raises(MismatchError, match="backbone"):
        StoreUnion([tmp_path / "a.zarr", tmp_path / "b.zarr"])
    with pytest.raises(InputError, match="share image ids"):
        StoreUnion([tmp_path / "a.zarr", tmp_path / "c.zarr"])
