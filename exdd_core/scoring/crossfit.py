"""The fusion weight lam, cross-fitted on training images only (stage fit_fusion; design.md, "Fused scoring").

The training images are split into folds (normal images of the bank, and the known defective images). For
each fold, both banks are rebuilt without it - M_N without its normal images, M_P without its defective images
and without every synthetic image painted into or with one of them - exactly as the bank stages build them
(coreset, purification, pseudo-masks). The fold's images are then scored as test images would be, and each
candidate lam gets the mean of two AUROCs over all folds: image level (normal vs defective) and grid-cell level
(cells covered by a known defect's mask vs every other cell). The smallest lam within `tolerance` of the best
wins (`fusion.select_by_cv`): with 0 among the candidates, a defect bank that does not help on held-out
training images leaves exactly PatchCore. No test image is ever seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from exdd_core.banks.build import coreset_rows
from exdd_core.banks.health import normal_nn_scale, normal_self_nn
from exdd_core.banks.knn import Bank
from exdd_core.banks.purify import defect_row_filter
from exdd_core.data.records import SYNTHETIC_PREFIX
from exdd_core.features.store import Store
from exdd_core.scoring.fusion import fused_map, select_by_cv, topk_mean


@dataclass
class HeldOut:
    """One held-out training image scored against its fold's banks: per-patch d_N and d_P, the banks'
    scales, its label, and which grid cells a mask marks as defect (None: no mask, image level only)."""

    d_n: torch.Tensor
    d_p: torch.Tensor | None
    tau_n: float
    tau_p: float
    label: int
    cells: np.ndarray | None


@dataclass
class Fit:
    lam: float
    criterion: dict[float, float]  # candidate -> cross-fitted (image AUROC + cell AUROC) / 2
    images: dict[str, int] = field(default_factory=dict)
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "criterion": {str(k): round(v, 6) for k, v in self.criterion.items()},
            "images": self.images,
            "note": self.note,
        }


def fold_of(ids: list[str], folds: int) -> dict[str, int]:
    """Image id -> fold, by position (the stores' order is the manifests' order: deterministic)."""
    return {i: k % folds for k, i in enumerate(ids)}


def _rows_of(store: Store, ids: set[str]) -> np.ndarray:
    """Indices of the store's rows that belong to images in `ids`, sorted."""
    flags = np.array([i in ids for i in store.images], dtype=bool)
    return np.flatnonzero(np.repeat(flags, np.diff(store.offsets)))


def held_out_scores(
    normal: Store,
    defect: Store,
    bank_ids: list[str],
    synth_sources: dict[str, set[str]],
    defect_images: dict[str, tuple[np.ndarray, np.ndarray | None]],
    bank: dict[str, Any],
    folds: int,
    seed: int,
    device: str = "cpu",
) -> list[HeldOut]:
    """Every held-out image of every fold, scored against banks built without its fold.

    `bank_ids`: the normal images the normal bank is built from; `synth_sources`: synthetic id -> the
    training image ids it was painted into or with; `defect_images`: known defective training image id ->
    (its full patch rows as stored, the cell-defect flags or None); `bank`: the `bank` params."""
    coreset = dict(
        projection_dim=bank["projection_dim"], seed=seed, method=bank["coreset_method"], device=device
    )
    normal_fold = fold_of(bank_ids, folds)
    defect_fold = fold_of(list(defect_images), folds)
    out: list[HeldOut] = []
    for f in range(folds):
        held_n = {i for i, k in normal_fold.items() if k == f}
        held_d = {i for i, k in defect_fold.items() if k == f}
        m_n = coreset_rows(
            normal,
            _rows_of(normal, set(bank_ids) - held_n),
            ratio=bank["normal_ratio"],
            min_size=bank["min_size"],
            **coreset,
        )
        bank_n = Bank(m_n, device)
        tainted = {s for s, src in synth_sources.items() if src & (held_n | held_d)}
        usable = {i for i in defect.images if i not in held_d and i not in tainted}
        spacing = normal_self_nn(bank_n)  # M_N^f's spacing: purification, pseudo-masks and tau_N alike
        keep = defect_row_filter(defect, bank_n, bank["purify"], bank["pseudo_top"], spacing).keep
        candidates = np.intersect1d(_rows_of(defect, usable), np.flatnonzero(keep))
        m_p = coreset_rows(
            defect, candidates, ratio=bank["defect_ratio"], min_size=bank["min_size"], **coreset
        )
        bank_p = Bank(m_p, device) if len(m_p) else None
        tau_n = float(np.median(spacing)) if len(spacing) else 1.0
        tau_p = (normal_nn_scale(bank_p) if bank_p is not None else None) or 1.0
        queries = [(r, 0, None) for _, i, r, _ in normal.iter_images() if i in held_n]
        queries += [(rows, 1, cells) for i, (rows, cells) in defect_images.items() if i in held_d]
        for rows, label, cells in queries:
            d_n = bank_n.knn(rows, 1)[0][:, 0].cpu()
            d_p = bank_p.knn(rows, 1)[0][:, 0].cpu() if bank_p is not None else None
            out.append(HeldOut(d_n, d_p, tau_n, tau_p, label, cells))
    return out


def fit_lambda(held: list[HeldOut], fusion: dict[str, Any]) -> Fit:
    """The cross-fitted lam among fusion["candidates"] (see module doc)."""
    labels = np.array([h.label for h in held])
    n_def = int(labels.sum())
    images = {"normal": int(len(labels) - n_def), "defective": n_def}
    if n_def == 0 or n_def == len(labels):
        note = "no known defective training images to cross-fit on: lam 0 (the score is PatchCore's)"
        return Fit(0.0, {}, images, note)
    criterion: dict[float, float] = {}

    def crit(lam: float) -> float:
        maps = [fused_map(h.d_n, h.d_p, h.tau_n, h.tau_p, lam, fusion["form"]) for h in held]
        image = roc_auc_score(labels, [topk_mean(m, fusion["topk"]) for m in maps])
        px = [
            (m.numpy(), h.cells if h.label else np.zeros(m.numel(), bool))
            for m, h in zip(maps, held, strict=True)
            if not (h.label and h.cells is None)
        ]
        y = np.concatenate([c for _, c in px])
        cell = roc_auc_score(y, np.concatenate([m for m, _ in px])) if 0 < y.sum() < y.size else image
        criterion[float(lam)] = 0.5 * (image + cell)
        return criterion[float(lam)]

    lam = select_by_cv(fusion["candidates"], crit, fusion["tolerance"])
    return Fit(float(lam), criterion, images)


def synth_sources(recipes: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Synthetic id -> the training images it came from (its normal image, and its mask's image)."""
    return {
        r["id"]: {r["normal_id"], r["mask_id"]}
        for r in recipes
        if str(r.get("id", "")).startswith(SYNTHETIC_PREFIX)
    }
