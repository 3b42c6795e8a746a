"""Memory-bank construction: stream a feature store, project for selection, greedy k-center, gather rows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.banks.coreset import coreset_size, greedy_coreset
from exdd_core.banks.greedy import CoresetResult
from exdd_core.features.projection import project, projection_matrix
from exdd_core.features.store import Store, StoreWriter
from exdd_core.features.store_union import StoreUnion


def project_store(store: Store, dim: int, seed: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The store's rows (all, or the sorted row indices `rows`) projected to `dim` (float32), one chunk in
    memory at a time. Each chunk is projected whole, so a row's projection is the same bits whichever rows
    are asked for (a sharded coreset must see the values one process sees).

    If the store already holds rows of at most `dim` dimensions (features.store_dim), they are used as is.
    """
    wanted = np.arange(len(store)) if rows is None else np.asarray(rows, dtype=np.int64)
    if store.dim <= dim:
        return store.read_all() if rows is None else store.take(wanted)
    mat = projection_matrix(store.dim, dim, seed)
    out = np.empty((len(wanted), dim), dtype=np.float32)
    for a, block in store.iter_blocks():
        lo, hi = np.searchsorted(wanted, [a, a + len(block)])
        if hi > lo:
            out[lo:hi] = project(block, mat)[wanted[lo:hi] - a]
    return out


def coreset_rows(
    store: Store, candidates: np.ndarray, ratio: float, min_size: int, **select: Any
) -> np.ndarray:
    """The rows (float32) of the coreset of the store's rows `candidates` (sorted indices), selected as
    build_bank selects them (`select`: projection_dim, seed, method, device): for the banks cross-fitting
    builds without a fold (scoring.crossfit)."""
    n = len(candidates)
    if n == 0:
        return np.zeros((0, store.dim), np.float32)
    proj = project_store(store, select["projection_dim"], select["seed"], candidates)
    k = coreset_size(n, ratio, min_size)
    res = _select(proj, k, select["seed"], select.get("method", "auto"), select.get("device", "cpu"), None)
    return store.take(candidates[np.sort(res.indices)])


# A coreset selection: (store, its candidate rows (sorted indices), k) -> the picks among the candidates, or
# None on a rank that takes part in a sharded selection without writing (banks.distributed.sharded_selector).
Selector = Callable[[Store, np.ndarray, int], CoresetResult | None]


def local_selector(
    projection_dim: int,
    seed: int,
    method: str = "auto",
    device: str = "cpu",
    counter: Callable | None = None,
    all_rows: bool = False,
) -> Selector:
    """Project the candidates (every row when `all_rows`) and run `greedy_coreset` in this process."""

    def select(store: Store, candidates: np.ndarray, k: int) -> CoresetResult:
        proj = project_store(store, projection_dim, seed, None if all_rows else candidates)
        return _select(proj, k, seed, method, device, counter)

    return select


def _select(proj: np.ndarray, k: int, seed: int, method: str, device: str, counter: Callable | None):
    """The coreset of the projected rows, with a progress bar of the picks when `counter` is given."""
    if counter is None:
        return greedy_coreset(proj, k, seed=seed, method=method, device=device)
    with counter("coreset picks", k) as advance:
        advance(1)  # the seeded random start is the first pick
        return greedy_coreset(proj, k, seed=seed, method=method, device=device, progress=advance)


def build_bank(
    features: Path | Store | StoreUnion,
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
    selector: Selector | None = None,
) -> dict:
    """Select the coreset of a feature store, or of several read as one (features.store_union: the pipeline's
    store and the verdicts from the line), of its rows where `keep` (rows,) is True when given (see
    banks.purify), and write it as a bank store. Returns a summary.

    `selector` picks the coreset: by default one process projects the candidates and runs `greedy_coreset`
    (`method`, `device`, progress through `counter`); `banks.distributed.sharded_selector` spreads the rows
    over the ranks of a group (the same picks), and returns None on ranks other than 0, which write nothing."""
    store = Store(features) if isinstance(features, (str, Path)) else features
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
    if selector is None:
        selector = local_selector(projection_dim, seed, method, device, counter, all_rows=keep is None)
    res = selector(store, candidates, k)
    if res is None:  # a rank other than 0 of a sharded selection: rank 0 writes the bank
        return {"rows": k, "source_rows": len(store), "candidate_rows": n, "coverage_radius": None}
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
