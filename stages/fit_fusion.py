"""Stage fit_fusion: the fusion weight lam of the fused score, cross-fitted on training images only
(scoring.crossfit), and for the `head` form the defect head fit on every training image -> fusion/fusion.json.
With scoring.fusion.lam a number, that number, unfitted (the head is still fit)."""

import json
from pathlib import Path

import torch

from exdd_core.banks.holdout import calibration_ids
from exdd_core.data.imageio import load_image, load_mask
from exdd_core.data.records import read_manifest
from exdd_core.features.embedder import Embedder
from exdd_core.features.patches import mask_coverage
from exdd_core.features.store import Store
from exdd_core.runtime.atomic import write_text_atomic
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.params import load_params
from exdd_core.runtime.runlog import log, run_stage, track
from exdd_core.scoring.crossfit import Fit, fit_final_head, fit_lambda, held_out_scores, synth_sources

OUT = Path("fusion/fusion.json")


def known_defects(p: dict, grid: tuple[int, int], device: str) -> dict:
    """Known defective training image id -> (its full patch rows as the stores hold them, the grid cells its
    mask marks as defect, or None without a mask)."""
    records = read_manifest(Path("data/prepared/train_defective/manifest.csv"))
    if not records:
        return {}
    embedder = Embedder.from_params(p["backbone"], p["features"], p["seed"], device)
    size = tuple(p["data"]["image_size"])
    cover = p["scoring"]["fusion"]["cell_coverage"]
    out = {}
    for r in track(records, "fit_fusion: known defects", len(records)):
        rows = embedder.rows(load_image(r.image_path, size))
        cells = None
        if r.mask_path is not None:
            cov = mask_coverage(torch.as_tensor(load_mask(r.mask_path, size)), grid)
            cells = (cov.reshape(-1) >= cover).numpy()
        out[r.id] = (rows, cells)
    return out


def final_head(p: dict, fit: Fit) -> None:
    """Fit the deployed defect head (form `head`, lam > 0) on every training image of the banks."""
    if p["scoring"]["fusion"]["form"] != "head" or fit.lam == 0 or p["bank"]["defect_patches"] == "bbox_crop":
        return
    normal, defect = Store(Path("features/normal.zarr")), Store(Path("features/defect.zarr"))
    held = calibration_ids(normal.images, p["eval"]["calibration_fraction"], p["seed"])
    bank_ids = [i for i in normal.images if i not in held]
    m_n = Store(Path("banks/normal.zarr")).read_all()
    fit.head, fired = fit_final_head(normal, defect, bank_ids, m_n, p["bank"], p["seed"])
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


def main() -> str:
    p = load_params()
    fusion = p["scoring"]["fusion"]
    if fusion["lam"] != "cv":
        fit = Fit(float(fusion["lam"]), {}, {}, "fixed by scoring.fusion.lam")
    elif p["bank"]["defect_patches"] == "bbox_crop":
        fit = Fit(
            0.0, {}, {}, "bank.defect_patches bbox_crop keeps no full-image rows to cross-fit on: lam 0"
        )
    else:
        device = resolve_device(p["bank"]["device"], "bank.device")
        normal = Store(Path("features/normal.zarr"))
        defect = Store(Path("features/defect.zarr"))
        held = calibration_ids(normal.images, p["eval"]["calibration_fraction"], p["seed"])
        recipes_path = Path("data/synthetic/recipes.json")
        recipes = json.loads(recipes_path.read_text()) if recipes_path.is_file() else []
        defects = known_defects(p, tuple(normal.attrs["grid"]), device)
        bank_ids = [i for i in normal.images if i not in held]
        folds = min(fusion["folds"], len(bank_ids), len(defects))
        if folds < 2:  # nothing to hold out on both sides: no evidence for lam > 0
            why = "no known defective training images" if not defects else "too few training images"
            fit = Fit(
                0.0, {}, {"normal": len(bank_ids), "defective": len(defects)}, f"{why} to cross-fit on: lam 0"
            )
        else:
            scored = held_out_scores(
                normal, defect, bank_ids, synth_sources(recipes), defects, p["bank"], folds, p["seed"], device,
                head=fusion["form"] == "head",
            )  # fmt: skip
            fit = fit_lambda(scored, fusion)
    final_head(p, fit)
    if fit.note:  # a cross-fit whose candidates all tied is worth a warning: the defect bank never helped
        (log.warning if fit.criterion else log.info)(fit.note)
    write_text_atomic(OUT, json.dumps(fit.as_dict(), indent=2) + "\n")
    tried = ", ".join(f"{k}: {v:.4f}" for k, v in fit.criterion.items()) or "none"
    return f"lam {fit.lam} ({fusion['form']}, top-{fusion['topk']}); cross-fitted criterion {tried} -> {OUT}"


if __name__ == "__main__":
    run_stage("fit_fusion", main)
