"""The fit_fusion step: the fused score's weight lam (fixed, or cross-fitted on training images only,
`scoring.crossfit`) and, for the `head` form, the deployed defect head fit on every training image.

Reads the feature stores, the normal bank, the known defective images and the synthetic recipes (`FusionInputs`);
knows nothing of DVC. The stage `fit_fusion` writes the returned `Fit` to paths.fusion/fusion.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from exdd_core.banks.holdout import calibration_images
from exdd_core.data.imageio import load_image, load_mask
from exdd_core.data.records import read_manifest
from exdd_core.features.embedder import Embedder
from exdd_core.features.patches import mask_coverage
from exdd_core.features.store import Store
from exdd_core.features.store_union import StoreUnion, open_stores
from exdd_core.scoring.crossfit import Fit, fit_final_head, fit_lambda, held_out_scores, synth_sources


@dataclass(frozen=True)
class FusionInputs:
    """Where the step reads from (the stage passes the pipeline's paths)."""

    normal_features: tuple[Path, ...]  # the normal store, then the normals confirmed on the line
    defect_features: tuple[Path, ...]  # the defect store, then the defects confirmed on the line
    normal_bank: Path
    known_defects: tuple[Path, ...]  # manifests of the known defective images (training, then the line's)
    recipes: Path  # the synthetic samples' recipes.json


def fit_fusion(
    p: dict, inputs: FusionInputs, device: str, progress: Callable = lambda it, desc, total: it
) -> Fit:
    """lam (fixed, or cross-fitted) and the defect head, from the run's params `p`."""
    fusion = p["scoring"]["fusion"]
    if fusion["lam"] != "cv":
        fit = Fit(float(fusion["lam"]), {}, {}, "fixed by scoring.fusion.lam")
    elif p["bank"]["defect_patches"] == "bbox_crop":
        fit = Fit(
            0.0, {}, {}, "bank.defect_patches bbox_crop keeps no full-image rows to cross-fit on: lam 0"
        )
    else:
        fit = _cross_fit(p, inputs, device, progress)
    _final_head(p, inputs, fit)
    return fit


def _cross_fit(p: dict, inputs: FusionInputs, device: str, progress: Callable) -> Fit:
    """lam cross-fitted on folds of the training images (banks and head rebuilt without each fold)."""
    fusion = p["scoring"]["fusion"]
    normal, defect = open_stores(inputs.normal_features), open_stores(inputs.defect_features)
    held = _calibration_images(p, normal)
    recipes = json.loads(inputs.recipes.read_text()) if inputs.recipes.is_file() else []
    defects = _known_defects(p, inputs.known_defects, tuple(normal.attrs["grid"]), device, progress)
    bank_ids = [i for i in normal.images if i not in held]
    folds = min(fusion["folds"], len(bank_ids), len(defects))
    if folds < 2:  # nothing to hold out on both sides: no evidence for lam > 0
        why = "no known defective training images" if not defects else "too few training images"
        images = {"normal": len(bank_ids), "defective": len(defects)}
        return Fit(0.0, {}, images, f"{why} to cross-fit on: lam 0")
    scored = held_out_scores(
        normal, defect, bank_ids, synth_sources(recipes), defects, p["bank"], folds, p["seed"], device,
        head=fusion["form"] == "head", floor_rows=_floor_rows(p, normal, held),
    )  # fmt: skip
    return fit_lambda(scored, fusion)


def _calibration_images(p: dict, normal: Store | StoreUnion) -> set[str]:
    return calibration_images(normal, p["eval"]["calibration_fraction"], p["seed"])


class HeldRows:
    """The rows of a store's `held` images, one image per block, read again on every pass: the head is
    floored over them once per cross-fit fold and once more for the deployed head, in bounded memory."""

    def __init__(self, store: Store | StoreUnion, held: set[str]) -> None:
        self.store, o = store, store.offsets
        self.spans = [(int(o[i]), int(o[i + 1])) for i, image in enumerate(store.images) if image in held]

    def __iter__(self) -> Iterator[np.ndarray]:
        return (self.store.read_rows(a, b) for a, b in self.spans)


def _floor_rows(p: dict, normal: Store | StoreUnion, held: set[str]) -> HeldRows | None:
    """The rows the head is floored on (scoring.fusion.head_floor calibration_max): every patch of the
    held-out calibration normals, which no bank holds; None for `none` (or none held)."""
    if p["scoring"]["fusion"]["head_floor"] != "calibration_max" or not held:
        return None
    return HeldRows(normal, held)


def _known_defects(
    p: dict, manifests: tuple[Path, ...], grid: tuple[int, int], device: str, progress: Callable
) -> dict:
    """Known defective training image id -> (its full patch rows as the stores hold them, the grid cells its
    mask marks as defect, or None without a mask)."""
    records = [r for m in manifests for r in read_manifest(m)]
    if not records:
        return {}
    embedder = Embedder.from_params(p["backbone"], p["features"], p["seed"], device)
    size = tuple(p["data"]["image_size"])
    cover = p["scoring"]["fusion"]["cell_coverage"]
    out = {}
    for r in progress(records, "fit_fusion: known defects", len(records)):
        rows = embedder.rows(load_image(r.image_path, size))
        cells = None
        if r.mask_path is not None:
            cov = mask_coverage(torch.as_tensor(load_mask(r.mask_path, size)), grid)
            cells = (cov.reshape(-1) >= cover).numpy()
        out[r.id] = (rows, cells)
    return out


def _final_head(p: dict, inputs: FusionInputs, fit: Fit) -> None:
    """Fit the deployed defect head (form `head`, lam > 0) on every training image of the banks."""
    if p["scoring"]["fusion"]["form"] != "head" or fit.lam == 0:
        return
    if p["bank"]["defect_patches"] == "bbox_crop":  # no full-image defect rows to fit a head on
        fit.lam = 0.0
        fit.note = (
            fit.note + "; " if fit.note else ""
        ) + "bank.defect_patches bbox_crop: no head to fit, lam 0"
        return
    normal, defect = open_stores(inputs.normal_features), open_stores(inputs.defect_features)
    held = _calibration_images(p, normal)
    bank_ids = [i for i in normal.images if i not in held]
    m_n = Store(inputs.normal_bank).read_all()
    floor = _floor_rows(p, normal, held)
    fit.head, fired = fit_final_head(normal, defect, bank_ids, m_n, p["bank"], p["seed"], floor)
    fit.evidence = {**fit.evidence, "head_training": fired}
    if fit.head is not None and fired["defect_rows_fired"] < 0.5 * fired["defect_rows"]:
        weak = (
            f"the defect head fires (z > 0) on only {fired['defect_rows_fired']} of its {fired['defect_rows']} "
            f"own defect rows: these known defects look normal to the features; consider "
            f"scoring.fusion.lam: cv, which falls back to PatchCore when they do not help"
        )
        fit.note = (fit.note + "; " if fit.note else "") + weak
    if fit.head is None:
        fit.lam = 0.0
        fit.note = (fit.note + "; " if fit.note else "") + "no defect rows to fit the head on: lam 0"
