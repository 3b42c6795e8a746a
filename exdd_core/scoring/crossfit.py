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

from collections.abc import Iterable
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
from exdd_core.scoring.defect_head import HEAD_MAX_NORMAL_ROWS, DefectHead, fit_head
from exdd_core.scoring.fusion import defect_evidence, fused_map, select_by_cv, topk_mean


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
    head_z: torch.Tensor | None = None  # (h*w,) its fold's defect-head logits (form `head`)


@dataclass
class Fit:
    lam: float
    criterion: dict[float, float]  # candidate -> cross-fitted (image AUROC + cell AUROC) / 2
    images: dict[str, int] = field(default_factory=dict)
    note: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)  # where the evidence fired on held-out cells
    head: DefectHead | None = None  # the final head (form `head`), fit on every training image

    def as_dict(self) -> dict[str, Any]:
        return {
            "lam": self.lam,
            "criterion": {str(k): round(v, 6) for k, v in self.criterion.items()},
            "images": self.images,
            "note": self.note,
            "evidence": self.evidence,
            "head": None if self.head is None else self.head.to_dict(),
        }


def fold_of(ids: list[str], folds: int) -> dict[str, int]:
    """Image id -> fold, by position (the stores' order is the manifests' order: deterministic)."""
    return {i: k % folds for k, i in enumerate(ids)}


def _rows_of(store: Store, ids: set[str]) -> np.ndarray:
    """Indices of the store's rows that belong to images in `ids`, sorted."""
    flags = np.array([i in ids for i in store.images], dtype=bool)
    return np.flatnonzero(np.repeat(flags, np.diff(store.offsets)))


def head_from_stores(
    normal: Store, defect: Store, normal_ids: set[str], defect_rows: np.ndarray, seed: int
) -> DefectHead | None:
    """The defect head fit on a seeded sample of the rows of `normal_ids` against the defect store's rows
    `defect_rows` (indices): only the sampled normal rows are read."""
    rows = _rows_of(normal, normal_ids)
    if len(rows) > HEAD_MAX_NORMAL_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, HEAD_MAX_NORMAL_ROWS, replace=False))
    return fit_head(normal.take(rows), defect.take(defect_rows), seed)


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
    head: bool = False,
    floor_rows: Iterable[np.ndarray] | None = None,
) -> list[HeldOut]:
    """Every held-out image of every fold, scored against banks (and, with `head`, a defect head) built
    without its fold.

    `bank_ids`: the normal images the normal bank is built from; `synth_sources`: synthetic id -> the
    training image ids it was painted into or with; `defect_images`: known defective training image id ->
    (its full patch rows as stored, the cell-defect flags or None); `bank`: the `bank` params; `floor_rows`:
    the calibration normals' rows each fold's head is floored on (DefectHead.with_floor), or None."""
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
        h = head_from_stores(normal, defect, set(bank_ids) - held_n, candidates, seed) if head else None
        if h is not None and floor_rows is not None:
            h = h.with_floor(floor_rows)
        queries = [(r, 0, None) for _, i, r, _ in normal.iter_images() if i in held_n]
        queries += [(rows, 1, cells) for i, (rows, cells) in defect_images.items() if i in held_d]
        for rows, label, cells in queries:
            d_n = bank_n.knn(rows, 1)[0][:, 0].cpu()
            d_p = bank_p.knn(rows, 1)[0][:, 0].cpu() if bank_p is not None else None
            z = h.logits(rows).cpu() if h is not None and d_p is not None else None
            out.append(HeldOut(d_n, d_p, tau_n, tau_p, label, cells, z))
    return out


def evidence_report(held: list[HeldOut], form: str) -> dict[str, Any]:
    """On how many held-out grid cells the defect evidence g is > 0: on cells a mask marks as defect, and
    on cells of normal images. A tie of every candidate with few firings says why lam fell back to 0."""
    fired = {"defect_cells": 0, "defect_cells_fired": 0, "normal_cells": 0, "normal_cells_fired": 0}
    for h in held:
        if h.d_p is None or (form == "head" and h.head_z is None):
            continue
        g = defect_evidence(h.d_n, h.d_p, h.tau_n, h.tau_p, form, h.head_z).numpy() > 0  # type: ignore[arg-type]
        if h.label == 0:
            fired["normal_cells"] += g.size
            fired["normal_cells_fired"] += int(g.sum())
        elif h.cells is not None:
            fired["defect_cells"] += int(h.cells.sum())
            fired["defect_cells_fired"] += int(g[h.cells].sum())
    return fired


def never_fired_note(criterion: dict[float, float], fired: dict[str, Any], form: str) -> str:
    """A sentence for the log and metrics.json when every candidate lam scored the same, else ''."""
    if len(criterion) < 2 or max(criterion.values()) - min(criterion.values()) > 1e-9:
        return ""
    why = {
        "tau": "no held-out cell was closer to M_P than M_P's own spacing (tau_P)",
        "margin": "no held-out cell was closer to M_P than to M_N",
        "head": "the defect head's logit stayed below the normal rows' median on every held-out cell",
    }[form]
    return (
        f"the defect evidence never changed a rank on held-out training images (every lam scored "
        f"{next(iter(criterion.values())):.6f}): it fired on {fired['defect_cells_fired']} of "
        f"{fired['defect_cells']} defect cells and {fired['normal_cells_fired']} of {fired['normal_cells']} "
        f"normal cells; where it never fires, {why}. lam 0: the score is PatchCore's"
    )


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
        maps = [fused_map(h.d_n, h.d_p, h.tau_n, h.tau_p, lam, fusion["form"], h.head_z) for h in held]
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
    fired = evidence_report(held, fusion["form"])
    return Fit(float(lam), criterion, images, never_fired_note(criterion, fired, fusion["form"]), fired)


def synth_sources(recipes: list[dict[str, Any]]) -> dict[str, set[str]]:
    """Synthetic id -> the training images it came from (its normal image, and its mask's image)."""
    return {
        r["id"]: {r["normal_id"], r["mask_id"]}
        for r in recipes
        if str(r.get("id", "")).startswith(SYNTHETIC_PREFIX)
    }


def fit_final_head(
    normal: Store,
    defect: Store,
    bank_ids: list[str],
    m_n: np.ndarray,
    bank: dict[str, Any],
    seed: int,
    floor_rows: Iterable[np.ndarray] | None = None,
) -> tuple[DefectHead | None, dict[str, int]]:
    """The deployed defect head: every normal image of the bank against every defect row the bank stage
    keeps (purified and pseudo-masked against the full M_N `m_n`, as banks/defect.zarr's candidates),
    floored on `floor_rows` when given (DefectHead.with_floor), and on how many of its own training rows it
    fires (z > 0): a head that fires on few defect rows learned little."""
    bank_n = Bank(m_n)
    spacing = normal_self_nn(bank_n)
    keep = np.flatnonzero(defect_row_filter(defect, bank_n, bank["purify"], bank["pseudo_top"], spacing).keep)
    head = head_from_stores(normal, defect, set(bank_ids), keep, seed)
    if head is not None and floor_rows is not None:
        head = head.with_floor(floor_rows)
    fired = {"defect_rows": len(keep), "defect_rows_fired": 0}
    if head is not None:
        fired["defect_rows_fired"] = int((head.logits(defect.take(keep)) > 0).sum())
    return head, fired
