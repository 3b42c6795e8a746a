"""A k-d tree *order* of rows (no tree is kept): the pruned coreset walks rows in it so a cluster's members sit
close together in memory. Written here because the order alone is a dozen lines of median splits on the
widest coordinate (with leaves of 256 rows); a full tree would be built only to be thrown away."""

from __future__ import annotations

import numpy as np


def kd_order(z: np.ndarray, leaf: int = 256) -> np.ndarray:
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
