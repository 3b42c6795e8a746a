"""Zarr stores: streaming writes read back exactly, atomic commit, chunk sizing, provenance checks."""

import numpy as np
import pytest

from exdd_core.features.store import Store, StoreWriter, check_compatible, chunk_rows_for
from exdd_core.runtime import InputError, MismatchError


def make_images(seed=0, n=23, dim=8):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((int(rng.integers(0, 40)), dim)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize("chunk_rows", [7, 64, 4096])
def test_roundtrip_image_by_image_across_chunks(tmp_path, chunk_rows):
    imgs = make_images()
    with StoreWriter(tmp_path / "s.zarr", 8, "float32", {"backbone": "x"}, chunk_rows=chunk_rows) as w:
        for i, x in enumerate(imgs):
            w.add(f"im{i}", x, np.arange(len(x)) * 2)
    s = Store(tmp_path / "s.zarr")
    assert len(s) == sum(len(x) for x in imgs) and s.attrs["backbone"] == "x"
    assert s.features.chunks[0] == chunk_rows
    seen = 0
    for i, image_id, rows, pos in s.iter_images():
        assert image_id == f"im{i}"
        assert np.array_equal(rows, imgs[i])
        assert np.array_equal(pos, np.arange(len(imgs[i])) * 2)
        seen += 1
    assert seen == len(imgs)
    flat = np.concatenate(imgs)
    idx = np.random.default_rng(1).integers(0, len(flat), 50)
    assert np.array_equal(s.take(idx), flat[idx])
    assert np.array_equal(np.concatenate([b for _, b in s.iter_blocks()]), flat)


def test_float16_storage_and_nan_refused(tmp_path):
    x = np.random.default_rng(2).standard_normal((10, 4)).astype(np.float32)
    with StoreWriter(tmp_path / "h.zarr", 4) as w:
        w.add("a", x)
    np.testing.assert_allclose(Store(tmp_path / "h.zarr").read_all(), x, rtol=1e-3, atol=1e-3)
    w = StoreWriter(tmp_path / "n.zarr", 4)
    x[3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        w.add("bad", x)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), StoreWriter(tmp_path / "s.zarr", 3, chunk_rows=2) as w:
        w.add("a", np.ones((5, 3), np.float32))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match="not a Zarr feature store"):
        Store(tmp_path / "s.zarr")


def test_chunk_sizing_keeps_ksdd2_store_under_1000_files():
    rows = chunk_rows_for(1536, 2)
    assert rows * 1536 * 2 >= 1 << 20  # chunks of at least 1 MB
    assert -(-4_600_000 // rows) < 1000
    assert chunk_rows_for(128, 2) * 128 * 2 >= 1 << 20


def test_check_compatible_names_the_mismatch():
    a = {"backbone": "wide_resnet50_2", "image_size": [632, 224], "grid": [79, 28]}
    check_compatible(a, dict(a), "x")
    with pytest.raises(MismatchError, match=r"image_size: \[632, 224\] vs \[316, 112\]"):
        check_compatible(a, {**a, "image_size": [316, 112]}, "test features and bank")
