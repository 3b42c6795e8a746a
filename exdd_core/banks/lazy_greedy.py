"""The lazy exact greedy k-center: the same picks as `greedy.greedy_plain`, for the features where the cluster
bounds of `pruned.py` fail - ImageNet Lite0 patches, whose coverage radius is ~0.6x their median pair distance,
so nearly every pick there is a full pass (benchmarks/RESULTS.md). Written here because no library offers an
exact, tie-identical k-center; the idea is lazy evaluation (docs/design.md, "Banks"):

  - a row's distance to its nearest pick (min_d) only ever decreases, so a value computed some picks ago is
    an upper bound ("ub") of the current one;
  - a round takes the TOP rows of largest ub and brings them up to date. Among them, the farthest is the next
    pick as long as its distance is strictly above every other row's ub (tau); each pick updates only the TOP
    rows. Rounds grow with t: a few picks at first, hundreds late in a run;
  - between rounds, the round's picks are applied to the other rows at once, as one GEMM screened by
    |x|^2 - 2 x.c + |c|^2 with its proven float32 error bound (the `FullPass` bound); `row_distances` computes
    the pairs the screen cannot rule out, so every stored value - and therefore every pick, ties included
    (lowest row index wins, like `np.argmax`) - is the plain loop's;
  - rows whose ub is below a level L (the PARK-th largest ub) are left stale: a row only needs its
    distances while it could still be the farthest. Late in a run most rows are parked for good, and a parked
    row that comes back gets all the picks it missed in one GEMM.

Measured on 235,200 x 152 Lite0 rows -> 2,352 picks: ~10x faster than `pruned`, same picks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from exdd_core.banks.full_pass import FullPass, dense_next
from exdd_core.banks.greedy import UNIT_ROUNDOFF, CoresetResult, full_distances, row_distances

# Rows a round brings up to date and picks from (measured on Lite0 rows: 1,024-8,192 within 10 % of the best)
TOP = 2048
# Rows kept up to date between rounds: those above the PARK * TOP-th largest ub (4-16 within 10 %)
PARK = 8
# Rows and picks per block of the screening GEMM: its (ROWS x PICKS) float32 temporary stays at 16 MiB
ROWS = 8192
PICKS = 512


class _Screen:
    """Applies picks to rows exactly: ub[i] <- min(ub[i], row_distances(x[i], c)) over the picks c, computing
    `row_distances` only for pairs the GEMM bound cannot rule out: `FullPass`'s bound on |x|^2 - 2 x.c + |c|^2
    (its |x|^2, |x| and relative error `err`), here for many picks at once; a pair is also skipped when another
    pick of the same row is provably closer.
    """

    def __init__(self, x: np.ndarray) -> None:
        bound = FullPass(x)
        self.x, self.sq, self.norm, self.err = x, bound.sq, bound.norm, bound.err

    def apply(self, rows: np.ndarray, picks: np.ndarray, ub: np.ndarray) -> int:
        """Update ub[rows] (distinct row indices) with the picks; returns how many exact distances it took."""
        n_exact = 0
        for b in range(0, len(picks), PICKS):
            p = picks[b : b + PICKS]
            centres = self.x[p]
            twice = np.ascontiguousarray(2.0 * centres.T)
            csq = self.sq[p]
            cmax = np.float32(self.norm[p].max())
            for a in range(0, len(rows), ROWS):
                n_exact += self._block(rows[a : a + ROWS], centres, twice, csq, cmax, ub)
        return n_exact

    def _block(
        self,
        r: np.ndarray,
        centres: np.ndarray,
        twice: np.ndarray,
        csq: np.ndarray,
        cmax: np.float32,
        ub: np.ndarray,
    ) -> int:
        g = np.take(self.x, r, axis=0) @ twice  # (rows, picks): 2 x.c
        g -= csq  # the estimate of d^2 is |x|^2 - g
        slack = self.norm[r] + cmax
        slack *= slack
        slack *= self.err
        thr = ub[r] * np.float32(1.0 + 8.0 * UNIT_ROUNDOFF)
        thr *= thr
        # may get closer: |x|^2 - g - slack < thr  <=>  g > |x|^2 - slack - thr
        lim = self.sq[r] - slack
        lim -= thr
        best = g.max(axis=1)
        hit = np.flatnonzero(best > lim)
        if len(hit) == 0:
            return 0
        # a pick whose estimate is 3 slacks (4 here) above the row's best estimate cannot be its nearest
        lim_hit = np.maximum(lim[hit], best[hit] - 4.0 * slack[hit])
        ri, ci = np.nonzero(g[hit] >= lim_hit[:, None])  # >=: the best pair stays even at zero slack
        rows = r[hit[ri]]  # each row's pairs adjacent: np.nonzero runs row-major
        diff = np.take(self.x, rows, axis=0)
        diff -= centres[ci]
        d = np.sqrt(np.einsum("ij,ij->i", diff, diff))  # = row_distances, pair by pair
        starts = np.flatnonzero(np.diff(rows, prepend=-1))
        uniq = rows[starts]
        ub[uniq] = np.minimum(ub[uniq], np.minimum.reduceat(d, starts))
        return len(d)


def greedy_lazy(
    x: np.ndarray,
    k: int,
    start: int,
    progress: Callable[[int], None] | None = None,
    *,
    top: int = TOP,
    park: int = PARK,
) -> CoresetResult:
    """Exact greedy k-center by lazy rounds; same picks as `greedy_plain` (see the module docstring).

    Memory: x plus 16 bytes a row (ub, the picks applied to it, |x|^2, |x|) and the block temporaries.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    k = min(k, n)
    sel = np.empty(k, dtype=np.int64)
    if k == 0:
        return CoresetResult(sel, 0.0)
    if top < 1 or park < 1:
        raise ValueError(f"greedy_lazy: top and park must be >= 1, got top={top}, park={park}")
    screen = _Screen(x)
    ub = full_distances(x, x[start])
    seen = np.ones(n, dtype=np.int32)  # row i has ub exact through sel[: seen[i]]
    sel[0] = start
    t = 1
    level = -np.inf  # rows with ub <= level may be stale (parked); every other row is exact through sel[:t]
    while t < k:
        made = _round(x, sel, t, k, ub, seen, level, top)
        if progress is not None and made:
            progress(made)
        t += made
        if t >= k:
            break
        if made == 0 and level > -np.inf and not (ub > level).any():  # the catch-up left no live row
            level = _settle(screen, sel, t, ub, seen, park * top)
            if (ub > level).any():
                continue
        if made == 0:  # ties at the round's edge (duplicate rows): one pick by an exact global argmax
            _catch_up(screen, sel, t, ub, seen, np.flatnonzero(seen < t))
            sel[t] = int(dense_next(ub, np.arange(n)))
            t += 1
            _catch_up(screen, sel, t, ub, seen, np.arange(n))
            level = -np.inf
            if progress is not None:
                progress(1)
            continue
        level = _park_level(ub, park * top)
        stale = np.flatnonzero(seen < t)
        _catch_up(screen, sel, t, ub, seen, stale[ub[stale] > level])
    # the radius: parked rows that could still exceed the largest exact value get their missed picks
    while True:
        exact = seen >= k
        radius = float(ub[exact].max()) if exact.any() else -np.inf
        stale = np.flatnonzero(~exact & (ub > radius))
        if len(stale) == 0:
            return CoresetResult(sel, radius)
        _catch_up(screen, sel, k, ub, seen, stale)


def _round(
    x: np.ndarray,
    sel: np.ndarray,
    t: int,
    k: int,
    ub: np.ndarray,
    seen: np.ndarray,
    level: float,
    top: int,
) -> int:
    """One round of picks from the `top` unparked rows of largest ub (all exact through sel[:t] on entry);
    stores them in sel[t:] and returns how many. A pick is certain while its distance is strictly above tau,
    the largest ub of every other row."""
    live = np.flatnonzero(ub > level) if level > -np.inf else np.arange(len(ub))
    if len(live) == 0:
        return 0
    if len(live) > top:
        part = np.argpartition(ub[live], len(live) - top - 1)
        cand = np.sort(live[part[len(live) - top :]])
        tau = float(ub[live[part[len(live) - top - 1]]])  # live rows are above the level
    else:
        cand, tau = live, level
    d = ub[cand]
    rows = x[cand]
    work = np.empty_like(rows)
    made = 0
    while t + made < k:
        j = int(np.argmax(d))  # cand ascending: the lowest row index on ties, as np.argmax over all rows
        if not d[j] > tau:
            break
        sel[t + made] = cand[j]
        made += 1
        np.copyto(work, rows)
        np.minimum(d, row_distances(work, x[cand[j]], overwrite=True), out=d)
    ub[cand] = d
    seen[cand] = t + made
    return made


def _park_level(ub: np.ndarray, keep: int) -> float:
    """The keep-th largest ub: rows at or below it are parked until the picks come down to it."""
    if keep >= len(ub):
        return -np.inf
    return float(np.partition(ub, len(ub) - keep - 1)[len(ub) - keep - 1])


def _settle(screen: _Screen, sel: np.ndarray, t: int, ub: np.ndarray, seen: np.ndarray, keep: int) -> float:
    """A park level with every row above it exact through sel[:t]: catching up lowers ub, and so the level,
    so repeat until no stale row is above it. Rarely needed: when a catch-up left no live row."""
    while True:
        level = _park_level(ub, keep)
        stale = np.flatnonzero(seen < t)
        stale = stale[ub[stale] > level]
        if len(stale) == 0:
            return level
        _catch_up(screen, sel, t, ub, seen, stale)


def _catch_up(
    screen: _Screen, sel: np.ndarray, t: int, ub: np.ndarray, seen: np.ndarray, rows: np.ndarray
) -> None:
    """Apply to each of `rows` the picks sel[seen[row]:t] it missed; grouped by seen, one GEMM a group."""
    if len(rows) == 0:
        return
    order = np.argsort(seen[rows], kind="stable")  # rows ascending within a group
    rows = rows[order]
    s = seen[rows]
    for part in np.split(rows, np.flatnonzero(np.diff(s)) + 1):
        screen.apply(part, sel[int(seen[part[0]]) : t], ub)
    seen[rows] = t
