"""Greedy k-center (farthest-point) selection, paper eq. 8: the textbook loops (numpy, and torch for CUDA)
and the pieces every method shares. `plain` is the reference the pruned method (`pruned.py`) is checked
against: both pick the same indices from the same start (docs/design.md, "Banks")."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Unit roundoff of float32: every margin below is a small multiple of it times a dimension.
UNIT_ROUNDOFF = float(np.finfo(np.float32).eps) / 2
# Rows per block of a full pass: bounds the temporaries (block x dim floats) whatever N is.
BLOCK = 1 << 16


@dataclass(frozen=True)
class CoresetResult:
    """Selected row indices (in pick order) and the coverage radius: max over all points of the distance to
    their nearest selected point (the quantity eq. 8 minimises)."""

    indices: np.ndarray
    radius: float


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


def full_distances(x: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """`row_distances` of every row, in blocks so the temporaries stay at BLOCK x dim floats."""
    out = np.empty(len(x), dtype=np.float32)
    for a in range(0, len(x), BLOCK):
        out[a : a + BLOCK] = row_distances(x[a : a + BLOCK], centre)
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
