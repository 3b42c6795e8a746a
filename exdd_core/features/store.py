"""Zarr stores of patch features and memory banks, written by streaming and committed atomically.

Layout of a store (a Zarr v3 group):

    features     (rows, dim)  float16/float32, chunked by rows (>= ~16 MB a chunk, so a KSDD2-sized store of
                              4.6 M rows x 1536 stays well under 1,000 files)
    image_index  (rows,)      int32: which image (index into attrs["images"]) each row comes from
    position     (rows,)      int32: flat grid position h * grid_w + w of the row
    attrs        provenance (backbone, weights, layers, patch size, image size, grid, projection seed, stored
                 dim, source manifest hash, ...), the image ids and each image's row offsets

A writer fills a `runtime.atomic.PendingPath` beside `<path>` and renames it to `<path>` only when complete, so an
interrupted stage never leaves a half store where DVC would cache it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr

from exdd_core.features.provenance import COMPAT_KEYS, INFO_KEYS  # noqa: F401 (INFO_KEYS re-exported)
from exdd_core.runtime.atomic import PendingPath
from exdd_core.runtime.errors import InputError, MismatchError

FORMAT = "exdd-features/1"
TARGET_CHUNK_BYTES = 24 << 20
INDEX_CHUNK_ROWS = 1 << 20


def chunk_rows_for(dim: int, itemsize: int) -> int:
    """Rows per chunk: the power of two nearest above TARGET_CHUNK_BYTES / row bytes (>= 1 MB by design)."""
    rows = max(1, math.ceil(TARGET_CHUNK_BYTES / (dim * itemsize)))
    return 1 << (rows - 1).bit_length()


W = TypeVar("W", bound="CommitOnExit")


class CommitOnExit:
    """A writer used as a context manager: a clean `with` commits (unless `commit()` already ran), an
    exception aborts. Subclasses set `_done` when committed."""

    _done = False

    def commit(self) -> Path:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError

    def __enter__(self: W) -> W:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self._done:
            try:
                self.commit()
            except BaseException:  # a commit that fails (a write, a peer rank) leaves nothing behind either
                self.abort()
                raise
        elif exc_type is not None:
            self.abort()


class StoreWriter(CommitOnExit):
    """Append patch rows image by image; nothing is visible at `path` until `commit()` (or a clean `with`)."""

    def __init__(
        self,
        path: Path,
        dim: int,
        dtype: str = "float16",
        attrs: dict[str, Any] | None = None,
        chunk_rows: int | None = None,
        index_chunk_rows: int = INDEX_CHUNK_ROWS,
    ):
        self.path = Path(path)
        self._pending = PendingPath(self.path, directory=True)
        self.tmp = self._pending.tmp
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        self.chunk_rows = chunk_rows or chunk_rows_for(self.dim, self.dtype.itemsize)
        self.attrs = dict(attrs or {})
        self.group = zarr.open_group(zarr.storage.LocalStore(str(self.tmp)), mode="w")
        self.features = self.group.create_array(
            "features",
            shape=(0, self.dim),
            dtype=self.dtype,
            chunks=(self.chunk_rows, self.dim),
            compressors=None,
        )
        self.image_index = self.group.create_array(
            "image_index", shape=(0,), dtype="int32", chunks=(index_chunk_rows,)
        )
        self.position = self.group.create_array(
            "position", shape=(0,), dtype="int32", chunks=(index_chunk_rows,)
        )
        self.images: list[str] = []
        self.offsets: list[int] = [0]
        self._buf: list[np.ndarray] = []
        self._buf_idx: list[np.ndarray] = []
        self._buf_pos: list[np.ndarray] = []
        self._buffered = 0
        self._done = False

    @property
    def rows(self) -> int:
        return self.offsets[-1]

    def add(self, image_id: str, rows: np.ndarray, positions: np.ndarray | None = None) -> None:
        """Add one image's rows (n, dim). Rows must be finite: a NaN here is a bug upstream, caught early."""
        rows = np.asarray(rows)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"{image_id}: expected rows of shape (n, {self.dim}), got {rows.shape}")
        if not np.isfinite(rows).all():
            raise InputError(
                f"{image_id}: features contain NaN or Inf (check the image and the backbone weights)"
            )
        n = len(rows)
        if positions is None:
            positions = np.arange(n, dtype=np.int32)
        self.images.append(image_id)
        self.offsets.append(self.offsets[-1] + n)
        self._buf.append(rows.astype(self.dtype, copy=False))
        self._buf_idx.append(np.full(n, len(self.images) - 1, dtype=np.int32))
        self._buf_pos.append(np.asarray(positions, dtype=np.int32))
        self._buffered += n
        if self._buffered >= self.chunk_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self._buffered:
            return
        data = np.concatenate(self._buf)
        idx = np.concatenate(self._buf_idx)
        pos = np.concatenate(self._buf_pos)
        # write whole chunks only (each chunk is written once); keep the remainder for later
        n = len(data) if final else (len(data) // self.chunk_rows) * self.chunk_rows
        if n:
            self.features.append(data[:n], axis=0)
            self.image_index.append(idx[:n], axis=0)
            self.position.append(pos[:n], axis=0)
        self._buf, self._buf_idx, self._buf_pos = [data[n:]], [idx[n:]], [pos[n:]]
        self._buffered = len(data) - n

    def commit(self) -> Path:
        """Write the remaining rows and the attributes, then move the store into place."""
        self._flush(final=True)
        self.group.attrs.update(
            {**self.attrs, "format": FORMAT, "images": self.images, "offsets": self.offsets, "dim": self.dim}
        )
        self._pending.commit()
        self._done = True
        return self.path

    def abort(self) -> None:
        self._pending.abort()


class Store:
    """Read access to a feature store or bank, streaming by chunk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise InputError(f"{self.path}: not a Zarr feature store (run the stage that writes it first)")
        self.group = zarr.open_group(zarr.storage.LocalStore(str(self.path), read_only=True), mode="r")
        self.attrs: dict[str, Any] = dict(self.group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise InputError(
                f"{self.path}: unknown store format {self.attrs.get('format')!r}, expected {FORMAT}"
            )
        self.features = self.group["features"]
        self.images: list[str] = list(self.attrs["images"])
        self.offsets = np.asarray(self.attrs["offsets"], dtype=np.int64)

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def read_all(self, dtype=np.float32) -> np.ndarray:
        """The whole features array in memory: only for banks and small stores."""
        return np.asarray(self.features[:], dtype=dtype)

    def read_rows(self, start: int, stop: int, dtype=np.float32) -> np.ndarray:
        """Rows [start, stop) in memory: one rank's shard of a bank."""
        return np.asarray(self.features[start:stop], dtype=dtype)

    def iter_blocks(
        self, block_rows: int | None = None, dtype=np.float32
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(start_row, rows) in chunk-aligned blocks: bounded memory for any store size."""
        step = block_rows or int(self.features.chunks[0])
        for a in range(0, len(self), step):
            yield a, np.asarray(self.features[a : a + step], dtype=dtype)

    def iter_images(self, dtype=np.float32) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
        """(image number, image id, rows, positions) in store order, reading each chunk once."""
        positions = np.asarray(self.group["position"][:])
        block_start, block = 0, np.empty((0, self.dim), dtype=dtype)
        blocks = self.iter_blocks(dtype=dtype)
        for i, image_id in enumerate(self.images):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            while b > block_start + len(block):
                nxt_start, nxt = next(blocks)
                keep = block[max(0, a - block_start) :]
                block_start = nxt_start - len(keep)
                block = np.concatenate([keep, nxt]) if len(keep) else nxt
            yield i, image_id, block[a - block_start : b - block_start], positions[a:b]

    def take(self, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Rows by index (any order), reading only the chunks that hold them."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows)
        out = np.empty((len(rows), self.dim), dtype=dtype)
        if len(rows):
            out[order] = np.asarray(
                self.features.get_orthogonal_selection((rows[order], slice(None))), dtype=dtype
            )
        return out


def check_compatible(reference: dict[str, Any], other: dict[str, Any], what: str, keys=COMPAT_KEYS) -> None:
    """Refuse to combine artifacts whose provenance differs on any key that changes the feature space."""
    diffs = [
        f"{k}: {reference.get(k)!r} vs {other.get(k)!r}" for k in keys if reference.get(k) != other.get(k)
    ]
    if diffs:
        raise MismatchError(f"{what} were built with different settings: " + "; ".join(diffs))
