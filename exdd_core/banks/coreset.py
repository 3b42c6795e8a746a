"""Greedy k-center (farthest-point) coreset selection, paper eq. 8.

Two exact implementations that pick the same indices from the same start:

* `plain`: the textbook loop - after each pick, one O(N) distance update of every point. On a GPU this is
  what you want (memory-bandwidth bound, no Python per point). It is the reference the other is checked against.
* `pruned`: the same greedy, with the work per pick cut by bounds that can only skip points the plain loop
  would leave unchanged (Gonzalez's algorithm with cluster bookkeeping):

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
from dataclasses import dataclass

import numpy as np

from exdd_core.runtime.choices import CoresetMethod as Method

# Unit roundoff of float32: every margin below is a small multiple of it times a dimension.
_U = float(np.finfo(np.float32).eps) / 2
# Rows per block of a full pass: bounds the temporaries (block x dim floats) whatever N is.
_BLOCK = 1 << 16
# When the bounds leave more than this fraction of all rows to compute exactly, a full pass (one GEMV, no
# gathers, no bookkeeping) is cheaper: switch to full passes until the next check. Break-even measured at
# ~0.2: an exact distance after a gather costs ~0.35 us a row, a GEMV pass ~0.07 us a row (235 k x 128).
_DENSE_FRACTION = 0.2
# Checks for going back from full passes to pruning happen at t = 1, then t * 1.5 + 4 after each failure.
_CHECK_GROWTH = 1.5
# Principal-component coordinates of the second screening stage (measured on WRN50 patch features, 235 k
# rows: 8 dims let 1.5x, 32 dims 0.8x as many points through as 16 dims). The first stage uses 4 of them.
SCREEN_DIM = 16


@dataclass(frozen=True)
class CoresetResult:
    """Selected row indices (in pick order) and the coverage radius: max over all points of the distance to
    their nearest selected point (the quantity eq. 8 minimises)."""

    indices: np.ndarray
    radius: float


def coreset_size(n: int, ratio: float, min_size: int) -> int:
    """Target size as the authors' code: max(min_size, int(ratio * n)), never more than n."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    if n <= 0:
        return 0
    return min(n, max(int(min_size), int(ratio * n)))


def row_distances(rows: np.ndarray, centre: np.ndarray, *, overwrite: bool = False) -> np.ndarray:
    """Euclidean distance of each row to `centre`, float32. Shared by both methods so values are bit-equal:
    each row's value depends on that row alone, not on which other rows are in the call. `overwrite=True`
    subtracts in place (same values, one temporary less) for rows the caller has just gathered."""
    if overwrite:
        rows -= centre
        diff = rows
    else:
        diff = rows - centre
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _full_distances(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """`row_distances` of every row, in blocks so the temporaries stay at _BLOCK x dim floats."""
    out = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), _BLOCK):
        out[a : a + _BLOCK] = row_distances(x[a : a + _BLOCK], centre)
    return out


def greedy_plain(
    x: np.ndarray, k: int, start: int, progress: Callable[[int], None] | None = None
) -> CoresetResult:
    """Textbook greedy k-center: the reference every faster method is checked against."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k = min(k, len(x))
    sel = np.empty(k, dtype=np.int64)
    sel[0] = start
    min_d = row_distances(x, x[start])
    for t in range(1, k):
        i = int(np.argmax(min_d))
        sel[t] = i
        np.minimum(min_d, row_distances(x, x[i]), out=min_d)
        if progress is not None:
            progress(1)
    return CoresetResult(sel, float(min_d.max()) if len(min_d) else 0.0)


def greedy_plain_torch(
    x: np.ndarray, k: int, start: int, device: str, progress: Callable[[int], None] | None = None
) -> CoresetResult:
    """The plain loop on a torch device (CUDA): one fused distance update per pick, all on the device."""
    import torch

    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
    k = min(k, len(xt))
    sel = torch.empty(k, dtype=torch.long, device=device)
    sel[0] = start
    min_d = torch.linalg.vector_norm(xt - xt[start], dim=1)
    for t in range(1, k):
        i = torch.argmax(min_d)
        sel[t] = i
        torch.minimum(min_d, torch.linalg.vector_norm(xt - xt[i], dim=1), out=min_d)
        if progress is not None and t % 256 == 0:
            progress(256)
    if progress is not None and (k - 1) % 256:
        progress((k - 1) % 256)
    return CoresetResult(sel.cpu().numpy(), float(min_d.max().item()) if len(min_d) else 0.0)


class _FullPass:
    """One pick's update of every row at the cost of one GEMV: |x|^2 - 2 x.c + |c|^2 with a proven float32
    error bound rules out the rows that cannot get closer, `row_distances` computes the rest - so the values,
    and the picks, are the plain loop's. On data the other bounds cannot prune (isotropic noise) this is the
    whole pick; it reads each row once instead of the plain loop's three passes (difference, square, sum).
    """

    def __init__(self, x: np.ndarray) -> None:
        n, dim = x.shape
        self.sq = np.empty(n, dtype=np.float32)
        for a in range(0, n, _BLOCK):
            blk = x[a : a + _BLOCK]
            self.sq[a : a + _BLOCK] = np.einsum("ij,ij->i", blk, blk)
        self.norm = np.sqrt(self.sq)
        # |computed - true| of |x|^2 - 2 x.c + |c|^2 <= ((dim + 2) u + 4 u) (|x| + |c|)^2 for any summation
        # order (three inner products and four float32 operations); doubled for safety
        self.err = np.float32(2.0 * (dim + 6) * _U)

    def update(
        self, x: np.ndarray, perm: np.ndarray, i: int, min_d: np.ndarray, grow: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Positions whose min_d drops with the new centre x[i], and their new min_d (not yet stored)."""
        c = x[i]
        low = np.empty(len(x), dtype=np.float32)  # lower bound of the squared distance, in row order
        for a in range(0, len(x), _BLOCK):
            low[a : a + _BLOCK] = x[a : a + _BLOCK] @ c
        low *= -2.0
        low += self.sq
        low += self.sq[i]
        slack = self.norm + self.norm[i]
        slack *= slack
        slack *= self.err
        low -= slack
        thr = min_d * np.float32(grow)
        thr *= thr
        thr *= np.float32(1.0 + 8.0 * _U)
        cand = np.flatnonzero(low[perm] < thr)
        d = row_distances(np.take(x, perm[cand], axis=0), c, overwrite=True)
        better = d < min_d[cand]
        return cand[better], d[better]


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
        for a in range(0, n, _BLOCK):
            c = x[a : a + _BLOCK] - mean
            r2 = max(r2, float(np.einsum("ij,ij->i", c, c).max()))
            self.z[a : a + _BLOCK] = c @ basis
        s_max = float(np.linalg.norm(basis.astype(np.float64), 2)) * (1.0 + 1e-6)
        # |z_p - z_q| (computed) <= s_max * d(p, q) + abs_err
        self.abs_err = 2.0 * 2.0 * math.sqrt(m) * (dim + 1) * _U * math.sqrt(r2) * (1.0 + 1e-3)
        self.s_max = s_max
        self.sq_rel = 2.0 * (m + 2) * _U  # relative error of a computed squared norm of m terms, x2

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
        thr *= np.float32(1.0 + self.sq_rel + 16.0 * _U)
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


def _kd_order(z: np.ndarray, leaf: int = 256) -> np.ndarray:
    """Rows in the order of a k-d tree over z (median splits on the widest coordinate), so that rows close in
    space sit close in memory: the gathers of a cluster's members then hit few pages and cache lines."""
    n = len(z)
    order = np.arange(n)
    stack = [(0, n)]
    while stack:
        a, b = stack.pop()
        if b - a <= leaf:
            continue
        seg = order[a:b]
        zs = z[seg]
        axis = int(np.argmax(zs.max(0) - zs.min(0)))
        mid = (b - a) // 2
        order[a:b] = seg[np.argpartition(zs[:, axis], mid)]
        stack.append((a, a + mid))
        stack.append((a + mid, b))
    return order


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


def _dense_next(min_d: np.ndarray, perm: np.ndarray) -> int:
    """Position of the largest min_d, lowest original index on ties (what np.argmax does in row order)."""
    j = int(np.argmax(min_d))
    ties = np.flatnonzero(min_d == min_d[j])
    return int(ties[np.argmin(perm[ties])]) if len(ties) > 1 else j


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
    screen = _Screen(x, m)
    perm = _kd_order(screen.z)
    z = screen.z[perm]
    screen.z = z
    screen.z_lead = np.ascontiguousarray(z[:, : screen.lead])
    # Relative margin of the triangle-inequality tests: covers the rounding of row_distances values (each
    # within (dim + 5) u / 2 of the true distance) several times over.
    grow = 1.0 + 4.0 * (dim + m + 8) * _U
    dc_low = 1.0 - 2.0 * (dim + 5) * _U  # row_distances(a, b) * dc_low <= the true distance
    zcent = np.empty((k, m), dtype=np.float32)
    clusters = _Clusters(k, perm)
    assign = np.zeros(n, dtype=np.int32)

    sel[0] = start
    p = int(np.flatnonzero(perm == start)[0])
    zcent[0] = z[p]
    min_d = _full_distances(x, x[start])[perm]
    full_pass = _FullPass(x)
    dense = True  # cluster bookkeeping suspended: picks are full passes until a check
    next_check = 1
    p = _dense_next(min_d, perm)

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
            moved, d = full_pass.update(x, perm, i, min_d, grow)
            min_d[moved] = d
            assign[moved] = t
            p = _dense_next(min_d, perm)
        else:
            # clusters the new centre may take points from: d(c, centre_j) < 2 radius_j, first by the cheap
            # bound over all t centres, then by exact distances (as lower bounds) for those that pass
            rad = clusters.radius[:t]
            cand = np.flatnonzero(screen.lower(zcent[:t], z[p]) < 2.0 * grow * rad)
            dc = row_distances(np.take(x, sel[cand], axis=0), c, overwrite=True).astype(np.float64)
            dc *= dc_low
            keep = dc < 2.0 * grow * rad[cand]
            cand, dc = cand[keep], dc[keep]
            exact = _sparse_update(x, z, perm, c, z[p], t, cand, dc, grow, screen, clusters, min_d, assign)
            if exact > _DENSE_FRACTION * n:  # the bounds do not pay (yet): full passes until the next check
                dense = True
                next_check = int(t * _CHECK_GROWTH) + 4
                p = _dense_next(min_d, perm)
        if progress is not None:
            progress(1)
    return CoresetResult(sel, float(min_d.max()))


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


def greedy_coreset(
    x: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    method: Method = "auto",
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> CoresetResult:
    """Select k rows of x (already projected) by greedy k-center from a seeded random start.

    `auto` takes the plain loop on CUDA and the pruned one on CPU.
    """
    n = len(x)
    if n == 0 or k <= 0:
        return CoresetResult(np.empty(0, dtype=np.int64), 0.0)
    if not np.all(np.isfinite(x)):
        raise ValueError("coreset input contains NaN or Inf")
    start = int(np.random.default_rng(seed).integers(n))
    if method == "auto":
        method = "plain" if device.startswith("cuda") else "pruned"
    if method == "plain":
        if device.startswith("cuda"):
            return greedy_plain_torch(x, k, start, device, progress)
        return greedy_plain(x, k, start, progress)
    if method == "pruned":
        return greedy_pruned(x, k, start, progress)
    raise ValueError(f"coreset method must be auto, plain or pruned, got {method!r}")


def coverage_radius(x: np.ndarray, selected: np.ndarray, block: int = 65536) -> float:
    """Max over rows of x of the distance to the nearest selected row (brute force, blocked)."""
    if len(selected) == 0:
        return math.inf
    s = np.asarray(x[selected], dtype=np.float32)
    best = 0.0
    for a in range(0, len(x), block):
        q = np.asarray(x[a : a + block], dtype=np.float32)
        d2 = (q * q).sum(1)[:, None] - 2.0 * q @ s.T + (s * s).sum(1)[None, :]
        best = max(best, float(np.sqrt(np.maximum(d2.min(1), 0.0)).max()))
    return best
