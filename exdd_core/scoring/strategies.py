"""Image-score strategies: PatchCore, the paper's three ratio modes and the fused score, each a small object
behind one interface - `strategy(evidence) -> (image score, grid map)` - as the PatchCore reference swaps its
samplers.

`Evidence` is what one image's patches are against both banks, computed once by `ExddModel.score` and read by
every strategy: each patch's nearest-neighbour distance and index in M_N (d_N) and M_P (d_P), the defect head's
logits, and, computed on first use and shared, the paper's reweighted quantities (design.md, "The method" 8-9;
rows A, E, F):

    s_N  = w_N s_N*,  w_N = 1 - exp(s_N*/sqrt(d)) / sum_{m in N_b(m*)} exp(|m_test,* - m| / sqrt(d))
    s_P  = w_P d_P(j+), w_P = exp(d_P(j+)/sqrt(d)) / sum_{m in N_b(m+)} exp(|m_test,+ - m| / sqrt(d))
    ratio(x) = w_N d_N / (w_P d_P + eps)        (map_reweight false: d_N / (d_P + eps), the authors' code)

With an empty defect bank every ExDD strategy falls back to PatchCore (design.md, "Empty defect bank").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Protocol

import numpy as np
import torch

from exdd_core.scoring.fusion import fused_scores
from exdd_core.scoring.reweighting import ScoringBank


@dataclass
class Evidence:
    """One image's patches x (n, d) on a (h, w) grid against M_N and M_P (None: empty defect bank)."""

    x: torch.Tensor
    grid: tuple[int, int]
    normal: ScoringBank
    defect: ScoringBank | None
    eps: float = 1e-6
    map_reweight: bool = True
    head_z: torch.Tensor | None = None  # (n,) the defect head's standardised logits, when there is a head
    d_n: torch.Tensor = field(init=False)  # (n,) distance to the nearest M_N row
    i_n: torch.Tensor = field(init=False)  # (n,) its index
    d_p: torch.Tensor | None = field(init=False)  # (n,) distance to the nearest M_P row
    i_p: torch.Tensor | None = field(init=False)

    def __post_init__(self) -> None:
        h, w = self.grid
        if self.x.shape[0] != h * w:
            raise ValueError(f"image has {self.x.shape[0]} patch rows, grid {h}x{w} needs {h * w}")
        d, i = self.normal.bank.knn(self.x, 1)
        self.d_n, self.i_n = d[:, 0], i[:, 0]
        self.d_p = self.i_p = None
        if self.defect is not None and len(self.defect):
            d, i = self.defect.bank.knn(self.x, 1)
            self.d_p, self.i_p = d[:, 0], i[:, 0]

    @property
    def fallback(self) -> bool:
        return self.d_p is None

    @cached_property
    def j_star(self) -> int:
        """m_test,*: the patch farthest from M_N."""
        return int(torch.argmax(self.d_n))

    @cached_property
    def normal_map(self) -> np.ndarray:
        """(h, w) d_N: PatchCore's map."""
        return self.d_n.reshape(self.grid).cpu().numpy()

    @cached_property
    def defect_map(self) -> np.ndarray | None:
        """(h, w) d_P, None with an empty defect bank."""
        return None if self.d_p is None else self.d_p.reshape(self.grid).cpu().numpy()

    @cached_property
    def s_n(self) -> float:
        """w_N s_N*: PatchCore's reweighted image score, the paper's numerator."""
        j = self.j_star
        w = self.normal.weights(self.x[j : j + 1], self.i_n[j : j + 1], self.d_n[j][None], positive=False)[0]
        return float(w * self.d_n[j])

    def s_p(self, j: int) -> float:
        """w_P d_P at patch j (m_test,+)."""
        assert self.defect is not None and self.d_p is not None and self.i_p is not None
        w = self.defect.weights(self.x[j : j + 1], self.i_p[j : j + 1], self.d_p[j][None], positive=True)
        return float(w[0] * self.d_p[j])

    @cached_property
    def ratio_map(self) -> np.ndarray:
        """(h, w) the paper's per-patch ratio (eq. 23); d_N with an empty defect bank."""
        if self.d_p is None or self.defect is None or self.i_p is None:
            return self.normal_map.copy()
        if self.map_reweight:
            wn = self.normal.weights(self.x, self.i_n, self.d_n, positive=False)
            wp = self.defect.weights(self.x, self.i_p, self.d_p, positive=True)
            ratio = (wn * self.d_n) / (wp * self.d_p + self.eps)
        else:
            ratio = self.d_n / (self.d_p + self.eps)
        return ratio.reshape(self.grid).cpu().numpy()


class Strategy(Protocol):
    """An image score and the (h, w) grid map it is the score of; `name` is its key in every result and in
    metrics.json."""

    name: str

    def __call__(self, ev: Evidence) -> tuple[float, np.ndarray]: ...


@dataclass(frozen=True)
class PatchCore:
    """s_N* = max_x d_N(x), the one-bank baseline; `reweighted`: w_N s_N*, PatchCore's full image score. Map:
    d_N."""

    reweighted: bool = False

    @property
    def name(self) -> str:
        return "patchcore_reweighted" if self.reweighted else "patchcore"

    def __call__(self, ev: Evidence) -> tuple[float, np.ndarray]:
        return (ev.s_n if self.reweighted else float(ev.d_n[ev.j_star])), ev.normal_map


@dataclass(frozen=True)
class Ratio:
    """The paper's s_N / (s_P + eps) with m_test,+ the patch farthest from M_P (`paper`, eq. 14) or the patch
    farthest from M_N (`same_patch`); `max_ratio`: the largest cell of the ratio map (eq. 23). Map: the ratio."""

    name: str  # paper | same_patch | max_ratio

    def __call__(self, ev: Evidence) -> tuple[float, np.ndarray]:
        if ev.fallback:
            return float(ev.d_n[ev.j_star]), ev.ratio_map
        if self.name == "max_ratio":
            return float(ev.ratio_map.max()), ev.ratio_map
        j = int(torch.argmax(ev.d_p)) if self.name == "paper" else ev.j_star  # type: ignore[arg-type]
        return ev.s_n / (ev.s_p(j) + ev.eps), ev.ratio_map


@dataclass(frozen=True)
class Fused:
    """d_N / tau_N + lam * defect evidence (design.md, "Fused scoring"); image score the top-k mean of it."""

    tau_n: float
    tau_p: float
    lam: float
    form: str
    topk: int
    name: str = "fused"

    def __call__(self, ev: Evidence) -> tuple[float, np.ndarray]:
        d_p = None if ev.defect_map is None else torch.as_tensor(ev.defect_map.reshape(-1))
        return fused_scores(
            torch.as_tensor(ev.normal_map.reshape(-1)), d_p, ev.grid,
            tau_n=self.tau_n, tau_p=self.tau_p, lam=self.lam, form=self.form,  # type: ignore[arg-type]
            topk=self.topk, head_z=ev.head_z,
        )  # fmt: skip
