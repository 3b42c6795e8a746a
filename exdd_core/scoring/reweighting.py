"""PatchCore's neighbourhood reweighting (the paper's eq. 15-18), and a bank that remembers its entries' own
neighbours for it.

The reweighting uses the b nearest neighbours of a bank entry inside its own bank, *besides* the entry itself
(design.md, row E), with the exponent sign of PatchCore and the authors' code:

    w_N = 1 - exp(s_N*/sqrt(d)) / sum_{m in N_b(m*)} exp(|m_test,* - m| / sqrt(d))
    w_P =     exp(s_P*/sqrt(d)) / sum_{m in N_b(m+)} exp(|m_test,+ - m| / sqrt(d))
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import torch

from exdd_core.banks.distributed import ShardedBank
from exdd_core.banks.knn import Bank


def reweight(s: torch.Tensor, nbr_dists: torch.Tensor, dim: int, *, positive: bool) -> torch.Tensor:
    """Neighbourhood weight for score(s) `s` (...,) given distances (..., b) from the same test patch(es) to
    the b neighbours of their nearest bank entry. Computed in log space so large distances cannot overflow."""
    scale = math.sqrt(dim)
    log_ratio = s / scale - torch.logsumexp(nbr_dists / scale, dim=-1)
    ratio = torch.exp(log_ratio)
    return ratio if positive else 1.0 - ratio


class ScoringBank:
    """A bank plus a lazily filled table of each entry's b nearest neighbours inside the bank (N_b(m))."""

    def __init__(self, rows: np.ndarray | Any, neighbours: int, device: str = "cpu") -> None:
        """`rows` (n, d), or a bank already built: a `Bank`, or a `ShardedBank` (each rank holds a shard)."""
        self.bank = rows if isinstance(rows, Bank | ShardedBank) else Bank(rows, device=device)
        self.b = int(neighbours)
        self._table = torch.full((len(self.bank), self.b), -1, dtype=torch.long, device=self.bank.device)
        self._filling = threading.Lock()  # `exdd score` scores several images at once

    def __len__(self) -> int:
        return len(self.bank)

    def neighbours(self, idx: torch.Tensor) -> torch.Tensor:
        """N_b(m) for bank entries idx (n,) -> (n, b'), computing only entries not seen before."""
        with self._filling:
            missing = torch.unique(idx[self._table[idx, 0] < 0])
            if len(missing):
                nn = self.bank.neighbours_of_members(missing, self.b)
                self._table[missing, : nn.shape[1]] = nn
                if nn.shape[1] < self.b:  # bank smaller than b+1: repeat the last neighbour
                    self._table[missing, nn.shape[1] :] = nn[:, -1:]
            return self._table[idx]

    def weights(self, queries: torch.Tensor, nn_idx: torch.Tensor, nn_dist: torch.Tensor, *, positive: bool):
        """Reweighting factor for each query patch given its nearest entry `nn_idx` at distance `nn_dist`."""
        nbrs = self.neighbours(nn_idx)  # (n, b)
        d = self.bank.distances(queries, nbrs)  # (n, b)
        return reweight(nn_dist, d, self.bank.dim, positive=positive)
