"""Cross-fitting the fusion weight (scoring.crossfit): the criterion against a plain numpy/sklearn reference,
and banks rebuilt without each fold (no held-out row is ever in the bank it is scored against)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from exdd_core.features import Store, StoreWriter
from exdd_core.scoring.crossfit import HeldOut, fit_lambda, held_out_scores, synth_sources

FUSION = {"form": "tau", "topk": 1, "candidates": [0.0, 0.5, 1.0, 2.0], "tolerance": 0.0}


def held(seed: int) -> list[HeldOut]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(16):
        label = int(k >= 10)
        d_n = torch.as_tensor(rng.gamma(2.0, 0.5, 12).astype(np.float32))
        d_p = torch.as_tensor(rng.gamma(2.0, 0.5, 12).astype(np.float32))
        cells = None
        if label:
            cells = np.zeros(12, bool)
            cells[:3] = True
            d_p[:3] *= 0.2  # defect cells close to the defect bank: evidence that lam > 0 can use
        out.append(HeldOut(d_n, d_p, 1.1, 0.9, label, cells if k != 15 else None))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_criterion_and_choice_match_a_plain_reference(seed: int) -> None:
    h = held(seed)
    fit = fit_lambda(h, FUSION)
    for lam in FUSION["candidates"]:
        maps = [(x.d_n.numpy() / x.tau_n + lam * np.maximum(0, 1 - x.d_p.numpy() / x.tau_p)) for x in h]
        image = roc_auc_score([x.label for x in h], [m.max() for m in maps])
        keep = [(m, x) for m, x in zip(maps, h, strict=True) if not (x.label and x.cells is None)]
        y = np.concatenate([x.cells if x.label else np.zeros(12, bool) for _, x in keep])
        cell = roc_auc_score(y, np.concatenate([m for m, _ in keep]))
        assert fit.criterion[lam] == pytest.approx(0.5 * (image + cell), rel=1e-6)
    best = max(fit.criterion.values())
    assert fit.lam == min(lam for lam, v in fit.criterion.items() if v >= best)
    assert fit.images == {"normal": 10, "defective": 6}


def test_no_known_defects_gives_patchcore() -> None:
    h = [x for x in held(0) if x.label == 0]
    fit = fit_lambda(h, FUSION)
    assert fit.lam == 0.0 and "no known defective" in fit.note


def test_synth_sources_from_recipes() -> None:
    recipes = [
        {"id": "syn_00000", "normal_id": "n1", "mask_id": "d2"},
        {"id": "other", "normal_id": "x", "mask_id": "y"},
    ]
    assert synth_sources(recipes) == {"syn_00000": {"n1", "d2"}}


def _store(path, images: dict[str, np.ndarray]) -> Store:
    with StoreWriter(path, 6, "float32", {"unmasked_images": []}) as w:
        for name, rows in images.items():
            w.add(name, rows)
    return Store(path)


def test_held_out_rows_never_in_their_fold_banks(tmp_path) -> None:
    rng = np.random.default_rng(3)
    normal = _store(
        tmp_path / "n.zarr", {f"n{k}": rng.normal(size=(5, 6)).astype(np.float32) for k in range(8)}
    )
    defect = _store(
        tmp_path / "d.zarr",
        {
            "d0": rng.normal(3, 1, (4, 6)).astype(np.float32),
            "syn_00000": rng.normal(3, 1, (4, 6)).astype(np.float32),
        },
    )
    full = {
        "d0": (rng.normal(size=(5, 6)).astype(np.float32), None),
        "d1": (rng.normal(size=(5, 6)).astype(np.float32), None),
    }
    bank = {
        "normal_ratio": 1.0,
        "defect_ratio": 1.0,
        "min_size": 1000,
        "projection_dim": 4,
        "coreset_method": "plain",
        "purify": None,
        "pseudo_top": 0.5,
    }
    scored = held_out_scores(normal, defect, normal.images, {"syn_00000": {"n0", "d1"}}, full, bank, 2, 0)
    assert sorted(x.label for x in scored) == [0] * 8 + [1] * 2
    # every row of the whole normal store is in some fold bank (ratio 1, min_size 1000): a held-out normal
    # image at distance 0 from its fold's M_N would mean its own rows leaked into that bank
    assert all(float(x.d_n.min()) > 1e-4 for x in scored if x.label == 0)


def test_a_tie_says_the_evidence_never_fired() -> None:
    """Defect bank far from every held-out cell: every lam scores the same, and the note says why."""
    h = held(0)
    for x in h:
        x.d_p = x.d_p + 100.0  # type: ignore[operator]
    fit = fit_lambda(h, FUSION)
    assert fit.lam == 0.0 and len(set(fit.criterion.values())) == 1
    assert fit.evidence["defect_cells_fired"] == 0 and fit.evidence["normal_cells_fired"] == 0
    assert fit.evidence["defect_cells"] == 5 * 3 and fit.evidence["normal_cells"] == 10 * 12
    assert "never changed a rank" in fit.note and "tau_P" in fit.note


def test_head_form_uses_each_images_fold_logits() -> None:
    """Form `head`: the criterion is computed from each held-out image's own head logits."""
    h = held(1)
    rng = np.random.default_rng(9)
    for x in h:
        z = rng.normal(-1.0, 0.5, 12).astype(np.float32)
        if x.label:
            z[:3] += 4.0  # the head sees the defect cells
        x.head_z = torch.as_tensor(z)
    fit = fit_lambda(h, {**FUSION, "form": "head"})
    for lam in FUSION["candidates"]:
        maps = [x.d_n.numpy() / x.tau_n + lam * np.maximum(0, x.head_z.numpy()) for x in h]  # type: ignore[union-attr]
        image = roc_auc_score([x.label for x in h], [m.max() for m in maps])
        keep = [(m, x) for m, x in zip(maps, h, strict=True) if not (x.label and x.cells is None)]
        y = np.concatenate([x.cells if x.label else np.zeros(12, bool) for _, x in keep])
        cell = roc_auc_score(y, np.concatenate([m for m, _ in keep]))
        assert fit.criterion[lam] == pytest.approx(0.5 * (image + cell), rel=1e-6)
    assert fit.lam > 0 and fit.note == ""
    fired = fit.evidence
    assert fired["defect_cells_fired"] == 15 and fired["normal_cells_fired"] < fired["normal_cells"] * 0.05
