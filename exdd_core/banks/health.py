"""Defect-bank health: how much of M_P is really defect and how much is background that M_N already covers.

A defect row closer to M_N than normal patches are to each other carries no evidence a normal patch would
not also match: it makes normal patches look defect-like. On held-out data about half of M_P was such rows,
and the ExDD ratio lost to its own PatchCore (docs/design.md, "Defect-bank health"). Every run reports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from exdd_core.banks.knn import Bank

# Normal-bank rows whose nearest other normal row sets M_N's scale: a seeded sample, since all N_N of them
# cost a bank-by-bank search (46 k x 46 k x 1,536 at KSDD2 scale) for a median that 2,048 rows pin down.
SCALE_SAMPLE = 2048
# Above this share of background rows, evaluate warns that the defect bank is mostly background.
MOSTLY_BACKGROUND = 0.5


def mostly_background(share: float | None) -> bool:
    """A defect bank whose share of rows closer to M_N than M_N's own spacing exceeds MOSTLY_BACKGROUND."""
    return share is not None and share > MOSTLY_BACKGROUND


@dataclass(frozen=True)
class BankHealth:
    defect_rows: int
    synthetic_rows: int
    normal_nn_scale: float | None  # median distance of a normal-bank row to its nearest other normal row
    background_share: float | None  # defect rows whose nearest normal row is closer than that scale
    synthetic_background_share: float | None  # the same among the synthetic rows alone

    @property
    def mostly_background(self) -> bool:
        return mostly_background(self.background_share)

    def as_dict(self) -> dict:
        return asdict(self)


def normal_self_nn(normal: Bank, sample: int = SCALE_SAMPLE, seed: int = 0) -> np.ndarray:
    """Distances of (a seeded sample of) M_N's rows to their nearest *other* row: M_N's own spacing."""
    n = len(normal)
    if n < 2:
        return np.zeros(0)
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if n <= sample else np.sort(rng.choice(n, sample, replace=False))
    d, i = normal.knn(normal.take(idx), 2)
    self_first = i[:, 0].cpu().numpy() == idx  # duplicates can tie with the row itself: take the other
    return np.where(self_first, d[:, 1].cpu().numpy(), d[:, 0].cpu().numpy()).astype(np.float64)


def normal_nn_scale(normal: Bank, sample: int = SCALE_SAMPLE, seed: int = 0) -> float | None:
    """Median of M_N's own spacing (`normal_self_nn`); None for a bank of fewer than 2 rows."""
    spacing = normal_self_nn(normal, sample, seed)
    return float(np.median(spacing)) if len(spacing) else None


def defect_bank_health(
    normal: Bank, defect_rows: np.ndarray, synthetic: np.ndarray, scale: float | None = None
) -> BankHealth:
    """Health of M_P (rows (n, d), `synthetic` bool (n,): which rows come from synthesized images).
    `scale`: M_N's `normal_nn_scale` when the caller already has it (the model computes it once)."""
    synthetic = np.asarray(synthetic, dtype=bool)
    n = len(defect_rows)
    scale = normal_nn_scale(normal) if scale is None else scale
    if n == 0 or scale is None:
        return BankHealth(n, int(synthetic.sum()), scale, None, None)
    d_n = normal.knn(defect_rows, 1)[0][:, 0].cpu().numpy()
    background = d_n < scale
    syn_share = float(background[synthetic].mean()) if synthetic.any() else None
    return BankHealth(n, int(synthetic.sum()), scale, float(background.mean()), syn_share)
