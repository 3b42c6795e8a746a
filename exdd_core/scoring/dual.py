"""Dual-bank ExDD scoring (paper eq. 12-23) and the one-bank PatchCore score, for one test image at a time.

Notation as the paper: d_N / d_P are each test patch's nearest-neighbour distances to the normal bank M_N and
the defect bank M_P; m_test,* is the patch with the largest d_N (its neighbour m*), and the reweighting uses the
b nearest neighbours of a bank entry inside its own bank, *besides* the entry itself (design.md, row E),
with the exponent sign of PatchCore and the authors' code:

    w_N = 1 - exp(s_N*/sqrt(d)) / sum_{m in N_b(m*)} exp(|m_test,* - m| / sqrt(d))
    w_P =     exp(s_P*/sqrt(d)) / sum_{m in N_b(m+)} exp(|m_test,+ - m| / sqrt(d))
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from exdd_core.banks.knn import Bank
from exdd_core.runtime.choices import RATIO_MODES as MODES


def reweight(s: torch.Tensor, nbr_dists: torch.Tensor, dim: int, *, positive: bool) -> torch.Tensor:
    """Neighbourhood weight for score(s) `s` (...,) given distances (..., b) from the same test patch(es) to
    the b neighbours of their nearest bank entry. Computed in log space so large distances cannot overflow."""
    scale = math.sqrt(dim)
    log_ratio = s / scale - torch.logsumexp(nbr_dists / scale, dim=-1)
    ratio = torch.exp(log_ratio)
    return ratio if positive else 1.0 - ratio


class ScoringBank:
    """A bank plus a lazily filled table of each entry's b nearest neighbours inside the bank (N_b(m))."""

    def __init__(self, rows: np.ndarray | Any, neighbours: int, device: str = "cpu") -> None:
        """`rows` (n, d), or a bank object already built (a `Bank`, or a `banks.distributed.ShardedBank`)."""
        self.bank = rows if hasattr(rows, "knn") else Bank(rows, device=device)
        self.b = int(neighbours)
        self._table = torch.full((len(self.bank), self.b), -1, dtype=torch.long, device=self.bank.device)

    def __len__(self) -> int:
        return len(self.bank)

    def neighbours(self, idx: torch.Tensor) -> torch.Tensor:
        """N_b(m) for bank entries idx (n,) -> (n, b'), computing only entries not seen before."""
        missing = torch.unique(idx[self._table[idx, 0] < 0])
        if len(missing):
            nn = self.bank.neighbours_of_members(missing, self.b)
            self._table[missing, : nn.shape[1]] = nn
            if nn.shape[1] < self.b:  # bank smaller than b+1: repeat the last neighbour
                self._table[missing, nn.shape[1] :] = nn[:, -1:]
        return self._table[idx]

    def weights(self, queries: torch.Tensor, nn_idx: torch.Tensor, nn_dist: torch.Tensor, *, positive: bool):
        """Reweighting factor for each query patch given its nearest entry `nn_idx` at distance `nn_dist`."""
        nbrs = self.neighbours(nn_idx)  # (n, b)
        d = self.bank.distances(queries, nbrs)  # (n, b)
        return reweight(nn_dist, d, self.bank.dim, positive=positive)


@dataclass
class ImageScore:
    """Scores of one test image: ExDD image score per mode, the PatchCore baselines, and the grid maps."""

    exdd: dict[str, float]
    patchcore: float  # s_N*: max over patches of d_N (PatchCore without reweighting)
    patchcore_reweighted: float  # w_N * s_N* (PatchCore's full image score)
    ratio_map: np.ndarray  # (h, w) per-position ExDD ratio (eq. 23), before upsampling
    normal_map: np.ndarray  # (h, w) d_N per position: the PatchCore anomaly map
    defect_map: np.ndarray | None = None  # (h, w) d_P per position (None: empty defect bank)
    fallback: bool = False  # True when the defect bank was empty (design.md, "Empty defect bank")
    details: dict[str, float] = field(default_factory=dict)


def score_image(
    rows: np.ndarray | torch.Tensor,
    grid: tuple[int, int],
    normal: ScoringBank,
    defect: ScoringBank | None,
    *,
    eps: float = 1e-6,
    map_reweight: bool = True,
) -> ImageScore:
    """Score one image's patch rows (h*w, d) against the two banks, in all three image-score modes.

    With an empty or missing defect bank every ExDD score falls back to the PatchCore score s_N* and the map
    to d_N (design.md, "Empty defect bank"); `fallback` says so, and the caller must report it.
    """
    x = torch.as_tensor(np.asarray(rows, dtype=np.float32), device=normal.bank.device)
    h, w = grid
    if x.shape[0] != h * w:
        raise ValueError(f"image has {x.shape[0]} patch rows, grid {h}x{w} needs {h * w}")
    d_n, i_n = normal.bank.knn(x, 1)
    d_n, i_n = d_n[:, 0], i_n[:, 0]
    j_star = int(torch.argmax(d_n))
    s_n_star = d_n[j_star]
    w_n_star = normal.weights(
        x[j_star : j_star + 1], i_n[j_star : j_star + 1], s_n_star[None], positive=False
    )[0]
    s_n = float(w_n_star * s_n_star)
    patchcore = float(s_n_star)
    normal_map = d_n.reshape(h, w).cpu().numpy()

    if defect is None or len(defect) == 0:
        return ImageScore(
            exdd={m: patchcore for m in MODES},
            patchcore=patchcore,
            patchcore_reweighted=s_n,
            ratio_map=normal_map.copy(),
            normal_map=normal_map,
            fallback=True,
        )

    d_p, i_p = defect.bank.knn(x, 1)
    d_p, i_p = d_p[:, 0], i_p[:, 0]
    exdd: dict[str, float] = {}
    details: dict[str, float] = {"s_n_star": patchcore, "w_n": float(w_n_star)}
    for mode, j_plus in (("paper", int(torch.argmax(d_p))), ("same_patch", j_star)):  # "fused": ExddModel
        w_p = defect.weights(
            x[j_plus : j_plus + 1], i_p[j_plus : j_plus + 1], d_p[j_plus][None], positive=True
        )
        s_p = float(w_p[0] * d_p[j_plus])
        exdd[mode] = s_n / (s_p + eps)
        details[f"s_p_star_{mode}"] = float(d_p[j_plus])
        details[f"w_p_{mode}"] = float(w_p[0])

    if map_reweight:
        wn = normal.weights(x, i_n, d_n, positive=False)
        wp = defect.weights(x, i_p, d_p, positive=True)
        ratio = (wn * d_n) / (wp * d_p + eps)
    else:
        ratio = d_n / (d_p + eps)
    ratio_map = ratio.reshape(h, w).cpu().numpy()
    exdd["max_ratio"] = float(ratio_map.max())
    return ImageScore(
        exdd=exdd,
        patchcore=patchcore,
        patchcore_reweighted=s_n,
        ratio_map=ratio_map,
        normal_map=normal_map,
        defect_map=d_p.reshape(h, w).cpu().numpy(),
        details=details,
    )
