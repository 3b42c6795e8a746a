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
        k + RERANK_EXTRA best are re-ranked by the exact |q - b|, which is also the distance returned.
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
            best_d: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for ba in range(0, n_bank, bank_chunk):
                b = self.rows[ba : ba + bank_chunk] - self.centre
                d2 = torch.addmm(self.sq[ba : ba + bank_chunk][None, :], qc, b.T, alpha=-2.0)
                dd, ii = torch.topk(d2, min(kc, b.shape[0]), dim=1, largest=False)
                ii = ii + ba
                if best_d is None:
                    best_d, best_i = dd, ii
                else:
                    cat_d = torch.cat([best_d, dd], 1)
                    cat_i = torch.cat([best_i, ii], 1)
                    best_d, sel = torch.topk(cat_d, kc, dim=1, largest=False)
                    best_i = torch.gather(cat_i, 1, sel)
            assert best_i is not None
            # the exact distances of the candidates, one candidate column at a time (bounded memory), then
            # the k best by (distance, index)
            exact = torch.stack(
                [torch.linalg.vector_norm(q - self.rows[best_i[:, j]], dim=-1) for j in range(kc)], 1
            )
            by_index = torch.argsort(best_i, dim=1, stable=True)
            exact, best_i = torch.gather(exact, 1, by_index), torch.gather(best_i, 1, by_index)
            order = torch.argsort(exact, dim=1, stable=True)[:, :k]
            out_d[qa : qa + query_chunk] = torch.gather(exact, 1, order)
            out_i[qa : qa + query_chunk] = torch.gather(best_i, 1, order)
        return out_d, out_i

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
