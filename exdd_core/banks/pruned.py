"""The pruned exact greedy k-center: the same picks as `greedy.greedy_plain`, with the work per pick cut by
bounds that can only skip points the plain loop would leave unchanged (Gonzalez's algorithm with cluster
bookkeeping). Written here because no library offers an exact, tie-identical pruned k-center:

  - every point belongs to the cluster of its nearest selected centre, at distance min_d;
  - a new centre c can take a point p of cluster j only if d(c, centre_j) < 2 min_d(p) (triangle
    inequality), so whole clusters with d(c, centre_j) >= 2 radius_j are skipped, and inside the others only
    points with min_d > d(c, centre_j) / 2 are looked at;
  - those points are screened with lower bounds of d(p, c) from principal-component coordinates (an
    orthogonal projection never lengthens a vector): first 4 of them (16 bytes a point), then 16 (64 bytes)
    for the points that pass, instead of the 512 bytes of a 128-d row;
  - only the survivors (~1 % of the points looked at) get their distance computed, by the very same
    `row_distances` as the plain loop, so the float values - and therefore the picks, ties included (lowest
    row index wins, like `np.argmax`) - are identical. Every bound carries a margin larger than its proven
    float32 rounding error.

  Rows are kept in k-d tree order internally, so a cluster's members sit close together in memory. On data
  without low-dimensional structure (isotropic noise) the bounds prune nothing; when they leave more than a
  fifth of the rows to compute, picks switch to full passes - one GEMV over all rows screens with
  |x|^2 - 2 x.c + |c|^2 (and its error bound), `row_distances` does the rows that may get closer - until a
  periodic check finds pruning worthwhile again. So `pruned` is faster than `plain` on every input we
  measured: ~20x on CNN patch features, whose intrinsic dimension is low, ~4x on isotropic Gaussian noise
  (benchmarks/coreset.py, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from exdd_core.banks.full_pass import FullPass, dense_next
from exdd_core.banks.greedy import BLOCK, UNIT_ROUNDOFF, CoresetResult, full_distances, row_distances
from exdd_core.banks.kd_order import kd_order

# When the bounds leave more than this fraction of all rows to compute exactly, a full pass (one GEMV, no
# gathers, no bookkeeping) is cheaper: switch to full passes until the next check. Break-even measured at
# ~0.2: an exact distance after a gather costs ~0.35 us a row, a GEMV pass ~0.07 us a row (235 k x 128).
_DENSE_FRACTION = 0.2
# Checks for going back from full passes to pruning happen at t = 1, then t * 1.5 + 4 after each failure.
_CHECK_GROWTH = 1.5
# Principal-component coordinates of the second screening stage (measured on WRN50 patch features, 235 k
# rows: 8 dims let 1.5x, 32 dims 0.8x as many points through as 16 dims). The first stage uses 4 of them.
SCREEN_DIM = 16


class _Screen:
    """Lower bounds of distances from `m` principal-component coordinates, safe against float32 rounding.

    z = (x - mean) @ B with B (dim, m) of orthonormal columns, so |z_p - z_q| <= |B|_2 |x_p - x_q|: an
    orthogonal projection never lengthens a difference. The computed z differ from exact ones by at most
    (dim + 1) u R per coordinate (R = the largest centred row norm: the bound for any summation order), and a
    squared norm of m terms is computed to a relative (m + 2) u; both are allowed for twice over, so a bound
    never exceeds the true distance.
    """

    def __init__(self, x: np.ndarray, m: int) -> None:
        n, dim = x.shape
        # any orthonormal basis gives valid bounds; the leading principal axes of a sample make them tight
        sample = x[:: max(1, n // 32768)]
        mean = sample.mean(0, dtype=np.float64).astype(np.float32)
        centred = sample - mean
        cov = (centred.T @ centred).astype(np.float64)
        _, vecs = np.linalg.eigh((cov + cov.T) / 2)
        basis = np.ascontiguousarray(vecs[:, ::-1][:, :m], dtype=np.float32)
        self.z = np.empty((n, m), dtype=np.float32)
        self.lead = min(4, m)  # leading coordinates of the first screening stage (z_lead, set by the caller)
        self.z_lead = self.z
        r2 = 0.0
        for a in range(0, n, BLOCK):
            c = x[a : a + BLOCK] - mean
            r2 = max(r2, float(np.einsum("ij,ij->i", c, c).max()))
            self.z[a : a + BLOCK] = c @ basis
        s_max = float(np.linalg.norm(basis.astype(np.float64), 2)) * (1.0 + 1e-6)
        # |z_p - z_q| (computed) <= s_max * d(p, q) + abs_err
        self.abs_err = 2.0 * 2.0 * math.sqrt(m) * (dim + 1) * UNIT_ROUNDOFF * math.sqrt(r2) * (1.0 + 1e-3)
        self.s_max = s_max
        self.sq_rel = (
            2.0 * (m + 2) * UNIT_ROUNDOFF
        )  # relative error of a computed squared norm of m terms, x2

    def lower(self, zrows: np.ndarray, zc: np.ndarray) -> np.ndarray:
        """Lower bounds (float64) of the distances from the rows behind `zrows` to the row behind `zc`."""
        diff = zrows - zc
        sq = np.einsum("ij,ij->i", diff, diff).astype(np.float64)
        sq *= 1.0 / (1.0 + self.sq_rel)
        lb = np.sqrt(sq, out=sq)
        lb -= self.abs_err
        lb *= 1.0 / self.s_max
        return np.maximum(lb, 0.0, out=lb)

    def may_be_closer(self, zrows: np.ndarray, zc: np.ndarray, md: np.ndarray, grow: float) -> np.ndarray:
        """False where the row behind zrows is provably at distance >= md * grow from the row behind zc.

        Squared float32 form of `lower(...) < md * grow` (no sqrt, no float64): |dz|^2 < (1 + e) (s md g + a)^2,
        with e covering the squared norm's and this threshold's own rounding. Overwrites `zrows` (a gather).
        """
        thr = md * np.float32(grow * self.s_max)
        thr += np.float32(self.abs_err)
        thr *= thr
        thr *= np.float32(1.0 + self.sq_rel + 16.0 * UNIT_ROUNDOFF)
        return _sq_dists(zrows, zc) < thr


def _sq_dists(rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Squared distances of short C-contiguous rows (a few to 16 floats) to `centre`; overwrites `rows`.

    numpy loops over the last axis, so (n, 4) - (4,) runs n inner loops of 4: subtracting the centre tiled
    over 64-float rows, then summing columns, is 2.3x faster at 4 columns, 1.2x at 16 (measured)."""
    n, m = rows.shape
    reps = max(1, 64 // m)
    n_tiled = n // reps * reps
    if n_tiled:
        rows[:n_tiled].reshape(-1, m * reps)[...] -= np.tile(centre, reps)
    rows[n_tiled:] -= centre
    if m > 8:  # einsum beats column sums here, and a BLAS GEMV with ones would spin up threads
        return np.einsum("ij,ij->i", rows, rows)
    np.square(rows, out=rows)
    out = rows[:, 0].copy()
    for i in range(1, m):
        out += rows[:, i]
    return out


def _split(rows: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    """Consecutive views of `rows` with `counts` items each: np.split without its per-piece overhead (it
    took 4 % of a pick at 500 k rows, measured)."""
    ends = np.cumsum(counts).tolist()
    return [rows[a:b] for a, b in zip([0, *ends[:-1]], ends, strict=True)]


def _segment_tops(
    rows: np.ndarray, counts: np.ndarray, min_d: np.ndarray, perm: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For consecutive non-empty segments of `rows` (positions) with `counts`: the largest min_d of each and
    the member reaching it with the lowest original row index (perm[position]), as `np.argmax` would pick."""
    starts = np.cumsum(counts) - counts
    d = min_d[rows]
    top = np.maximum.reduceat(d, starts)
    hit = np.flatnonzero(d == np.repeat(top, counts))  # at least one per segment
    first = np.searchsorted(hit, starts)
    n_hit = np.diff(np.append(first, len(hit)))
    if np.all(n_hit == 1):
        return top, rows[hit[first]]
    key = perm[rows[hit]]  # exact ties at the top: the lowest original index wins
    low = np.minimum.reduceat(key, first)
    h2 = np.flatnonzero(key == np.repeat(low, n_hit))
    return top, rows[hit[h2[np.searchsorted(h2, first)]]]


class _Clusters:
    """Members (positions) of each centre's cluster, its radius (max min_d) and its farthest member.

    `far` is the member at the radius with the lowest original row index, so that the cluster with the largest
    radius (lowest original index of `far` on ties) holds exactly the row `np.argmax(min_d)` would pick.
    """

    def __init__(self, k: int, perm: np.ndarray) -> None:
        self.perm = perm
        self.members: list[np.ndarray] = []
        self.sizes = np.zeros(k, dtype=np.int64)
        self.radius = np.full(k, -1.0, dtype=np.float32)  # -1: empty cluster, never a candidate
        self.far = np.zeros(k, dtype=np.int64)

    def rebuild(self, assign: np.ndarray, min_d: np.ndarray, t: int) -> None:
        """All t clusters from `assign` at once (vectorised, O(N log N)): after plain full passes."""
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=t)[:t]
        self.members = _split(order, counts)
        self.sizes[:t] = counts
        self.radius[:t] = -1.0
        full = np.flatnonzero(counts)
        self.radius[full], self.far[full] = _segment_tops(order, counts[full], min_d, self.perm)

    def replace(self, js: np.ndarray, rows: np.ndarray, counts: np.ndarray, min_d: np.ndarray) -> None:
        """Clusters js get the consecutive segments of `rows` (counts[i] rows each; js may end with a new one)."""
        if len(self.members) <= js[-1]:
            self.members.extend([rows[:0]] * (int(js[-1]) + 1 - len(self.members)))
        for j, part in zip(js.tolist(), _split(rows, counts), strict=True):
            self.members[j] = part
        self.sizes[js] = counts
        self.radius[js] = -1.0
        full = counts > 0
        if full.any():
            self.radius[js[full]], self.far[js[full]] = _segment_tops(rows, counts[full], min_d, self.perm)

    def best(self, t: int) -> int:
        """Position of the row the plain loop would pick next."""
        r = self.radius[:t]
        j = int(np.argmax(r))
        ties = np.flatnonzero(r == r[j])
        if len(ties) > 1:
            far = self.far[ties]
            return int(far[np.argmin(self.perm[far])])
        return int(self.far[j])


def greedy_pruned(
    x: np.ndarray,
    k: int,
    start: int,
    progress: Callable[[int], None] | None = None,
    *,
    screen_dim: int = SCREEN_DIM,
) -> CoresetResult:
    """Exact greedy k-center with pruning; same picks as `greedy_plain` (see the module docstring).

    Internally every per-row array is in k-d tree order ("positions"; perm maps a position to its row of x),
    so a cluster's members are close in memory. x itself is never copied: memory is x plus about
    4 * screen_dim + 40 bytes a row.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    k = min(k, n)
    sel = np.empty(k, dtype=np.int64)
    if k == 0:
        return CoresetResult(sel, 0.0)
    m = max(1, min(screen_dim, dim))
    screen, perm, z = _screen_in_kd_order(x, m)
    # Relative margin of the triangle-inequality tests: covers the rounding of row_distances values (each
    # within (dim + 5) u / 2 of the true distance) several times over.
    grow = 1.0 + 4.0 * (dim + m + 8) * UNIT_ROUNDOFF
    zcent = np.empty((k, m), dtype=np.float32)
    clusters = _Clusters(k, perm)
    assign = np.zeros(n, dtype=np.int32)

    sel[0] = start
    zcent[0] = z[int(np.flatnonzero(perm == start)[0])]
    min_d = full_distances(x, x[start])[perm]
    full_pass = FullPass(x)
    dense = True  # cluster bookkeeping suspended: picks are full passes until a check
    next_check = 1
    p = dense_next(min_d, perm)

    for t in range(1, k):
        if dense and t >= next_check:
            clusters.rebuild(assign, min_d, t)
            dense = False  # try the bounds; a pick that leaves too many rows to compute switches back
        if not dense:
            p = clusters.best(t)
        i = int(perm[p])
        c = x[i]
        sel[t] = i
        zcent[t] = z[p]
        if dense:
            p = full_pass.pick(x, perm, i, t, min_d, assign, grow)
        else:
            cand, dc = _candidate_clusters(x, c, z[p], sel[:t], zcent[:t], screen, clusters.radius[:t], grow)
            exact = _sparse_update(x, z, perm, c, z[p], t, cand, dc, grow, screen, clusters, min_d, assign)
            if exact > _DENSE_FRACTION * n:  # the bounds do not pay (yet): full passes until the next check
                dense = True
                next_check = int(t * _CHECK_GROWTH) + 4
                p = dense_next(min_d, perm)
        if progress is not None:
            progress(1)
    return CoresetResult(sel, float(min_d.max()))


def _screen_in_kd_order(x: np.ndarray, m: int) -> tuple[_Screen, np.ndarray, np.ndarray]:
    """The m-dim screen of x with its rows in k-d tree order: (screen, perm: position -> row, z in order)."""
    screen = _Screen(x, m)
    perm = kd_order(screen.z)
    z = screen.z[perm]
    screen.z = z
    screen.z_lead = np.ascontiguousarray(z[:, : screen.lead])
    return screen, perm, z


def _candidate_clusters(
    x: np.ndarray,
    c: np.ndarray,
    zc: np.ndarray,
    centres: np.ndarray,
    zcent: np.ndarray,
    screen: _Screen,
    rad: np.ndarray,
    grow: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Clusters the new centre c may take points from: d(c, centre_j) < 2 radius_j, first by the cheap screen
    bound over all centres, then by exact distances (as lower bounds) for those that pass. Returns their
    indices and those lower bounds."""
    dc_low = 1.0 - 2.0 * (x.shape[1] + 5) * UNIT_ROUNDOFF  # row_distances(a, b) * dc_low <= the true distance
    cand = np.flatnonzero(screen.lower(zcent, zc) < 2.0 * grow * rad)
    dc = row_distances(np.take(x, centres[cand], axis=0), c, overwrite=True).astype(np.float64)
    dc *= dc_low
    keep = dc < 2.0 * grow * rad[cand]
    return cand[keep], dc[keep]


def _sparse_update(
    x: np.ndarray,
    z: np.ndarray,
    perm: np.ndarray,
    c: np.ndarray,
    zc: np.ndarray,
    t: int,
    cand: np.ndarray,
    dc: np.ndarray,
    grow: float,
    screen: _Screen,
    clusters: _Clusters,
    min_d: np.ndarray,
    assign: np.ndarray,
) -> int:
    """Move to new centre t (row c) every point of the candidate clusters (lower bounds dc of their centres'
    distances to c) that is closer to it, and update the clusters it took them from. Only points no bound
    rules out get an exact distance; returns how many."""
    n_exact = 0
    moved = np.empty(0, dtype=np.int64)
    if len(cand):
        idx = np.concatenate([clusters.members[j] for j in cand.tolist()])
        # triangle inequality through the point's own centre: d(p, c) >= dc_j - min_d(p)
        md = min_d[idx]
        keep = md > np.repeat(dc * (0.5 / grow), clusters.sizes[cand])
        idx, md = idx[keep], md[keep]
        # np.take: ~3x faster than fancy indexing for row gathers (measured). Two stages: the leading
        # coordinates alone (a projection too) rule out most points for a quarter of the bytes and arithmetic
        keep = screen.may_be_closer(np.take(screen.z_lead, idx, axis=0), zc[: screen.lead], md, grow)
        idx, md = idx[keep], md[keep]
        keep = screen.may_be_closer(np.take(z, idx, axis=0), zc, md, grow)
        idx, md = idx[keep], md[keep]
        n_exact = len(idx)
        d = row_distances(np.take(x, perm[idx], axis=0), c, overwrite=True)
        better = d < md
        moved = idx[better]
        min_d[moved] = d[better]
    if len(moved):
        losers = np.unique(assign[moved])
        assign[moved] = t
        rows = np.concatenate([clusters.members[j] for j in losers.tolist()])
        sizes = clusters.sizes[losers]
        keep = assign[rows] == np.repeat(losers, sizes)
        counts = np.bincount(np.repeat(np.arange(len(losers)), sizes)[keep], minlength=len(losers))
        moved.sort()
        js = np.append(losers, t)
        clusters.replace(js, np.concatenate([rows[keep], moved]), np.append(counts, len(moved)), min_d)
    else:
        clusters.replace(np.array([t]), moved, np.array([0]), min_d)
    return n_exact
