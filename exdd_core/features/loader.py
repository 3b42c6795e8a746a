"""Images for the feature stages, decoded in batches on a background thread while the backbone runs on the
current batch (decoding a 632 x 224 PNG and resizing it costs about a tenth of a WRN50 forward on a CPU, and
all of a GPU forward). A thread, not DataLoader worker processes: PIL and numpy release the GIL for the heavy
parts, and a worker process would import torch again and hold a second copy of it in memory."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exdd_core.data.imageio import load_image, load_mask
from exdd_core.data.records import ImageRecord


@dataclass
class Loaded:
    record: ImageRecord
    image: np.ndarray  # uint8 (H, W, 3) at image_size
    mask: np.ndarray | None  # bool (H, W) at image_size, when asked for and the record has one


def _load(records: list[ImageRecord], image_size: tuple[int, int], masks: bool) -> list[Loaded]:
    return [
        Loaded(
            r,
            load_image(Path(r.image_path), image_size),
            load_mask(Path(r.mask_path), image_size) if masks and r.mask_path is not None else None,
        )
        for r in records
    ]


def batches(
    records: list[ImageRecord], image_size: tuple[int, int], batch_size: int, masks: bool = False
) -> Iterator[list[Loaded]]:
    """Records in order, `batch_size` at a time, the next batch decoding while this one is used."""
    if batch_size < 1:
        raise ValueError(f"features.batch_size must be >= 1, got {batch_size}")
    chunks = [records[a : a + batch_size] for a in range(0, len(records), batch_size)]
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="exdd-decode") as pool:
        pending = pool.submit(_load, chunks[0], image_size, masks)
        for nxt in chunks[1:]:
            current = pending.result()
            pending = pool.submit(_load, nxt, image_size, masks)
            yield current
        yield pending.result()
