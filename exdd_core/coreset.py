"""Greedy k-center (farthest-point) coreset selection, paper eq. 8.

Two exact implementations that pick the same indices from the same start:

* `plain`: the textbook loop - after each pick, one O(N) distance update of every point. On a GPU this is
  what you want (memory-bandwidth bound, no Python per point).
* `pruned`: the same greedy with triangle-inequality pruning (Gonzalez's algorithm with cluster bookkeeping).
  Every point belongs to the cluster of its nearest selected centre; a new centre c can only take points from
  cluster j if dist(c, centre_j) < 2 * radius_j, and inside such a cluster only points with
  min_dist > dist(c, centre_j) / 2. Distances that are computed use the very same row-distance function as the
  plain loop, so the float values - and therefore the picks - are identical. Late picks touch a few small
  clusters instead of all N points, which is where the speed comes from on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

Method = Literal["auto", "plain", "pruned"]
# Relative safety margin on the pruning tests: float rounding must never prune a point that the plain loop
# would update. 1e-4 is far above float32 rounding of a 128-d distance (~1e-6) and costs nothing measurable.
_MARGIN = 1e-4


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


def row_distances(rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """Euclidean distance of each row to `centre`, float32. Shared by both methods so values are bit-equal."""
    diff = rows - centre
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


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
    return CoresetResult(sel.cpu().numpy(), float(min_d.max().item()) if len(min_d) else 0.0)


def greedy_pruned(
    x: np.ndarray, k: int, start: int, progress: Callable[[int], None] | None = None
) -> CoresetResult:
    """Exact greedy k-center with cluster pruning; same picks as `greedy_plain` (see module docstring)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    k = min(k, n)
    sel = np.empty(k, dtype=np.int64)
    if k == 0:
        return CoresetResult(sel, 0.0)
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centre_sq = np.empty(k, dtype=np.float64)
    radius = np.empty(k, dtype=np.float32)  # per cluster: max min_d of its members
    far = np.empty(k, dtype=np.int64)  # per cluster: the member reaching that max

    sel[0] = start
    centres[0] = x[start]
    centre_sq[0] = float(centres[0].astype(np.float64) @ centres[0])
    min_d = row_distances(x, x[start])
    assign = np.zeros(n, dtype=np.int32)
    members: list[np.ndarray] = [np.arange(n, dtype=np.int64)]
    radius[0] = min_d.max()
    far[0] = int(np.argmax(min_d))

    for t in range(1, k):
        j_best = int(np.argmax(radius[:t]))
        i = int(far[j_best])
        c = x[i]
        sel[t] = i
        centres[t] = c
        c_sq = float(c.astype(np.float64) @ c)
        centre_sq[t] = c_sq
        # Distances from the new centre to every existing centre, by the dot-product identity (used only for
        # pruning decisions, which carry a safety margin).
        dc2 = centre_sq[:t] - 2.0 * (centres[:t] @ c) + c_sq
        dc = np.sqrt(np.maximum(dc2, 0.0))
        cand = np.nonzero(dc < 2.0 * radius[:t] * (1.0 + _MARGIN) + 1e-12)[0]
        taken: list[np.ndarray] = []
        for j in cand:
            idx = members[j]
            half = 0.5 * dc[j] * (1.0 - _MARGIN)
            sub = idx[min_d[idx] > half]
            if len(sub) == 0:
                continue
            d = row_distances(x[sub], c)
            better = d < min_d[sub]
            if not better.any():
                continue
            moved = sub[better]
            min_d[moved] = d[better]
            assign[moved] = t
            taken.append(moved)
            keep = idx[assign[idx] == j]
            members[j] = keep
            if len(keep):
                a = int(np.argmax(min_d[keep]))
                radius[j] = min_d[keep[a]]
                far[j] = keep[a]
            else:
                radius[j] = 0.0
                far[j] = sel[j]
        new = np.concatenate(taken) if taken else np.array([i], dtype=np.int64)
        members.append(new)
        a = int(np.argmax(min_d[new]))
        radius[t] = min_d[new[a]]
        far[t] = new[a]
        if progress is not None:
            progress(1)
    return CoresetResult(sel, float(radius[:k].max()))


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
