"""One feature store written by every rank of a torch.distributed group at once (or by one process), each
rank its own rows, straight into the final Zarr arrays: no per-rank stores and no merge after the fact.

Why by hand: Zarr allows parallel writers only of distinct chunks, and a rank's rows rarely start or end on a
chunk boundary. So the layout is planned before any feature is computed (every image's row count follows
from the grid and its mask: `extract.planned_rows`), and each rank knows its rows [start, stop). A rank
writes the chunks lying wholly inside its rows as they fill, on a background thread that overlaps the next
forward; the rows of a chunk it shares with a neighbour (at most one at each end of its span, per array) go
to a piece file in the staging folder. Once every rank is done, rank 0 writes those chunks from the pieces,
adds the attributes and publishes the store. The result is byte for byte the store `StoreWriter` writes in
one process (tests/test_sharded_store.py), whatever the number of ranks.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from exdd_core.features.store import FORMAT, INDEX_CHUNK_ROWS, CommitOnExit, chunk_rows_for
from exdd_core.runtime.atomic import PendingPath
from exdd_core.runtime.distributed import Ranks
from exdd_core.runtime.errors import InputError, RankStopped

PIECES = ".pieces"  # inside the staging folder: rows of shared chunks, removed before publishing
ARRAYS = ("features", "image_index", "position")
MAX_PENDING_WRITES = 2  # chunks handed to the write thread and not yet on disk (bounded memory)


def _create(tmp: Path, total: int, dim: int, dtype: np.dtype, chunk: int, index_chunk: int) -> None:
    """The empty arrays at their final shape: the same metadata `StoreWriter` leaves after appending."""
    group = zarr.open_group(zarr.storage.LocalStore(str(tmp)), mode="w")
    group.create_array("features", shape=(total, dim), dtype=dtype, chunks=(chunk, dim), compressors=None)
    group.create_array("image_index", shape=(total,), dtype="int32", chunks=(index_chunk,))
    group.create_array("position", shape=(total,), dtype="int32", chunks=(index_chunk,))
    (tmp / PIECES).mkdir()


def _broadcast(value: Any, ranks: Ranks) -> Any:
    if ranks.world == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _RowRange:
    """One array's rows [start, stop), emitted chunk by chunk as they arrive: a chunk wholly inside the range
    is written (by `submit`), the part of a chunk shared with another rank is saved as a piece."""

    def __init__(self, array: Any, name: str, start: int, stop: int, pieces: Path, submit: Callable) -> None:
        self.array, self.name, self.pieces, self.submit = array, name, pieces, submit
        self.chunk, self.total = int(array.chunks[0]), int(array.shape[0])
        self.stop = stop
        self.pos = start  # the first row not yet emitted
        self.buf: list[np.ndarray] = []
        self.buffered = 0

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self.buf.append(rows)
            self.buffered += len(rows)
        while self.buffered:
            cut = min((self.pos // self.chunk + 1) * self.chunk, self.stop)
            n = cut - self.pos
            if self.buffered < n:
                return
            data = self.buf[0] if len(self.buf) == 1 else np.concatenate(self.buf)
            segment, rest = data[:n], data[n:]
            self.buf, self.buffered = ([rest] if len(rest) else []), len(rest)
            a, self.pos = self.pos, cut
            if a % self.chunk == 0 and (cut - a == self.chunk or cut == self.total):
                self.submit(self.array.__setitem__, slice(a, cut), segment)
            else:
                self.submit(np.save, self.pieces / f"{self.name}.{a:012d}.npy", segment)
        if self.pos > self.stop:
            raise RuntimeError(f"{self.name}: rows past this rank's span (planned layout is wrong)")

    def check_complete(self) -> None:
        if self.pos != self.stop or self.buffered:
            raise RuntimeError(
                f"{self.name}: rows {self.pos} of a span ending at {self.stop} written (planned layout is wrong)"
            )


def _write_pieces(group: Any, pieces: Path) -> None:
    """Rank 0, after every rank: the shared chunks, each from its pieces in row order (checked contiguous)."""
    chunks: dict[tuple[str, int], list[tuple[int, Path]]] = defaultdict(list)
    for f in pieces.glob("*.npy"):
        name, start = f.stem.rsplit(".", 1)
        size = int(group[name].chunks[0])
        chunks[(name, int(start) // size * size)].append((int(start), f))
    for (name, c0), parts in sorted(chunks.items()):
        array = group[name]
        c1 = min(c0 + int(array.chunks[0]), int(array.shape[0]))
        datas, at = [], c0
        for start, f in sorted(parts):
            if start != at:
                raise RuntimeError(
                    f"{name}: chunk at row {c0} has a gap at row {at} (a rank's piece is missing)"
                )
            datas.append(np.load(f))
            at += len(datas[-1])
        if at != c1:
            raise RuntimeError(f"{name}: chunk at row {c0} ends at row {at}, expected {c1}")
        array[c0:c1] = np.concatenate(datas)


class ShardedStoreWriter(CommitOnExit):
    """This rank's images `span` = [lo, hi) of a store whose images and row `offsets` are planned; every rank
    of `ranks` creates one (collectively) and adds its images in order. Nothing is visible at `path` until
    `commit()` (or a clean `with`) on every rank."""

    def __init__(
        self,
        path: Path,
        dim: int,
        dtype: str,
        attrs: dict[str, Any],
        images: list[str],
        offsets: list[int],
        span: tuple[int, int],
        ranks: Ranks,
        chunk_rows: int | None = None,
        index_chunk_rows: int = INDEX_CHUNK_ROWS,
    ) -> None:
        self.path, self.ranks = Path(path), ranks
        self.dim, self.dtype = int(dim), np.dtype(dtype)
        self.attrs, self.images, self.offsets = dict(attrs), list(images), [int(o) for o in offsets]
        self.next_image, self.hi = span
        self._pending = PendingPath(self.path, directory=True) if ranks.main else None
        if self._pending is not None:
            chunk = chunk_rows or chunk_rows_for(self.dim, self.dtype.itemsize)
            _create(self._pending.tmp, self.offsets[-1], self.dim, self.dtype, chunk, index_chunk_rows)
        self.tmp = Path(_broadcast(str(self._pending.tmp) if self._pending else None, ranks))
        self.group = zarr.open_group(zarr.storage.LocalStore(str(self.tmp)), mode="r+")
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exdd-store-write")
        self._writes: list[Future] = []
        start, stop = self.offsets[span[0]], self.offsets[span[1]]
        self._ranges = {
            name: _RowRange(self.group[name], name, start, stop, self.tmp / PIECES, self._submit)
            for name in ARRAYS
        }
        self._done = False

    def _submit(self, fn: Callable, *args: Any) -> None:
        while len(self._writes) >= MAX_PENDING_WRITES:
            self._writes.pop(0).result()  # re-raises a failed write here
        self._writes.append(self._pool.submit(self._write, fn, *args))

    def _write(self, fn: Callable, *args: Any) -> None:
        """On the write thread. The staging folder gone means rank 0 aborted: another rank failed."""
        gone = RankStopped("the store's staging folder is gone: another rank failed (its error is above)")
        if not self.tmp.is_dir():
            raise gone
        try:
            fn(*args)
        except FileNotFoundError:
            if not self.tmp.is_dir():
                raise gone from None
            raise

    def add(self, image_id: str, rows: np.ndarray, positions: np.ndarray) -> None:
        """The next image of this rank's span: rows (n, dim) at grid positions (n,), n as planned."""
        i = self.next_image
        if i >= self.hi or self.images[i] != image_id:
            expected = self.images[i] if i < self.hi else "nothing (span complete)"
            raise RuntimeError(f"{image_id}: added out of order; this rank expected {expected}")
        n = self.offsets[i + 1] - self.offsets[i]
        rows = np.asarray(rows)
        if rows.shape != (n, self.dim) or len(positions) != n:
            raise RuntimeError(
                f"{image_id}: planned {n} rows of {self.dim}, got {rows.shape} (a bug upstream)"
            )
        if not np.isfinite(rows).all():
            raise InputError(
                f"{image_id}: features contain NaN or Inf (check the image and the backbone weights)"
            )
        self._ranges["features"].add(rows.astype(self.dtype, copy=False))
        self._ranges["image_index"].add(np.full(n, i, dtype=np.int32))
        self._ranges["position"].add(np.asarray(positions, dtype=np.int32))
        self.next_image += 1

    def commit(self) -> Path:
        """Finish this rank's rows; wait for every rank; rank 0 writes the shared chunks and publishes."""
        if self.next_image != self.hi:
            raise RuntimeError(
                f"{self.path}: this rank's span ends at image {self.hi}, {self.next_image} added"
            )
        for r in self._ranges.values():
            r.check_complete()
        for w in self._writes:
            w.result()
        self._pool.shutdown()
        if self.ranks.world > 1:
            import torch.distributed as dist

            dist.barrier()  # every rank's chunks and pieces are on disk
        if self._pending is not None:
            _write_pieces(self.group, self.tmp / PIECES)
            shutil.rmtree(self.tmp / PIECES)
            self.group.attrs.update(
                {
                    **self.attrs,
                    "format": FORMAT,
                    "images": self.images,
                    "offsets": self.offsets,
                    "dim": self.dim,
                }
            )
            self._pending.commit()
        self._done = True
        return self.path

    def abort(self) -> None:
        """Stop writing and remove the staging folder, on any rank: a rank that aborts fails the whole run
        (rank 0 publishes only after every rank reached `commit`), and a rank still writing after rank 0
        removed the folder would bring it back."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._pending is not None:
            self._pending.abort()
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
