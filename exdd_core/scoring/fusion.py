"""Defect-evidence fusion: scoring kernels that let a defect bank M_P add evidence to PatchCore without ever
dividing by it.

Why: the paper's ratio d_N / d_P divides every patch's normal-distance by its defect-distance, so where M_P
holds no evidence (most patches; a bank that is half background) it injects noise and, measured on held-out
data, scores below its own PatchCore. The kernels here instead *add* a bounded, non-negative term that is exactly
zero where a patch is no closer to a known defect than the defect bank's own spacing, so the score reduces to
PatchCore (d_N, in units of the normal bank's spacing) whenever M_P is empty, useless or far away:

    s(x) = d_N(x) / tau_N + lam * g(x),   g(x) = relu(1 - d_P(x) / tau_P)         (form "tau")
                                          g(x) = relu(d_N(x) - d_P(x)) / tau_N      (form "margin")
                                          g(x) = relu(z(x))                          (form "head")

z is the defect head's standardised logit (`scoring.defect_head`: a linear classifier of normal training rows
against defect-bank rows, median 0 and robust spread 1 on normal rows).

tau_N / tau_P are each bank's own scale: the median of its rows' distances to their nearest other row
(`banks.health.normal_nn_scale`; no test data, no labels). Before its coreset, M_P is purified against M_N
(`banks.purify`). lam is a fixed constant or is chosen by cross-fitting on training images (`select_by_cv`,
`scoring.crossfit`), never on a test split (design.md, "Fused scoring").

A second use of known defects, a channel-weighted metric, was measured on the dev suite and not adopted (not
robust across sets); it lives with the suite (`benchmarks/quality_scoring.py: channel_weights`).

All kernels are pure functions of tensors; `fused_scores` is the whole per-image wiring.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from exdd_core.runtime.choices import FUSION_FORMS as FORMS
from exdd_core.runtime.choices import FusionForm as Form


def defect_evidence(
    d_n: torch.Tensor,
    d_p: torch.Tensor,
    tau_n: float,
    tau_p: float,
    form: Form = "tau",
    head_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """g >= 0 per patch, exactly 0 where there is no defect evidence.

    `tau`: relu(1 - d_P / tau_P), in [0, 1]: 1 on a defect row, 0 beyond the defect bank's own spacing.
    `margin`: relu(d_N - d_P) / tau_N: how much closer the patch is to a known defect than to normal.
    `head`: relu(z), z (n,) the defect head's standardised logit of each patch."""
    if form == "head":
        if head_z is None:
            raise ValueError("form 'head' needs the defect head's logits (head_z)")
        return torch.clamp(head_z, min=0.0)
    if form == "tau":
        return torch.clamp(1.0 - d_p / tau_p, min=0.0)
    if form == "margin":
        return torch.clamp(d_n - d_p, min=0.0) / tau_n
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")


def fused_map(
    d_n: torch.Tensor,
    d_p: torch.Tensor | None,
    tau_n: float,
    tau_p: float,
    lam: float,
    form: Form = "tau",
    head_z: torch.Tensor | None = None,
) -> torch.Tensor:
    """d_N / tau_N + lam * g: PatchCore's map (rescaled by a constant) plus defect evidence on top.

    With `d_p` None (empty defect bank), lam == 0, or form `head` without a head, it is exactly d_N / tau_N."""
    if tau_n <= 0 or tau_p <= 0:
        raise ValueError(f"scales must be > 0, got tau_n={tau_n}, tau_p={tau_p}")
    base = d_n / tau_n
    if d_p is None or lam == 0 or (form == "head" and head_z is None):
        return base
    return base + lam * defect_evidence(d_n, d_p, tau_n, tau_p, form, head_z)


def topk_mean(values: torch.Tensor, k: int = 1) -> float:
    """Mean of the k largest entries (k = 1: the max, PatchCore's image score)."""
    flat = values.reshape(-1)
    k = max(1, min(int(k), flat.numel()))
    return float(torch.topk(flat, k).values.mean())


def fused_scores(
    d_n: torch.Tensor,
    d_p: torch.Tensor | None,
    grid: tuple[int, int],
    *,
    tau_n: float,
    tau_p: float,
    lam: float,
    form: Form = "tau",
    topk: int = 1,
    head_z: torch.Tensor | None = None,
) -> tuple[float, np.ndarray]:
    """One image: per-patch d_N (h*w,), d_P (h*w,) or None, head logits (h*w,) or None -> (image score,
    (h, w) grid map)."""
    m = fused_map(d_n, d_p, tau_n, tau_p, lam, form, head_z)
    return topk_mean(m, topk), m.reshape(grid).cpu().numpy()


def select_by_cv(
    candidates: Sequence[float], cv_score: Callable[[float], float], tol: float = 0.005
) -> float:
    """The smallest candidate whose cross-fitted score is within `tol` of the best (ties -> simpler).

    Why: lam must be fitted on training folds only, and when the defect bank does not help, the rule falls
    back to the smallest lam (put 0 among the candidates to allow plain PatchCore)."""
    if not candidates:
        raise ValueError("no candidates")
    ordered = sorted(float(c) for c in candidates)
    scores = [float(cv_score(c)) for c in ordered]
    best = max(scores)
    return next(c for c, s in zip(ordered, scores, strict=True) if s >= best - tol)
