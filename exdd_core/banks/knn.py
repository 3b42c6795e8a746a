"""Exact k-nearest-neighbour search of query patches in a memory bank, chunked so memory stays bounded."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def as_float32(x: np.ndarray | torch.Tensor, device: str) -> torch.Tensor:
    """float32 tensor on `device`. Tensors are moved by torch, never through numpy: a CUDA tensor (the queries
    the model's evidence passes, the bank's own rows for its neighbour table) cannot be turned into a numpy array."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(device=device, dtype=torch.float32)
    return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)


# Candidates beyond k that the fast GEMM form ranks, re-ranked by the exact distance. The GEMM form's
# rounding can swap near neighbours (|b|^2 and 2 q.b are large next to the gaps between them); measured on
# rows with a shared mean 20 and spread 0.05 (256-d), it picked the wrong nearest row for 355 of 2,000
# queries, by up to 2 % of the distance. Centring plus 8 re-ranked candidates: none (tests/test_knn.py).
RERANK_EXTRA = 8
_CENTRE_CHUNK = 16384  # rows per step when centring the bank's squared norms (bounded memory at init)
_RERANK_FLOATS = 1 << 22  # candidate-row floats gathered per re-rank step (16 MB)
_WINDOW_QUERIES = 256  # near-tie queries per exact window search: (256 x bank_chunk) floats at a time
_UNIT_ROUNDOFF = float(torch.finfo(torch.float32).eps) / 2


class Bank:
    """A memory bank held on a device. The GEMM ranking works on rows centred on the bank's mean (distances
    do not change; the terms, and so their rounding, shrink to the bank's spread), with the centred squared
    norms precomputed."""

    def __init__(self, rows: np.ndarray | torch.Tensor, device: str = "cpu") -> None:
        self.rows = as_float32(rows, device)
        self.device = device
        n, dim = self.rows.shape
        self.centre = self.rows.mean(0) if n else torch.zeros(dim, device=device)
        self.sq = torch.empty(n, dtype=torch.float32, device=device)
        for a in range(0, n, _CENTRE_CHUNK):
            c = self.rows[a : a + _CENTRE_CHUNK] - self.centre
            self.sq[a : a + _CENTRE_CHUNK] = (c * c).sum(1)
        self.sq_max = float(self.sq.max()) if n else 0.0  # the ranking's rounding bound scales with it

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def dim(self) -> int:
        return int(self.rows.shape[1])

    def take(self, idx: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Bank rows at indices `idx` (any shape) -> (*idx.shape, dim): how scoring reads rows, so that a bank
        sharded over ranks (banks.distributed.ShardedBank) can stand in for this one."""
        return self.rows[torch.as_tensor(idx, device=self.device)]

    def distances(self, queries: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """|queries[i] - row idx[i, j]| for queries (n, d) and bank indices idx (n, b) -> (n, b)."""
        return torch.linalg.vector_norm(queries[:, None, :] - self.take(idx), dim=-1)

    def knn(
        self, queries: np.ndarray | torch.Tensor, k: int = 1, bank_chunk: int = 16384, query_chunk: int = 4096
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances (q, k) ascending and indices (q, k) of the k nearest bank rows to each query (ties: the
        lower index).

        Memory is bounded by query_chunk x bank_chunk floats whatever the sizes (256 MB at the defaults; a
        larger bank chunk is not faster on CPU, measured). Candidates are ranked by |b|^2 - 2 q.b on centred
        rows, one fused GEMM (addmm) per chunk - |q|^2 is the same for every candidate of a query, so it is
        left out (2-3 % of a 2,212 x 46,000 x 1,536 search on CPU, measured; the GEMM itself is the rest); the
        k + RERANK_EXTRA best are re-ranked by the exact |q - b|, which is also the distance returned (for
        k = 1 only where the ranking's rounding could have swapped them: `_nearest`).
        """
        q_all = as_float32(queries, self.device)
        if q_all.ndim != 2 or q_all.shape[1] != self.dim:
            raise ValueError(f"queries must be (n, {self.dim}), got {tuple(q_all.shape)}")
        n_bank = len(self)
        if n_bank == 0:
            raise ValueError("cannot search an empty bank")
        k = min(k, n_bank)
        kc = min(k + RERANK_EXTRA, n_bank)
        out_d = torch.empty((q_all.shape[0], k), dtype=torch.float32, device=self.device)
        out_i = torch.empty((q_all.shape[0], k), dtype=torch.long, device=self.device)
        for qa in range(0, q_all.shape[0], query_chunk):
            q = q_all[qa : qa + query_chunk]
            qc = q - self.centre
            if k == 1:
                out_d[qa : qa + query_chunk], out_i[qa : qa + query_chunk] = self._nearest(q, qc, bank_chunk)
                continue
            best_d: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for ba in range(0, n_bank, bank_chunk):
                d2 = self._ranked(qc, ba, ba + bank_chunk)
                dd, ii = torch.topk(d2, min(kc, d2.shape[1]), dim=1, largest=False)
                ii = ii + ba
                if best_d is None:
                    best_d, best_i = dd, ii
                else:
                    cat_d = torch.cat([best_d, dd], 1)
                    cat_i = torch.cat([best_i, ii], 1)
                    best_d, sel = torch.topk(cat_d, kc, dim=1, largest=False)
                    best_i = torch.gather(cat_i, 1, sel)
            assert best_i is not None and best_d is not None
            d, i = self._rerank(q, best_i, k)
            out_d[qa : qa + query_chunk], out_i[qa : qa + query_chunk] = d, i
        return out_d, out_i

    def _rerank(self, q: torch.Tensor, cand: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best of candidates `cand` (n, kc) by (exact distance, index): (n, k) distances, indices."""
        n, kc = cand.shape
        exact = torch.empty(cand.shape, dtype=torch.float32, device=self.device)
        step = max(1, _RERANK_FLOATS // (kc * self.dim))  # bounded memory: step x kc x dim floats
        for a in range(0, n, step):
            rows = self.rows[cand[a : a + step]]  # (step, kc, dim)
            exact[a : a + step] = torch.linalg.vector_norm(q[a : a + step, None, :] - rows, dim=-1)
        by_index = torch.argsort(cand, dim=1, stable=True)
        exact, cand = torch.gather(exact, 1, by_index), torch.gather(cand, 1, by_index)
        order = torch.argsort(exact, dim=1, stable=True)[:, :k]
        return torch.gather(exact, 1, order), torch.gather(cand, 1, order)

    def _ranked(self, qc: torch.Tensor, a: int, b: int) -> torch.Tensor:
        """The GEMM ranking |b|^2 - 2 q.b of centred queries `qc` against bank rows a..b: (n, b - a)."""
        return torch.addmm(self.sq[a:b][None, :], qc, (self.rows[a:b] - self.centre).T, alpha=-2.0)

    def _nearest(
        self, q: torch.Tensor, qc: torch.Tensor, bank_chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """k = 1: (n, 1) distances and indices of the exact nearest row, lowest index on ties. The ranking's
        smallest value wins outright when the second smallest is more than twice its rounding bound above it;
        the other queries (ties, near-ties: a few percent) get the exact distance of every row ranked within
        that window. Two row minima instead of a top-k (k = 1 + RERANK_EXTRA), and one gather a query: the
        top-k was 40 % of a demo image's scoring, the re-rank of every query 70 % before it (measured).

        Bound: |b|^2 - 2 q.b on centred rows is computed to within (dim + 3) u (|q|^2 + 3 |b|^2) of its exact
        value (each of |b|^2 and q.b to dim u times their terms' sum); taken 4x over, as the margin also
        covers the exact distances' own float32 rounding, which decides ties. The true nearest row is ranked
        within 2 bounds of the smallest value, so no row outside the window can be it."""
        n = q.shape[0]
        first_v = torch.full((n,), float("inf"), device=self.device)
        first_i = torch.zeros(n, dtype=torch.long, device=self.device)
        second_v = first_v.clone()
        for a in range(0, len(self), bank_chunk):
            d2 = self._ranked(qc, a, a + bank_chunk)
            v, i = d2.min(dim=1)  # the first of equal minima: the lowest index
            d2.scatter_(1, i[:, None], float("inf"))
            v2 = d2.min(dim=1).values
            second_v = torch.minimum(torch.maximum(first_v, v), torch.minimum(second_v, v2))
            better = v < first_v  # strict: an equal value in a later chunk has a higher index
            first_v, first_i = torch.where(better, v, first_v), torch.where(better, i + a, first_i)
        d = torch.linalg.vector_norm(q - self.rows[first_i], dim=-1)
        margin = 4.0 * (self.dim + 3) * _UNIT_ROUNDOFF * ((qc * qc).sum(1) + 3.0 * self.sq_max)
        unsure = torch.nonzero(second_v - first_v <= 2.0 * margin).flatten()
        for a in range(0, len(unsure), _WINDOW_QUERIES):
            u = unsure[a : a + _WINDOW_QUERIES]
            d[u], first_i[u] = self._nearest_in_window(q[u], qc[u], 2.0 * margin[u], bank_chunk)
        return d[:, None], first_i[:, None]

    def _nearest_in_window(
        self, q: torch.Tensor, qc: torch.Tensor, window: torch.Tensor, bank_chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (u, d): exact distances of the rows ranked within `window` (u,) of each query's smallest
        ranked value; the nearest, lowest index on ties. The ranking is recomputed here (its rounding may differ
        from the batch's), so each window starts at this computation's own minimum: one pass over the bank for
        the minima, one for the windows. Memory: (u x bank_chunk) floats, and the window's rows gathered in
        steps of _RERANK_FLOATS."""
        n = len(self)
        low = torch.full((q.shape[0],), float("inf"), device=self.device)
        for a in range(0, n, bank_chunk):
            low = torch.minimum(low, self._ranked(qc, a, a + bank_chunk).min(dim=1).values)
        best_d = torch.full_like(low, float("inf"))
        best_i = torch.zeros(q.shape[0], dtype=torch.long, device=self.device)
        step = max(1, _RERANK_FLOATS // self.dim)
        for a in range(0, n, bank_chunk):
            ranked = self._ranked(qc, a, a + bank_chunk)
            qi, cand = torch.nonzero(ranked <= (low + window)[:, None], as_tuple=True)
            exact = torch.full_like(ranked, float("inf"))
            for s in range(0, len(qi), step):
                qs, cs = qi[s : s + step], cand[s : s + step]
                exact[qs, cs] = torch.linalg.vector_norm(q[qs] - self.rows[cs + a], dim=-1)
            d, i = exact.min(dim=1)  # the first of equal minima: the lowest index
            better = d < best_d  # strict: an equal distance in a later chunk has a higher index
            best_d, best_i = torch.where(better, d, best_d), torch.where(better, i + a, best_i)
        return best_d, best_i

    def neighbours_of_members(self, idx: torch.Tensor, b: int) -> torch.Tensor:
        return neighbours_of_members(self, idx, b)


def neighbours_of_members(bank: Any, idx: torch.Tensor, b: int) -> torch.Tensor:
    """For rows `idx` (n,) of `bank` (a Bank, or anything with its knn / take / len / device), the indices
    (n, b) of their b nearest *other* rows of the bank.

    "Other" is by index: the row itself is removed even when duplicates sit at distance 0 too.
    """
    if b < 1:
        raise ValueError(f"neighbours must be >= 1, got {b}")
    idx = idx.to(bank.device)
    k = min(b + 1, len(bank))
    _, nn = bank.knn(bank.take(idx), k=k)
    nn = nn.to(bank.device)
    not_self = nn != idx[:, None]
    # keep the first b entries that are not the row itself (if the row was not found among the k, the
    # k-th entry is dropped instead)
    order = torch.argsort((~not_self).to(torch.int8), dim=1, stable=True)
    return torch.gather(nn, 1, order)[:, : min(b, k - 1) if k > 1 else 1]
