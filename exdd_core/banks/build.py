"""Memory-bank construction: stream a feature store, project for selection, greedy k-center, gather rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from exdd_core.banks.coreset import coreset_size, greedy_coreset
from exdd_core.features.projection import project, projection_matrix
from exdd_core.features.store import Store, StoreWriter


def project_store(store: Store, dim: int, seed: int) -> np.ndarray:
    """All rows of the store projected to `dim` (float32), one chunk in memory at a time.

    If the store already holds rows of at most `dim` dimensions (features.store_dim), they are used as is.
    """
    if store.dim <= dim:
        return store.read_all()
    mat = projection_matrix(store.dim, dim, seed)
    out = np.empty((len(store), dim), dtype=np.float32)
    for a, block in store.iter_blocks():
        out[a : a + len(block)] = project(block, mat)
    return out


def build_bank(
    features_path: Path,
    out: Path,
    *,
    ratio: float,
    min_size: int,
    projection_dim: int,
    seed: int,
    method: str = "auto",
    device: str = "cpu",
    counter: Callable | None = None,
    keep: np.ndarray | None = None,
) -> dict:
    """Select the coreset of a feature store (of its rows where `keep` (rows,) is True, when given: see
    banks.purify) and write it as a bank store. Returns a summary."""
    store = Store(features_path)
    candidates = np.arange(len(store)) if keep is None else np.flatnonzero(keep)
    n = len(candidates)
    k = coreset_size(n, ratio, min_size)
    attrs = {
        **{k_: v for k_, v in store.attrs.items() if k_ not in ("images", "offsets", "format", "dim")},
        "kind": f"bank:{store.attrs.get('kind')}",
        "source_rows": len(store),
        "candidate_rows": n,
        "source_images": len(store.images),
        "coreset_ratio": ratio,
        "coreset_min_size": min_size,
        "coreset_projection_dim": projection_dim,
        "coreset_seed": seed,
    }
    if n == 0:
        with StoreWriter(
            out, store.dim, store.attrs.get("dtype", "float16"), {**attrs, "coverage_radius": None}
        ) as w:
            w.add("bank", np.zeros((0, store.dim), np.float32))
        return {"rows": 0, "source_rows": len(store), "candidate_rows": 0, "coverage_radius": None}
    proj = project_store(store, projection_dim, seed)
    if keep is not None:
        proj = proj[candidates]
    if counter is not None:
        with counter("coreset picks", k) as advance:
            advance(1)  # the seeded random start is the first pick
            res = greedy_coreset(proj, k, seed=seed, method=method, device=device, progress=advance)
    else:
        res = greedy_coreset(proj, k, seed=seed, method=method, device=device)
    del proj
    order = candidates[np.sort(res.indices)]
    rows = store.take(order)
    attrs["coverage_radius"] = res.radius
    attrs["coverage_space"] = f"projection to {min(projection_dim, store.dim)} dims"
    # Rows stay in source order, grouped under the source image they came from (the bank's `images`): so a
    # bank can tell which of its rows are synthetic (banks.health). `position` is the source row index.
    source = np.searchsorted(store.offsets, order, side="right") - 1
    cuts = np.flatnonzero(np.diff(source)) + 1
    with StoreWriter(out, store.dim, store.attrs.get("dtype", "float16"), attrs) as w:
        for a, b in zip([0, *cuts], [*cuts, len(order)], strict=True):
            w.add(store.images[int(source[a])], rows[a:b], order[a:b].astype(np.int32))
    return {"rows": k, "source_rows": len(store), "candidate_rows": n, "coverage_radius": res.radius}
