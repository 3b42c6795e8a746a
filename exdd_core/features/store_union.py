"""Several feature stores read as one: a bank built from the pipeline's store plus the verdicts from the line.

Why not one store: the images confirmed on the line (data/feedback) get a store of their own, so a new
verdict re-embeds only its own images; the bank stages then read both stores through this view, which offers
the read interface of `Store` (images, offsets, attrs, blocks, take) over the rows of every part in order."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.features.store import Store, check_compatible
from exdd_core.runtime.errors import InputError


class StoreUnion:
    """The rows of `paths`' stores, part after part. Parts must share their feature space (COMPAT_KEYS) and
    have distinct image ids. attrs are the first part's, with the images, offsets and unmasked images of all,
    and `sources`: image count per part kind (e.g. {"normal": 34, "feedback_normal": 3})."""

    def __init__(self, paths: Sequence[Path]):
        if not paths:
            raise ValueError("StoreUnion needs at least one store")
        self.parts = [Store(p) for p in paths]
        first = self.parts[0]
        for p in self.parts[1:]:
            if len(p.images):  # an empty store (no verdicts yet) carries no rows to mismatch
                check_compatible(first.attrs, p.attrs, f"{first.path} and {p.path}")
        self.path = first.path
        self.images: list[str] = [i for p in self.parts for i in p.images]
        if len(set(self.images)) != len(self.images):
            seen = [p.path for p in self.parts]
            raise InputError(f"{', '.join(map(str, seen))}: the stores share image ids; each image once")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)
        self.offsets = np.concatenate(
            [first.offsets[:1]]
            + [p.offsets[1:] + s for p, s in zip(self.parts, self.starts[:-1], strict=True)]
        ).astype(np.int64)
        sources: dict[str, int] = {}
        for p in self.parts:
            kind = str(p.attrs.get("kind"))
            sources[kind] = sources.get(kind, 0) + len(p.images)
        unmasked = [i for p in self.parts for i in p.attrs.get("unmasked_images") or []]
        self.attrs: dict[str, Any] = {
            **first.attrs,
            "images": self.images,
            "offsets": self.offsets.tolist(),
            "unmasked_images": unmasked,
            "sources": sources,
        }

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def dim(self) -> int:
        return self.parts[0].dim

    def read_all(self, dtype=np.float32) -> np.ndarray:
        return np.concatenate([p.read_all(dtype) for p in self.parts])

    def read_rows(self, start: int, stop: int, dtype=np.float32) -> np.ndarray:
        out = [
            p.read_rows(max(0, start - s), min(len(p), stop - s), dtype)
            for p, s in zip(self.parts, self.starts[:-1], strict=True)
            if start < s + len(p) and stop > s
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype)

    def iter_blocks(
        self, block_rows: int | None = None, dtype=np.float32
    ) -> Iterator[tuple[int, np.ndarray]]:
        for p, s in zip(self.parts, self.starts[:-1], strict=True):
            for a, block in p.iter_blocks(block_rows, dtype):
                yield int(s) + a, block

    def iter_images(self, dtype=np.float32) -> Iterator[tuple[int, str, np.ndarray, np.ndarray]]:
        n = 0
        for p in self.parts:
            for i, image_id, rows, pos in p.iter_images(dtype):
                yield n + i, image_id, rows, pos
            n += len(p.images)

    def take(self, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        part = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows), self.dim), dtype=dtype)
        for k in np.unique(part):
            sel = part == k
            out[sel] = self.parts[k].take(rows[sel] - self.starts[k], dtype)
        return out


def open_stores(paths: Sequence[Path]) -> Store | StoreUnion:
    """One store as itself, several as their union."""
    return Store(paths[0]) if len(paths) == 1 else StoreUnion(paths)
