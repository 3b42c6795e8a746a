"""The defect head: a linear patch classifier, fit on training rows only (normal rows against defect-bank
candidate rows), whose standardised logit is the defect evidence of the fused score's `head` form.

Why: on real (ImageNet) features the defect bank carries signal that a nearest-neighbour distance to M_P
barely uses: a held-out test patch is almost never closer to a known defect than M_P's own rows are to each
other, so relu(1 - d_P / tau_P) stays 0. What known defects share is a *direction* in feature space (darker,
brighter, an edge where the texture has none), and a class-balanced, L2-regularised logistic regression finds
it from a few hundred defect rows. Its logit is standardised on the normal rows (median 0, robust spread 1),
so the evidence relu(z) is in the same kind of units whatever the backbone, and 0 for most normal patches
(docs/design.md, "Fused scoring").

scikit-learn does the fitting (`LogisticRegression`, lbfgs); what is ours is the choice of rows, the balance,
the folding of the standardisation into one weight vector, and the standardisation of the logit.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# L2 strength of the head (sklearn's C, on standardised features). On the dev suite (seed 0 of the 4 dev sets,
# RESULTS §7) C = 0.01, 0.1 and 1 scored within 0.005 of each other on every set; 0.1 is the middle.
HEAD_C = 0.1
# At most this many normal rows are used to fit and standardise the head (seeded uniform sample): the fit's
# cost is linear in rows, and 20,000 rows of 152-1,536 dims fit in seconds on one core.
HEAD_MAX_NORMAL_ROWS = 20_000
# The logit's spread on normal rows: (q_hi - median) / z_hi, a robust standard deviation (q_hi = 0.99 of a
# normal law is 2.326 sd above its median).
SPREAD_QUANTILE, SPREAD_Z = 0.99, 2.326


@dataclass(frozen=True)
class DefectHead:
    """z(x) = x . weight + bias, already standardised: median 0 and robust spread 1 on normal training rows.

    weight: (d,) float32 in the stores' feature space; positive z leans defect."""

    weight: np.ndarray
    bias: float
    floor: float = 0.0  # subtracted from the standardised logit (folded into bias): see `with_floor`

    def logits(self, rows: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(n, d) rows -> (n,) standardised logits, float32 on the rows' device."""
        x = torch.as_tensor(rows).to(torch.float32)
        w = torch.as_tensor(self.weight, dtype=torch.float32, device=x.device)
        return x @ w + self.bias

    def with_floor(self, normal_blocks: Iterable[torch.Tensor | np.ndarray]) -> DefectHead:
        """The head that must exceed everything it says on normal rows (blocks of (n, d), streamed): z minus
        the largest z over them, so relu(z) is 0 on every one of them (head_floor `calibration_max`: the rows
        of the held-out calibration normals). Why: relu(z) of the plain head is > 0 on about half of all normal patches, and that noise
        raises normal images' scores; a defect type the head never saw gains nothing to offset it, and scored
        up to 0.19 image AUROC below PatchCore on the dev suite (RESULTS §8)."""
        tops = [float(self.logits(b).max()) for b in normal_blocks if len(b)]
        if not tops:
            return self
        top = max(tops)
        return DefectHead(self.weight, self.bias - top, self.floor + top)

    def to_dict(self) -> dict[str, Any]:
        return {
            "weight": [float(v) for v in self.weight],
            "bias": float(self.bias),
            "floor": float(self.floor),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DefectHead:
        return cls(
            np.asarray(data["weight"], dtype=np.float32), float(data["bias"]), float(data.get("floor", 0.0))
        )


def sample_rows(rows: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `rows` (n, d), a seeded uniform sample without replacement, in row order."""
    if len(rows) <= limit:
        return rows
    pick = np.sort(np.random.default_rng(seed).choice(len(rows), limit, replace=False))
    return rows[pick]


def fit_head(
    normal_rows: np.ndarray, defect_rows: np.ndarray, seed: int, c: float = HEAD_C
) -> DefectHead | None:
    """Fit the head on training rows: normal (n, d) against defect (m, d), classes weighted equally.

    None when either side is empty (no evidence to learn from: the fused score is PatchCore's)."""
    from sklearn.linear_model import LogisticRegression

    if len(normal_rows) == 0 or len(defect_rows) < 2:
        return None
    normal = sample_rows(np.asarray(normal_rows, dtype=np.float32), HEAD_MAX_NORMAL_ROWS, seed)
    defect = np.asarray(defect_rows, dtype=np.float32)
    x = np.concatenate([normal, defect]).astype(np.float64)
    y = np.concatenate([np.zeros(len(normal)), np.ones(len(defect))])
    mu, sd = x.mean(0), x.std(0)
    sd[sd < 1e-6] = 1.0  # constant channels (dead ReLUs) carry nothing: leave them unscaled
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=500, tol=1e-6)
    clf.fit((x - mu) / sd, y)
    w = clf.coef_[0] / sd  # fold the standardisation into the weights: z = x . w + b
    b = float(clf.intercept_[0] - mu @ w)
    z = normal.astype(np.float64) @ w + b
    centre = float(np.median(z))
    spread = (float(np.quantile(z, SPREAD_QUANTILE)) - centre) / SPREAD_Z
    if spread <= 1e-3 * float(z.std()) or spread <= 0:  # most normal logits equal: fall back to their sd
        spread = float(z.std()) or 1.0
    return DefectHead((w / spread).astype(np.float32), (b - centre) / spread)
