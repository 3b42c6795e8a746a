"""Every test image through the model: scores of every mode, both maps at image size, labels and masks. On
one process, or sharded over the ranks of a torch.distributed group (design.md, "Scaling past one process"):
each rank scores a contiguous shard of the test images and rank 0 gathers them, in order, into the arrays one
process computes (the banks are the same on every rank, so every image gets the same scores either way)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from exdd_core.data.imageio import load_mask
from exdd_core.data.records import ImageRecord
from exdd_core.features.store import Store
from exdd_core.runtime.choices import SCORE_MODES
from exdd_core.runtime.distributed import Ranks, shard_bounds
from exdd_core.scoring.model import ExddModel

SCORE_KEYS = (*SCORE_MODES, "patchcore", "patchcore_reweighted")


@dataclass
class TestSetScores:
    labels: np.ndarray  # int64 (n,)
    scores: dict[str, np.ndarray]  # SCORE_KEYS -> float64 (n,)
    maps_exdd: np.ndarray  # float32 (n, H, W): the reported mode's map
    maps_pc: np.ndarray  # float32 (n, H, W): d_N, PatchCore's map
    masks: np.ndarray  # bool (n, H, W)
    has_mask: np.ndarray  # bool (n,)

    @classmethod
    def concatenate(cls, parts: list[TestSetScores]) -> TestSetScores:
        return cls(
            np.concatenate([p.labels for p in parts]),
            {k: np.concatenate([p.scores[k] for p in parts]) for k in SCORE_KEYS},
            np.concatenate([p.maps_exdd for p in parts]),
            np.concatenate([p.maps_pc for p in parts]),
            np.concatenate([p.masks for p in parts]),
            np.concatenate([p.has_mask for p in parts]),
        )


def _score_range(
    model: ExddModel, store: Store, records: dict[str, ImageRecord], lo: int, hi: int, progress: Callable
) -> TestSetScores:
    n, size = hi - lo, model.image_size
    out = TestSetScores(
        np.empty(n, dtype=np.int64),
        {k: np.empty(n) for k in SCORE_KEYS},
        np.empty((n, *size), dtype=np.float32),
        np.empty((n, *size), dtype=np.float32),
        np.zeros((n, *size), dtype=bool),
        np.zeros(n, dtype=bool),
    )
    images = ((i, image_id, rows) for i, image_id, rows, _ in store.iter_images() if lo <= i < hi)
    for i, image_id, rows in progress(images, "evaluate", n):
        k, rec = i - lo, records[image_id]
        scored = model.score(rows)
        out.labels[k] = rec.label
        for key in SCORE_KEYS:
            out.scores[key][k] = scored.scores[key]
        out.maps_exdd[k] = scored.exdd_map()
        out.maps_pc[k] = scored.patchcore_map()
        if rec.mask_path is not None:
            out.masks[k] = load_mask(rec.mask_path, size)
            out.has_mask[k] = True
    return out


def score_test_set(
    model: ExddModel,
    store: Store,
    records: dict[str, ImageRecord],
    progress: Callable = lambda it, desc, total: it,
    ranks: Ranks | None = None,
) -> TestSetScores | None:
    """The whole test set's scores (None on ranks other than 0 when sharded)."""
    n = len(store.images)
    if ranks is None or ranks.world == 1:
        return _score_range(model, store, records, 0, n, progress)
    import torch.distributed as dist

    lo, hi = shard_bounds(n, ranks.world, ranks.rank)
    mine = _score_range(model, store, records, lo, hi, progress)
    parts: list[TestSetScores] | None = [None] * ranks.world if ranks.main else None  # type: ignore[list-item]
    dist.gather_object(mine, parts, dst=0)
    return TestSetScores.concatenate(parts) if ranks.main else None
