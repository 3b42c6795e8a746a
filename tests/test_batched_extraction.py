"""Batched extraction: the rows a store holds do not depend on features.batch_size (CPU, fp32: 1e-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exdd_core.data import ImageRecord, save_png
from exdd_core.features import Embedder, Store, make_extractor, write_store
from exdd_core.features.loader import batches

SIZE = (64, 48)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[ImageRecord]:
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    out = []
    for i in range(11):  # not a multiple of 8: a short last batch
        img = root / f"im{i}.png"
        save_png(img, rng.integers(0, 256, (*SIZE, 3)).astype(np.uint8))
        mask = root / f"im{i}_GT.png"
        m = np.zeros(SIZE, bool)
        m[8 + i : 30 + i, 10:30] = True
        save_png(mask, m)
        out.append(ImageRecord(f"im{i}", "train", 1, img, None if i == 4 else mask))
    return out


@pytest.mark.parametrize("selection", ["all", "mask", "bbox_crop"])
def test_rows_identical_at_batch_1_and_8(records, tmp_path: Path, selection: str) -> None:
    features = {"patch_size": 3, "aggregation": "padded_bilinear", "store_dim": None, "dtype": "float32"}
    ex = make_extractor({"name": "resnet18", "weights": "random", "layers": [2, 3]}, features, 0, "cpu")
    common = dict(
        image_size=SIZE, features=features, seed=0, manifests=[], kind="defect", selection=selection
    )
    emb = Embedder.around(ex, common["features"], common["seed"])
    write_store(records, tmp_path / "b1.zarr", emb, batch_size=1, **common)
    write_store(records, tmp_path / "b8.zarr", emb, batch_size=8, **common)
    a, b = Store(tmp_path / "b1.zarr"), Store(tmp_path / "b8.zarr")
    assert a.images == b.images == [r.id for r in records] and list(a.offsets) == list(b.offsets)
    np.testing.assert_allclose(a.read_all(), b.read_all(), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(a.group["position"][:], b.group["position"][:])
    assert a.attrs["unmasked_images"] == (["im4"] if selection != "all" else [])


def test_batches_keep_order_and_sizes(records) -> None:
    got = list(batches(records, SIZE, 4, masks=True))
    assert [len(b) for b in got] == [4, 4, 3]
    assert [x.record.id for b in got for x in b] == [r.id for r in records]
    first = got[0][0]
    assert first.image.shape == (*SIZE, 3) and first.mask.dtype == bool and first.mask.any()
    assert got[1][0].record.id == "im4" and got[1][0].mask is None  # no mask file: None, not an error
    with pytest.raises(ValueError, match="batch_size"):
        list(batches(records, SIZE, 0))
