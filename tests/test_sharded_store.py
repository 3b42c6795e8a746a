"""One store written by several ranks at once (features.sharded_store): byte for byte the store one process
writes with StoreWriter, whatever the number of ranks and however their spans cut the chunks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from exdd_core.features import Store, StoreWriter
from exdd_core.features.sharded_store import ShardedStoreWriter
from exdd_core.runtime import Ranks, distributed
from tests import dist_worker

PORTS = range(29700, 29750)
CHUNKS = (7, 5)  # features and index chunk rows: small, so that every span shares chunks with its neighbours


def images(seed: int = 0, n: int = 13, dim: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 9, n)
    counts[3] = 0  # an image without rows (a defect image whose mask covers no cell)
    rows = rng.standard_normal((int(counts.sum()), dim)).astype(np.float32)
    positions = rng.integers(0, 100, len(rows)).astype(np.int32)
    return counts, rows, positions


def reference(path: Path, counts, rows, positions) -> None:
    with StoreWriter(path, rows.shape[1], "float32", {"backbone": "x"}, CHUNKS[0], CHUNKS[1]) as w:
        at = 0
        for i, c in enumerate(counts):
            w.add(f"im{i}", rows[at : at + c], positions[at : at + c])
            at += c


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_one_process_writes_the_store_writer_store_byte_for_byte(tmp_path: Path) -> None:
    counts, rows, positions = images()
    reference(tmp_path / "ref.zarr", counts, rows, positions)
    offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
    ids = [f"im{i}" for i in range(len(counts))]
    with ShardedStoreWriter(
        tmp_path / "one.zarr", 6, "float32", {"backbone": "x"}, ids, offsets, (0, len(ids)), Ranks(0, 1, 0),
        chunk_rows=CHUNKS[0], index_chunk_rows=CHUNKS[1],
    ) as w:  # fmt: skip
        for i in range(len(ids)):
            w.add(ids[i], rows[offsets[i] : offsets[i + 1]], positions[offsets[i] : offsets[i + 1]])
    assert files(tmp_path / "one.zarr") == files(tmp_path / "ref.zarr")
    got = Store(tmp_path / "one.zarr")
    np.testing.assert_array_equal(got.read_all(), rows)  # and the reference itself holds the rows
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.zarr", "ref.zarr"]  # no staging left


def test_planned_layout_is_enforced_and_a_failure_leaves_nothing(tmp_path: Path) -> None:
    offsets, ids = [0, 3, 5], ["a", "b"]

    def writer() -> ShardedStoreWriter:
        return ShardedStoreWriter(tmp_path / "s.zarr", 2, "float32", {}, ids, offsets, (0, 2), Ranks(0, 1, 0))

    with pytest.raises(RuntimeError, match="out of order"), writer() as w:
        w.add("b", np.zeros((2, 2)), np.arange(2))
    with pytest.raises(RuntimeError, match="planned 3 rows"), writer() as w:
        w.add("a", np.zeros((4, 2)), np.arange(4))
    with pytest.raises(RuntimeError, match="span ends at image 2"), writer() as w:
        w.add("a", np.zeros((3, 2)), np.arange(3))
        w.commit()
    assert list(tmp_path.iterdir()) == []  # no store, no staging folder


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_write_the_one_process_store_byte_for_byte(tmp_path: Path, world: int) -> None:
    counts, rows, positions = images(seed=world)
    reference(tmp_path / "ref.zarr", counts, rows, positions)
    np.savez(tmp_path / "data.npz", counts=counts, rows=rows, positions=positions)
    mp.start_processes(
        dist_worker.sharded_store,
        args=(
            world,
            distributed.free_port(PORTS),
            str(tmp_path / "data.npz"),
            str(tmp_path / "ranks.zarr"),
            CHUNKS,
        ),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    assert files(tmp_path / "ranks.zarr") == files(tmp_path / "ref.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "ranks.zarr", "ref.zarr"]
