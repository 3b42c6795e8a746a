"""Which defect-feature rows enter M_P: purification against M_N, and pseudo-masks for known defects that
carry an image-level label only (design.md, "Defect bank beyond pixel masks").

Both compare a defect row's distance to the normal bank, d_N, with M_N's own spacing (its rows' distances to
their nearest other row, `health.normal_self_nn`), so no threshold is learned from labels:

* a row under a mask whose d_N is below the `purify` quantile of that spacing sits inside the normal cloud -
  background of a defect image - and is dropped (off by default: the paper keeps every masked row);
* a row of an image without a mask is kept only when it is among the `pseudo_top` fraction of that image's
  patches farthest from M_N *and* farther from M_N than the median spacing (not background by the health
  definition): the image is known to hold a defect, and its most abnormal patches that lie outside the
  normal bank's scale are taken as that defect; the rest of the image is surface.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from exdd_core.banks.health import normal_self_nn
from exdd_core.banks.knn import Bank
from exdd_core.features.store import Store


@dataclass(frozen=True)
class RowFilter:
    keep: np.ndarray  # bool (rows,) of the defect store
    masked_dropped: int  # masked rows dropped as background (purify)
    pseudo_kept: int  # rows of unmasked images kept as defect (pseudo-mask)
    pseudo_candidates: int  # rows of unmasked images


def unmasked_rows(store: Store) -> np.ndarray:
    """bool (rows,): rows of images the store lists as having no mask (all their patches were stored)."""
    unmasked = set(store.attrs.get("unmasked_images") or [])
    flags = np.array([i in unmasked for i in store.images], dtype=bool)
    return np.repeat(flags, np.diff(store.offsets))


def defect_row_filter(
    store: Store, normal: Bank, purify: float | None, pseudo_top: float, spacing: np.ndarray | None = None
) -> RowFilter:
    """Rows of the defect feature store to keep, judged by their distance to the normal bank `normal`.
    `spacing`: `normal_self_nn(normal)` when the caller already has it."""
    unmasked = unmasked_rows(store)
    n = len(store)
    if n == 0 or (purify is None and not unmasked.any()):
        return RowFilter(np.ones(n, dtype=bool), 0, 0, 0)
    spacing = normal_self_nn(normal) if spacing is None else spacing
    if len(spacing) == 0:  # no normal spacing to judge by: keep masked rows, no pseudo-defects
        return RowFilter(~unmasked, 0, 0, int(unmasked.sum()))
    d_n = np.empty(n)
    for a, block in store.iter_blocks():
        d_n[a : a + len(block)] = normal.knn(block, 1)[0][:, 0].cpu().numpy()
    keep = np.ones(n, dtype=bool)
    if purify is not None:
        keep[~unmasked] = d_n[~unmasked] >= np.quantile(spacing, purify)
    floor = float(np.median(spacing))
    for k in range(len(store.images)):
        a, b = int(store.offsets[k]), int(store.offsets[k + 1])
        if b > a and unmasked[a]:
            d = d_n[a:b]
            top = max(1, int(np.ceil(pseudo_top * (b - a))))
            cut = np.sort(d)[-top]  # the top-th largest distance of this image
            keep[a:b] = (d >= cut) & (d > floor)
    return RowFilter(
        keep,
        masked_dropped=int((~keep[~unmasked]).sum()),
        pseudo_kept=int(keep[unmasked].sum()),
        pseudo_candidates=int(unmasked.sum()),
    )
