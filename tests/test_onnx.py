"""The ONNX export (serve.onnx_export) and its torch-free scorer (serve.onnx_model): the same scores as the
torch model within 1e-4 relative, checked at export; nothing of torch or timm imported when scoring."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from exdd_core.data import ImageRecord, save_png
from exdd_core.evaluation import EvalResult
from exdd_core.features import Embedder, Store, make_extractor, write_store
from exdd_core.runtime import InputError, MismatchError
from exdd_core.scoring.card import build_card, write_card
from exdd_core.scoring.defect_head import fit_head
from exdd_core.serve.inference import open_scorer
from exdd_core.serve.onnx_export import check_parity, export_onnx
from exdd_core.serve.onnx_model import OnnxScorer, nearest
from tests.test_cli import SCORING, SIZE, fake_metrics

pytest.importorskip("onnxruntime")


def project(root: Path, fusion: dict) -> list[Path]:
    """banks, a card scoring `fusion` (the head fit on the banks' rows when form is head), 5 images."""
    rng = np.random.default_rng(1)
    records = []
    for i in range(5):
        path = root / "img" / f"im{i}.png"
        save_png(path, (rng.random((*SIZE, 3)) * 255).astype(np.uint8))
        records.append(ImageRecord(f"im{i}", "test", int(i >= 3), path))
    backbone = {"name": "resnet18", "weights": "random", "layers": [2, 3]}
    features = {"patch_size": 3, "aggregation": "padded_bilinear", "store_dim": 32, "dtype": "float16"}
    emb = Embedder.around(make_extractor(backbone, features, 0, "cpu"), features, 0)
    common = dict(image_size=SIZE, features=features, seed=0, manifests=[])
    write_store(records[:2], root / "banks" / "normal.zarr", emb, kind="normal", **common)
    write_store(records[3:4], root / "banks" / "defect.zarr", emb, kind="defect", **common)
    write_store(records, root / "features" / "test.zarr", emb, kind="test", **common)
    if fusion["form"] == "head":
        normal, defect = (Store(root / "banks" / f"{k}.zarr").read_all() for k in ("normal", "defect"))
        fusion = {**fusion, "head": fit_head(normal, defect, 0).with_floor([normal[:50]]).to_dict()}
    scoring = {**SCORING, "mode": "fused", "fusion": {"lam": 1.0, "topk": 2, **fusion}}
    thresholds = {"fused": 1.5, "patchcore": 2.0}
    attrs = Store(root / "features" / "test.zarr").attrs
    result = EvalResult(fake_metrics(), [], np.zeros(0), {}, attrs, (0.0, 2.0), thresholds, thresholds)
    write_card(root / "eval" / "model.json", build_card(fake_metrics(), result, scoring, 0, False))
    return [r.image_path for r in records]


def test_nearest_is_the_exact_nearest_distance():
    rng = np.random.default_rng(0)
    rows, bank = rng.normal(size=(300, 7)).astype(np.float32), rng.normal(size=(5000, 7)).astype(np.float32)
    want = np.sqrt(((rows[:, None].astype(np.float64) - bank[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest(rows, bank), want, rtol=1e-12)  # 5000 rows: two ranking blocks


@pytest.mark.parametrize("form", ["head", "tau"])
def test_onnx_scores_as_torch_and_imports_neither_torch_nor_timm(tmp_path: Path, form: str) -> None:
    images = project(tmp_path, {"form": form})
    card, out = tmp_path / "eval" / "model.json", tmp_path / "onnx"
    export = export_onnx(tmp_path / "banks", card, out, [images[2], images[4]])  # images no bank holds
    assert export["parity"]["max_relative_difference"] <= 1e-4 and export["parity"]["images"] == 2
    assert "relative" in (out / "README.md").read_text()
    script = (
        "import sys; from exdd_core.serve.cli import main; "
        f"rc = main(['score', *{[str(p) for p in images]!r}, '--model', {str(out)!r}, '--out', 'scored']); "
        "print('LOADED', [m for m in ('torch', 'timm', 'zarr') if m in sys.modules]); sys.exit(rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "LOADED []" in p.stdout
    torch_scorer = open_scorer(tmp_path / "banks", card)
    rows = list(csv.DictReader((tmp_path / "scored" / "scores.csv").open()))
    assert len(rows) == len(images) and all((tmp_path / "scored" / r["overlay"]).is_file() for r in rows)
    tau_n = torch_scorer.model.tau_n
    # An image a bank holds scores 0 through torch. Through onnxruntime its rows differ by ~1e-6 before their
    # float16 rounding, so a few coordinates round to the neighbouring float16: a distance of a few float16
    # steps of the largest coordinate (measured 1.8e-4 with the folded backbone; one step is 8e-4 here)
    step = float(np.finfo(np.float16).eps) * float(
        np.abs(Store(tmp_path / "banks" / "normal.zarr").read_all()).max()
    )
    for path, row in zip(images, rows, strict=True):
        want = torch_scorer.score_file(path)
        assert float(row["exdd"]) == pytest.approx(want.scores["fused"], rel=1e-4, abs=4 * step / tau_n)
        assert float(row["patchcore"]) == pytest.approx(want.patchcore, rel=1e-4, abs=4 * step)
        assert row["threshold"] == repr(1.5)
    for i in (2, 4):  # images no bank holds: within 1e-4 relative, as checked at export
        want = torch_scorer.score_file(images[i])
        assert float(rows[i]["exdd"]) == pytest.approx(want.scores["fused"], rel=1e-4)
        assert float(rows[i]["patchcore"]) == pytest.approx(want.patchcore, rel=1e-4)


def test_an_export_that_would_score_differently_is_refused(tmp_path: Path) -> None:
    images = project(tmp_path, {"form": "tau"})
    card, out = tmp_path / "eval" / "model.json", tmp_path / "onnx"
    export_onnx(tmp_path / "banks", card, out, [images[2]])
    from exdd_core.serve.export import open_exported

    with pytest.raises(InputError, match="onnx export"):  # the torch opener refuses an ONNX folder
        open_exported(out)
    doc = json.loads((out / "card.json").read_text())
    doc["export"]["tau_n"] *= 1.001  # the scores shift by ~1e-3 relative: beyond the tolerance
    (out / "card.json").write_text(json.dumps(doc))
    with pytest.raises(MismatchError, match="relative"):
        check_parity(open_scorer(tmp_path / "banks", card), OnnxScorer(out), [np.asarray(_img(images[4]))])
    with open(out / "normal.npy", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(MismatchError, match="sha256"):
        OnnxScorer(out)
    doc = json.loads(card.read_text())
    doc["scoring"]["mode"] = "paper"
    card.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="fused mode"):
        export_onnx(tmp_path / "banks", card, tmp_path / "onnx2", images[2:3])
    assert not (tmp_path / "onnx2").exists()


def _img(path: Path) -> np.ndarray:
    from exdd_core.data.imageio import load_image

    return load_image(path, SIZE)


def test_run_time_overrides_reach_both_paths(tmp_path: Path) -> None:
    """--lam 0 makes the fused score PatchCore's map in tau_N units, through torch and through onnxruntime."""
    from exdd_core.serve.cli import main

    images = project(tmp_path, {"form": "head"})
    card, out = tmp_path / "eval" / "model.json", tmp_path / "onnx"
    export_onnx(tmp_path / "banks", card, out, [images[2]])
    torch_scorer = open_scorer(tmp_path / "banks", card, fusion={"lam": 0.0, "topk": 1})
    want = torch_scorer.score_file(images[4])
    assert want.scores["fused"] == pytest.approx(want.patchcore / torch_scorer.model.tau_n, rel=1e-6)
    got = OnnxScorer(out, {"lam": 0.0, "topk": 1}).score_file(images[4])
    assert got.scores["fused"] == pytest.approx(want.scores["fused"], rel=1e-4)
    args = ["score", str(images[4]), "--model", str(out), "--out", str(tmp_path / "s"), "--no-overlays"]
    assert main([*args, "--lam", "0", "--topk", "1", "--threshold", "1"]) == 0
    row = next(csv.DictReader((tmp_path / "s" / "scores.csv").open()))
    assert float(row["exdd"]) == pytest.approx(want.scores["fused"], rel=1e-4)
    for bad in (["--lam", "-1"], ["--mode", "paper"]):  # refused with a message, exit status 1
        with pytest.raises(SystemExit) as e:
            main([*args, *bad])
        assert e.value.code == 1
