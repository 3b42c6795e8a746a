"""Greedy k-center with the rows sharded over the ranks of a torch.distributed group (gloo on CPUs, NCCL on
GPUs): for banks that do not fit one device. Each rank keeps its rows' distances to the coreset; a pick is
every rank's local farthest row, gathered, the global farthest taken (ties: the lowest global index, as
np.argmax), and the chosen row broadcast from its owner. Distances come from `greedy.row_distances`, so the
picks equal `greedy_plain`'s index for index. `knn_sharded` is the exact k-NN of such a bank: per-query top-k
of every shard, merged; `ShardedBank` puts it behind the `Bank` interface, so the one scoring model runs on a
bank no device holds whole (design.md, "Scaling past one process")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from exdd_core.banks.greedy import CoresetResult, row_distances
from exdd_core.banks.knn import Bank, neighbours_of_members
from exdd_core.runtime.distributed import shard_bounds as shard_bounds


def greedy_sharded(
    x_shard: np.ndarray,
    offset: int,
    n: int,
    k: int,
    start: int,
    progress: Callable[[int], None] | None = None,
) -> CoresetResult:
    """The greedy k-center of all n rows, this rank holding rows [offset, offset + len(x_shard)). Every rank
    calls it (a collective); every rank returns the same picks (global indices, pick order) and radius."""
    world = dist.get_world_size()
    x = np.ascontiguousarray(x_shard, dtype=np.float32)
    dim = x.shape[1]
    k = min(k, n)
    sel = np.empty(k, dtype=np.int64)

    def row_of(i: int) -> np.ndarray:
        """Row i (global) on every rank: its owner sends it; a sum with zeros from everyone else."""
        buf = torch.zeros(dim, dtype=torch.float32)
        if offset <= i < offset + len(x):
            buf += torch.from_numpy(x[i - offset])
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        return buf.numpy()

    sel[0] = start
    min_d = row_distances(x, row_of(start)) if len(x) else np.zeros(0, np.float32)
    for t in range(1, k):
        local = np.array([-1.0, float(n)], dtype=np.float64)  # (distance, -) of an empty shard never wins
        if len(min_d):
            j = int(np.argmax(min_d))
            local = np.array([float(min_d[j]), float(offset + j)], dtype=np.float64)
        gathered = [torch.zeros(2, dtype=torch.float64) for _ in range(world)]
        dist.all_gather(gathered, torch.from_numpy(local))
        cand = torch.stack(gathered).numpy()
        best = cand[:, 0].max()
        i = int(cand[cand[:, 0] == best, 1].min())  # ties: the lowest global index
        sel[t] = i
        if len(x):
            np.minimum(min_d, row_distances(x, row_of(i)), out=min_d)
        else:
            row_of(i)
        if progress is not None:
            progress(1)
    radius = torch.tensor([float(min_d.max()) if len(min_d) else 0.0], dtype=torch.float64)
    dist.all_reduce(radius, op=dist.ReduceOp.MAX)
    return CoresetResult(sel, float(radius.item()))


def knn_sharded(
    shard: Bank, offset: int, queries: torch.Tensor | np.ndarray, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest rows of a bank sharded over the ranks (this rank holds rows [offset, offset + len)):
    every rank searches its shard, the (distance, global index) candidates are gathered, and every rank keeps
    the k best per query (ties: the lower index, as one search of the whole bank). A collective: every rank
    calls it with the same queries. For banks that do not fit one device."""
    world = dist.get_world_size()
    q = torch.as_tensor(np.asarray(queries, dtype=np.float32)) if isinstance(queries, np.ndarray) else queries
    n = q.shape[0]
    kk = min(k, len(shard)) if len(shard) else 0
    d = torch.full((n, k), float("inf"))
    i = torch.full((n, k), -1, dtype=torch.long)
    if kk:
        dd, ii = shard.knn(q, kk)
        d[:, :kk], i[:, :kk] = dd.cpu(), ii.cpu() + offset
    ds = [torch.empty_like(d) for _ in range(world)]
    is_ = [torch.empty_like(i) for _ in range(world)]
    dist.all_gather(ds, d)
    dist.all_gather(is_, i)
    cat_d, cat_i = torch.cat(ds, 1), torch.cat(is_, 1)
    # sort by (distance, index): a stable sort by index first, then by distance
    by_index = torch.argsort(torch.where(cat_i < 0, torch.iinfo(torch.long).max, cat_i), dim=1, stable=True)
    cat_d, cat_i = torch.gather(cat_d, 1, by_index), torch.gather(cat_i, 1, by_index)
    order = torch.argsort(cat_d, dim=1, stable=True)[:, :k]
    return torch.gather(cat_d, 1, order), torch.gather(cat_i, 1, order)


class ShardedBank:
    """A memory bank whose rows are sharded over the ranks (this rank holds rows [offset, offset + len(rows))
    of n), with the interface scoring uses of a `Bank`: knn, take, distances, neighbours_of_members, len, dim,
    device.
    Every method is a collective: all ranks call it with the same arguments (they score the same images in
    the same order), and every rank gets the whole answer - the one a `Bank` of all n rows gives (ties in
    the k-NN: the lower index)."""

    def __init__(self, rows: np.ndarray | torch.Tensor, offset: int, n: int, device: str = "cpu") -> None:
        self.shard = Bank(rows, device)
        self.offset, self.n, self.device = int(offset), int(n), device

    def __len__(self) -> int:
        return self.n

    @property
    def dim(self) -> int:
        return self.shard.dim

    def knn(self, queries: np.ndarray | torch.Tensor, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        if self.n == 0:
            raise ValueError("cannot search an empty bank")
        q = queries.detach().float().cpu() if isinstance(queries, torch.Tensor) else queries
        d, i = knn_sharded(self.shard, self.offset, q, min(k, self.n))
        return d.to(self.device), i.to(self.device)

    def take(self, idx: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Rows at global indices `idx` (any shape) -> (*idx.shape, dim): each from its owner (a sum in which
        every other rank adds zeros)."""
        flat = torch.as_tensor(idx).reshape(-1).cpu()
        out = torch.zeros((len(flat), self.dim), dtype=torch.float32)
        mine = (flat >= self.offset) & (flat < self.offset + len(self.shard))
        if mine.any():
            out[mine] = self.shard.rows[(flat[mine] - self.offset).to(self.device)].cpu()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.reshape(*torch.as_tensor(idx).shape, self.dim).to(self.device)

    def distances(self, queries: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """|queries[i] - row idx[i, j]| -> (n, b), each computed by the row's owner: (n, b) floats cross the
        group instead of (n, b, d) rows (the reweighting needs them for every patch of every image)."""
        q, idx = queries.detach().float().cpu(), torch.as_tensor(idx).cpu()
        out = torch.zeros(idx.shape, dtype=torch.float32)
        mine = (idx >= self.offset) & (idx < self.offset + len(self.shard))
        if mine.any():
            qi = q[:, None, :].expand(-1, idx.shape[1], -1)[mine]  # (m, d): the query of each owned entry
            rows = self.shard.rows[(idx[mine] - self.offset).to(self.device)].cpu()
            out[mine] = torch.linalg.vector_norm(qi - rows, dim=-1)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(self.device)

    def neighbours_of_members(self, idx: torch.Tensor, b: int) -> torch.Tensor:
        return neighbours_of_members(self, idx, b)


def shard_stores(stores: tuple[Any, ...], world: int, rank: int, device: str) -> tuple[ShardedBank, ...]:
    """Each bank store as this rank's shard of it (rows read from the store: only the shard's), for a model
    whose every k-NN is then a collective of all ranks: the same scores as the whole banks."""
    out = []
    for store in stores:
        a, b = shard_bounds(len(store), world, rank)
        out.append(ShardedBank(store.read_rows(a, b), a, len(store), device))
    return tuple(out)


def sharded_selector(
    world: int, rank: int, projection_dim: int, seed: int
) -> Callable[..., CoresetResult | None]:
    """A coreset selection (`banks.build.Selector`) over the ranks of a group: each rank projects its
    contiguous shard of the candidates and `greedy_sharded` makes every pick a collective - the picks of the
    single-process greedy. Rank 0 gets the result; the others None."""
    from exdd_core.banks.build import project_store
    from exdd_core.banks.coreset import start_index

    def select(store: Any, candidates: np.ndarray, k: int) -> CoresetResult | None:
        n = len(candidates)
        lo, hi = shard_bounds(n, world, rank)
        shard = project_store(store, projection_dim, seed, candidates[lo:hi])
        res = greedy_sharded(shard, lo, n, k, start_index(n, seed))
        return res if rank == 0 else None

    return select
