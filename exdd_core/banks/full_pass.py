"""The pruned coreset's full pass: one pick's update of every row at the cost of one GEMV, for the picks where
the cluster bounds do not pay (banks/pruned.py). Written here because its float32 error bound is what keeps
the picks identical to the plain loop's; no library gives that guarantee."""

from __future__ import annotations

import numpy as np

from exdd_core.banks.greedy import BLOCK, UNIT_ROUNDOFF, row_distances


class FullPass:
    """One pick's update of every row at the cost of one GEMV: |x|^2 - 2 x.c + |c|^2 with a proven float32
    error bound rules out the rows that cannot get closer, `row_distances` computes the rest - so the values,
    and the picks, are the plain loop's. On data the other bounds cannot prune (isotropic noise) this is the
    whole pick; it reads each row once instead of the plain loop's three passes (difference, square, sum).
    """

    def __init__(self, x: np.ndarray) -> None:
        n, dim = x.shape
        self.sq = np.empty(n, dtype=np.float32)
        for a in range(0, n, BLOCK):
            blk = x[a : a + BLOCK]
            self.sq[a : a + BLOCK] = np.einsum("ij,ij->i", blk, blk)
        self.norm = np.sqrt(self.sq)
        # |computed - true| of |x|^2 - 2 x.c + |c|^2 <= ((dim + 2) u + 4 u) (|x| + |c|)^2 for any summation
        # order (three inner products and four float32 operations); doubled for safety
        self.err = np.float32(2.0 * (dim + 6) * UNIT_ROUNDOFF)

    def update(
        self, x: np.ndarray, perm: np.ndarray, i: int, min_d: np.ndarray, grow: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions whose min_d drops with the new centre x[i], and their new min_d (not yet stored)."""
        c = x[i]
        low = np.empty(len(x), dtype=np.float32)  # lower bound of the squared distance, in row order
        for a in range(0, len(x), BLOCK):
            low[a : a + BLOCK] = x[a : a + BLOCK] @ c
        low *= -2.0
        low += self.sq
        low += self.sq[i]
        slack = self.norm + self.norm[i]
        slack *= slack
        slack *= self.err
        low -= slack
        thr = min_d * np.float32(grow)
        thr *= thr
        thr *= np.float32(1.0 + 8.0 * UNIT_ROUNDOFF)
        cand = np.flatnonzero(low[perm] < thr)
        d = row_distances(np.take(x, perm[cand], axis=0), c, overwrite=True)
        better = d < min_d[cand]
        return cand[better], d[better]

    def pick(
        self,
        x: np.ndarray,
        perm: np.ndarray,
        i: int,
        t: int,
        min_d: np.ndarray,
        assign: np.ndarray,
        grow: float,
    ) -> int:
        """Pick t is x[i], by a full pass: store the new min_d and centre of the rows it moved; return the
        position of the next pick (the farthest row)."""
        moved, d = self.update(x, perm, i, min_d, grow)
        min_d[moved] = d
        assign[moved] = t
        return dense_next(min_d, perm)


def dense_next(min_d: np.ndarray, perm: np.ndarray) -> int:
    """Position of the largest min_d, lowest original index on ties (what np.argmax does in row order)."""
    j = int(np.argmax(min_d))
    ties = np.flatnonzero(min_d == min_d[j])
    return int(ties[np.argmin(perm[ties])]) if len(ties) > 1 else j
