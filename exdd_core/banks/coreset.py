"""Coreset selection for a bank: greedy k-center (farthest-point) subsampling, paper eq. 8, from a seeded
random start, by one of three exact methods that pick the same indices (docs/design.md, "Banks"):

* `plain` (`greedy.py`): the textbook loop, one O(N) distance update per pick; what a GPU wants.
* `lazy` (`lazy_greedy.py`): the same picks by rounds of certain picks among the farthest rows, the others
  brought up to date by GEMMs only while they could still be picked; the CPU default, fastest on every input
  measured (benchmarks/RESULTS.md §13): ~10x `pruned` on ImageNet Lite0 features, ~14x on isotropic noise.
* `pruned` (`pruned.py`): the same picks with work skipped by cluster bounds; kept as a second exact
  method to check the others against, and for rows of very low intrinsic dimension.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from exdd_core.banks.greedy import CoresetResult, greedy_plain, greedy_plain_torch
from exdd_core.banks.lazy_greedy import greedy_lazy
from exdd_core.banks.pruned import greedy_pruned
from exdd_core.runtime.choices import CORESET_METHODS
from exdd_core.runtime.choices import CoresetMethod as Method


def coreset_size(n: int, ratio: float, min_size: int) -> int:
    """Target size as the authors' code: max(min_size, int(ratio * n)), never more than n."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"coreset ratio must be in (0, 1], got {ratio}")
    if n <= 0:
        return 0
    return min(n, max(int(min_size), int(ratio * n)))


def start_index(n: int, seed: int) -> int:
    """The seeded random first pick of a coreset of n rows (every method, every rank, the same)."""
    return int(np.random.default_rng(seed).integers(n))


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

    `auto` takes the plain loop on CUDA and the lazy one on CPU.
    """
    n = len(x)
    if n == 0 or k <= 0:
        return CoresetResult(np.empty(0, dtype=np.int64), 0.0)
    if not np.all(np.isfinite(x)):
        raise ValueError("coreset input contains NaN or Inf")
    start = start_index(n, seed)
    if method == "auto":
        method = "plain" if device.startswith("cuda") else "lazy"
    if method == "plain":
        if device.startswith("cuda"):
            return greedy_plain_torch(x, k, start, device, progress)
        return greedy_plain(x, k, start, progress)
    if method == "pruned":
        return greedy_pruned(x, k, start, progress)
    if method == "lazy":
        return greedy_lazy(x, k, start, progress)
    raise ValueError(f"coreset method must be one of {', '.join(CORESET_METHODS)}, got {method!r}")
