"""`exdd score` / `exdd info` and the deployment card.

Fast tests build three tiny stores in-process (resnet18, random weights, 64 x 48 images) and check that the
scoring glue gives the library's scores and refuses every mismatch. The slow tests run ONE tiny DVC pipeline
(as tests/test_pipeline_dvc.py) and check, on it, that `exdd score` reproduces evaluate's scores for the
same images, writes overlays of the right size, and that evaluate's plots exist, parse and render."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from exdd_core.data import ImageRecord, save_png
from exdd_core.evaluation import EvalResult
from exdd_core.features import Embedder, Store, make_extractor, write_store
from exdd_core.runtime import InputError, MismatchError
from exdd_core.runtime.choices import RATIO_MODES as MODES
from exdd_core.scoring import ExddModel, ScoringSettings
from exdd_core.scoring.card import Card, build_card, load_card, write_card
from exdd_core.serve.cli import build_parser, main
from exdd_core.serve.inference import open_scorer
from exdd_core.serve.inputs import check_sizes, expand_inputs
from exdd_core.serve.score_loop import overlay_names
from tests.tiny_project import exdd

REPO = Path(__file__).resolve().parents[1]
SIZE = (64, 48)  # (H, W)
SCORING = {
    "mode": "max_ratio",
    "neighbors": 2,
    "eps": 1e-6,
    "sigma": 2.0,
    "map_reweight": True,
    "map_8bit": False,
}


def fake_metrics() -> dict:
    return {
        "exdd": {"mode": "max_ratio", "threshold": 1.0, "image_auroc": 0.5, "pixel_auroc": 0.5},
        "patchcore": {"threshold": 2.0, "image_auroc": 0.5, "pixel_auroc": 0.5},
        "bank_sizes": {"normal": 0, "defect": 0},
        "coverage_radius": {"normal": None, "defect": None},
        "line_verdicts": {"normal": 0, "defect": 0},
        "test_images": {"normal": 2, "defective": 1},
        "calibration": {"images": 1, "target_fpr": 0.01},
    }


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> Path:
    """banks/{normal,defect}.zarr, features/test.zarr, eval/model.json and img/*.png, stores projected to 32
    dims (the paper-text storage, so the projection path of the glue is exercised here)."""
    root = tmp_path_factory.mktemp("mini")
    rng = np.random.default_rng(0)
    records = []
    for i in range(4):
        path = root / "img" / f"im{i}.png"
        save_png(path, (rng.random((*SIZE, 3)) * 255).astype(np.uint8))
        records.append(ImageRecord(f"im{i}", "test", int(i == 3), path))
    backbone = {"name": "resnet18", "weights": "random", "layers": [2, 3]}
    features = {"patch_size": 3, "aggregation": "padded_bilinear", "store_dim": 32, "dtype": "float16"}
    ex = make_extractor(backbone, features, 0, "cpu")
    common = dict(image_size=SIZE, features=features, seed=0, manifests=[])
    emb = Embedder.around(ex, features, 0)
    write_store(records[:2], root / "banks" / "normal.zarr", emb, kind="normal", **common)
    write_store(records[3:], root / "banks" / "defect.zarr", emb, kind="defect", **common)
    write_store(records, root / "features" / "test.zarr", emb, kind="test", **common)
    thresholds = {**{m: 1.0 for m in MODES}, "patchcore": 2.0}
    attrs = Store(root / "features" / "test.zarr").attrs
    result = EvalResult(fake_metrics(), [], np.zeros(0), {}, attrs, (0.0, 2.0), thresholds, thresholds)
    card = build_card(fake_metrics(), result, SCORING, 0, False)
    write_card(root / "eval" / "model.json", card)
    return root


def test_scorer_gives_the_library_scores_of_the_stored_rows(mini: Path) -> None:
    scorer = open_scorer(mini / "banks", mini / "eval" / "model.json")
    assert scorer.model.embedder.projection is not None and scorer.model.grid == (8, 6)
    normal = Store(mini / "banks" / "normal.zarr").read_all()
    defect = Store(mini / "banks" / "defect.zarr").read_all()
    rows_model = ExddModel(normal, defect, ScoringSettings(neighbors=2), scorer.model.image_size, (8, 6))
    for _, image_id, rows, _ in Store(mini / "features" / "test.zarr").iter_images():
        want = rows_model.score(rows)  # the stored rows, scored without any embedder
        got = scorer.score_file(mini / "img" / f"{image_id}.png")
        paper_modes = {m: got.exdd[m] for m in MODES}
        assert paper_modes == pytest.approx({m: want.exdd[m] for m in MODES}, rel=1e-6)
        m, lam = scorer.model, scorer.model.settings.fusion["lam"]
        fused = want.normal_map / m.tau_n + lam * np.clip(1 - want.defect_map / m.tau_p, 0, None)
        assert got.exdd["fused"] == pytest.approx(float(fused.max()), rel=1e-5)
        assert got.patchcore == pytest.approx(want.patchcore, rel=1e-6)
        assert got.exdd_map().shape == SIZE


def test_card_round_trip_and_refusals(mini: Path, tmp_path: Path) -> None:
    card = load_card(mini / "eval" / "model.json")
    assert card.thresholds["patchcore"] == 2.0 and card.backbone["seed"] == 0
    assert card.features["image_size"] == list(SIZE) and card.features["stored_dim"] == 32
    assert card.image_size == SIZE and Card.from_dict(card.to_dict(), "x") == card

    def refused(change, match: str, err=MismatchError) -> None:
        bad = json.loads(json.dumps(card.to_dict()))
        change(bad)
        (tmp_path / "model.json").write_text(json.dumps(bad))
        with pytest.raises(err, match=match):
            open_scorer(mini / "banks", tmp_path / "model.json")

    refused(lambda c: c["features"].update(image_size=[128, 64]), "image_size")
    refused(lambda c: c["backbone"].update(seed=1), "weights_id")  # other random weights than the banks'
    refused(lambda c: c["preprocessing"].update(mean=[0.5, 0.5, 0.5]), "preprocessing")
    refused(lambda c: c.update(format="metrics"), "not an exdd deployment card", InputError)
    # a card of the first format (test-set thresholds) still loads, its thresholds said to be the oracle's
    v1 = {k: v for k, v in card.to_dict().items() if k not in ("oracle_thresholds", "calibration")}
    (tmp_path / "v1.json").write_text(json.dumps({**v1, "format": "exdd-model/1"}))
    old = load_card(tmp_path / "v1.json")
    assert old.oracle_thresholds == card.thresholds and old.calibration["images"] == 0
    refused(lambda c: c.pop("thresholds"), r"lacks \['thresholds'\]", InputError)
    with pytest.raises(InputError, match="deployment card not found"):
        load_card(tmp_path / "nowhere.json")


def test_inputs_and_size_refusal(mini: Path, tmp_path: Path) -> None:
    folder = tmp_path / "line"
    folder.mkdir()
    for name in ("b.png", "a.jpg", "a_GT.png", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs([folder])] == ["a.jpg", "b.png"]
    with pytest.raises(InputError, match="no such file"):
        expand_inputs([tmp_path / "missing.png"])
    other = tmp_path / "big.png"
    save_png(other, np.zeros((70, 40, 3), np.uint8))
    check_sizes([mini / "img" / "im0.png"], SIZE)
    with pytest.raises(InputError, match=r"big.png is 70x40.*64x48.*--resize"):
        check_sizes([mini / "img" / "im0.png", other], SIZE)
    assert overlay_names([Path("x/a.png"), Path("y/a.png"), Path("b.jpg")]) == ["a.png", "a-2.png", "b.png"]


def test_cli_score_and_info_in_process(mini: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    big = tmp_path / "big.png"
    save_png(big, np.full((96, 72, 3), 128, np.uint8))
    with pytest.raises(SystemExit) as e:
        main(["score", str(big), "--banks", str(mini / "banks"), "--out", str(out)])
    assert e.value.code == 1 and not out.exists()
    assert "--resize" in capsys.readouterr().err

    argv = ["score", str(mini / "img"), str(big), "--banks", str(mini / "banks"), "--out", str(out)]
    assert main([*argv, "--resize", "--threshold", "1e9"]) == 0
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [Path(r["image"]).name for r in rows] == ["im0.png", "im1.png", "im2.png", "im3.png", "big.png"]
    assert {r["decision"] for r in rows} == {"normal"} and float(rows[0]["threshold"]) == 1e9
    with Image.open(out / rows[-1]["overlay"]) as im:
        # the file's own width (also when resized for scoring), with the score, threshold, decision above and a
        # colour bar below the image
        assert im.width == 72 and im.height > 96

    capsys.readouterr()
    assert main(["info", str(mini / "banks"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info) == {str(mini / "banks" / "normal.zarr"), str(mini / "banks" / "defect.zarr")}
    assert info[str(mini / "banks" / "normal.zarr")]["image_size"] == list(SIZE)
    assert main(["info", str(mini / "eval" / "model.json")]) == 0
    assert "thresholds" in capsys.readouterr().out
    assert main(["info", str(tmp_path / "nothing")]) == 1


def test_several_workers_write_the_same_rows_in_input_order(mini: Path, tmp_path: Path) -> None:
    """Images scored at once (--workers): the same scores.csv, row for row, as one at a time, and a truncated
    image in the middle still gets its error row in its place."""
    folder = tmp_path / "line"
    folder.mkdir()
    for i, p in enumerate(sorted((mini / "img").glob("*.png")) * 2):
        shutil.copy(p, folder / f"{i:02d}_{p.name}")
    (folder / "03_zz.png").write_bytes((mini / "img" / "im0.png").read_bytes()[:60])
    threads = torch.get_num_threads()
    try:
        outs = []
        for workers in ("1", "3"):
            out = tmp_path / f"w{workers}"
            argv = [
                "score",
                str(folder),
                "--banks",
                str(mini / "banks"),
                "--out",
                str(out),
                "--workers",
                workers,
            ]
            with pytest.raises(SystemExit) as stop:  # the truncated image: exit status 1
                main(argv)
            assert stop.value.code == 1
            outs.append(list(csv.DictReader((out / "scores.csv").open())))
            assert all((out / r["overlay"]).is_file() for r in outs[-1] if r["overlay"])
    finally:
        torch.set_num_threads(threads)
    assert outs[0] == outs[1] and len(outs[0]) == 9
    assert [bool(r["error"]) for r in outs[1]] == [False] * 4 + [True] + [False] * 4  # 03_zz after 03_im3


def test_help_lists_the_verbs_and_the_console_script_points_here(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "score" in text and "info" in text
    # (tomllib is 3.11+, the project supports 3.10)
    assert 'exdd = "exdd_core.serve.cli:run"' in (REPO / "pyproject.toml").read_text()


def test_the_console_script_exits_with_main_s_status_and_flushed_output(mini: Path, tmp_path: Path) -> None:
    """`exdd` (cli.run) skips the interpreter's teardown: the status, stdout, stderr and written files must be
    those of `main` all the same."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "exdd_core.serve.cli", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    bad = cli("nonsense")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    missing = cli("info", str(tmp_path / "nothing"))
    assert missing.returncode == 1 and "nothing" in " ".join(missing.stderr.split())
    info = cli("info", str(mini / "banks"), "--json")
    assert info.returncode == 0 and str(mini / "banks" / "normal.zarr") in json.loads(info.stdout)
    out = tmp_path / "scored"
    done = cli(
        "score", str(mini / "img"), "--banks", str(mini / "banks"), "--out", str(out), "--threshold", "1e9"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == 4 and all((out / r["overlay"]).is_file() for r in rows)


# --------------------------------------------------------------------------------------------------------
# on a tiny pipeline run (slow)


@pytest.fixture(scope="module")
def project(tiny_project) -> tuple[Path, dict[str, str]]:
    """The session's tiny `dvc repro` (tests/tiny_project.py), shared with test_pipeline_dvc.py."""
    root, env, _ = tiny_project
    return root, env


@pytest.mark.slow
def test_score_equals_evaluate_on_test_images(project, tmp_path: Path) -> None:
    root, env = project
    evaluated = {r["image"]: r for r in csv.DictReader((root / "eval" / "scores.csv").open())}
    images = sorted((root / "data" / "prepared" / "test" / "images").glob("*.png"))[:3]
    images.append(root / "data" / "prepared" / "test" / "images" / f"{max(evaluated)}.png")
    p = exdd(["score", *map(str, images), "--banks", "banks", "--out", "scored"], root, env)
    assert p.returncode == 0, p.stderr[-3000:]
    log = " ".join(p.stderr.split())  # rich wraps lines at 80 columns without a terminal
    assert "score done in" in log and "on cpu with tf_efficientnet_lite0" in log  # the one summary line

    card = json.loads((root / "eval" / "model.json").read_text())
    metrics = json.loads((root / "metrics.json").read_text())
    default = metrics["exdd"]["mode"]
    # the card carries the calibrated thresholds (held-out normal training images), the oracle apart
    assert card["thresholds"][default] == pytest.approx(metrics["calibration"]["exdd"]["threshold"], abs=1e-6)
    assert card["thresholds"]["patchcore"] == pytest.approx(
        metrics["calibration"]["patchcore"]["threshold"], abs=1e-6
    )
    assert card["oracle_thresholds"][default] == pytest.approx(metrics["exdd"]["oracle_threshold"], abs=1e-6)
    assert card["calibration"]["images"] == 1 and card["format"] == "exdd-model/2"
    thr = card["thresholds"][card["scoring"]["mode"]]
    rows = list(csv.DictReader((root / "scored" / "scores.csv").open()))
    assert len(rows) == len(images)
    for row in rows:
        ev = evaluated[Path(row["image"]).stem]
        assert float(row["exdd"]) == pytest.approx(float(ev["exdd"]), rel=1e-6)
        assert float(row["patchcore"]) == pytest.approx(float(ev["patchcore"]), rel=1e-6)
        assert row["decision"] == ("defective" if float(row["exdd"]) >= thr else "normal")
        with Image.open(root / "scored" / row["overlay"]) as im:
            assert im.width == 64 and im.height > 128 and im.mode == "RGB"

    # the runner cache (features/runner_cache.py): the first run writes the entry, the second loads the backbone
    # from it (the entry untouched, timm never imported); both score to the same digits as above
    cached_env = {**env, "EXDD_CACHE_DIR": str(tmp_path / "runner-cache"), "PYTHONPROFILEIMPORTTIME": "1"}
    scores, imported, entry_stats = [], [], []
    for out in ("miss", "hit"):
        argv = ["score", *map(str, images), "--banks", "banks", "--out", str(tmp_path / out), "--no-overlays"]
        p = exdd(argv, root, cached_env)
        assert p.returncode == 0, p.stderr[-3000:]
        with (tmp_path / out / "scores.csv").open() as f:
            scores.append([(r["exdd"], r["patchcore"]) for r in csv.DictReader(f)])
        imported.append(
            {line.split("|")[-1].strip() for line in p.stderr.splitlines() if "import time:" in line}
        )
        (entry,) = (tmp_path / "runner-cache" / "runners").iterdir()
        st = (entry / "runner.pt").stat()
        entry_stats.append((st.st_ino, st.st_mtime_ns))
    assert entry_stats[0] == entry_stats[1]  # the hit read the entry and did not rewrite it
    assert "timm" in imported[0] and "timm" not in imported[1] and "torchvision" not in imported[1]
    assert scores[0] == scores[1] == [(r["exdd"], r["patchcore"]) for r in rows]


@pytest.mark.slow
def test_score_refuses_another_size_with_a_clear_message(project, tmp_path: Path) -> None:
    root, env = project
    src = next((root / "data" / "prepared" / "test" / "images").glob("*.png"))
    odd = tmp_path / "from_the_line.png"
    with Image.open(src) as im:
        im.resize((60, 130)).save(odd)
    p = exdd(["score", str(odd), "--banks", "banks", "--out", str(tmp_path / "o")], root, env)
    log = " ".join(p.stderr.split())
    assert p.returncode == 1
    assert "from_the_line.png is 130x60" in log and "128x64" in log and "--resize" in log


@pytest.mark.slow
def test_info_on_banks_and_features(project) -> None:
    root, env = project
    p = exdd(["info", "banks", "--json"], root, env)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout)
    normal = info["banks/normal.zarr"]
    assert (
        normal["rows"] == 20
        and normal["coverage_radius"] > 0
        and normal["backbone"] == "tf_efficientnet_lite0"
    )
    p = exdd(["info", "features/test.zarr"], root, env)
    assert p.returncode == 0 and "image_size" in p.stdout and "128" in p.stdout


@pytest.mark.slow
def test_plots_exist_parse_and_render(project) -> None:
    root, env = project
    plots = root / "eval" / "plots"
    for name in ("roc", "pr", "pixel_roc", "pro"):
        rows = list(csv.DictReader((plots / f"{name}.csv").open()))
        methods = {r["method"] for r in rows}
        assert len(methods) == 2 and any(m.startswith("ExDD (") for m in methods), methods
        assert any("PatchCore (AU" in m or "PatchCore (AP" in m for m in methods), methods  # the figure named
        assert all(np.isfinite(float(v)) for r in rows for k, v in r.items() if k != "method")
    for method in ("exdd", "patchcore"):
        rows = list(csv.DictReader((plots / f"dist_{method}.csv").open()))
        assert sum(float(r["defective"]) for r in rows) == pytest.approx(1.0)
        assert len({r["threshold"] for r in rows}) == 1 and float(rows[0]["threshold"]) > 0
    with Image.open(root / "eval" / "heatmaps.png") as im:
        assert im.width > im.height > 0

    p = subprocess.run(["dvc", "plots", "show", "--json"], cwd=root, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    shown = json.loads(p.stdout)
    assert not shown.get("errors"), shown.get("errors")
    names = set(shown.get("data", shown))
    for title in ("Pixel ROC, ExDD vs PatchCore", "eval/heatmaps.png"):
        assert any(title in n for n in names), names
    p = subprocess.run(
        ["dvc", "plots", "show", "-o", "html"], cwd=root, env=env, capture_output=True, text=True
    )
    assert p.returncode == 0 and (root / "html" / "index.html").is_file(), p.stderr[-3000:]
    page = (root / "html" / "index.html").read_text()
    assert not re.search(r"<script[^>]*src=", page)  # no script from a CDN (or anywhere): all inline
    assert "vegaEmbed" in page and page.count("<script>") >= 3  # Vega, Vega-Lite, Vega-Embed inline


def test_export_scores_like_the_banks_without_dvc(mini: Path, tmp_path: Path) -> None:
    """`exdd export` then `exdd score --model <folder>`, run from outside the project: the same scores as
    scoring with the Zarr banks (1e-5), and not one DVC module imported on the way."""
    out = tmp_path / "exported"
    assert (
        main(
            [
                "export",
                "--banks",
                str(mini / "banks"),
                "--model",
                str(mini / "eval" / "model.json"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {
        "card.json",
        "backbone.safetensors",
        "banks.safetensors",
        "README.md",
    }
    images = [str(mini / "img" / f"im{i}.png") for i in range(4)]
    ref = tmp_path / "ref"
    assert (
        main(
            [
                "score",
                *images,
                "--banks",
                str(mini / "banks"),
                "--model",
                str(mini / "eval" / "model.json"),
                "--out",
                str(ref),
                "--no-overlays",
            ]
        )
        == 0
    )
    script = (
        "import sys; from exdd_core.serve.cli import main; "
        f"rc = main(['score', *{images!r}, '--model', {str(out)!r}, '--out', 'scored', '--no-overlays']); "
        "dvc = sorted(m for m in sys.modules if m == 'dvc' or m.startswith('dvc.')); "
        "print('DVC-MODULES', dvc); sys.exit(rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "DVC-MODULES []" in p.stdout
    got = list(csv.DictReader((tmp_path / "scored" / "scores.csv").open()))
    want = list(csv.DictReader((ref / "scores.csv").open()))
    for g, w in zip(got, want, strict=True):
        assert float(g["exdd"]) == pytest.approx(float(w["exdd"]), rel=1e-5)
        assert float(g["patchcore"]) == pytest.approx(float(w["patchcore"]), rel=1e-5)
        assert g["decision"] == w["decision"]


def test_export_refuses_tampered_files(mini: Path, tmp_path: Path) -> None:
    from exdd_core.serve.export import export_model, open_exported

    out = tmp_path / "exported"
    export_model(mini / "banks", mini / "eval" / "model.json", out)
    with open(out / "banks.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(MismatchError, match="sha256"):
        open_exported(out)


def test_score_on_a_missing_gpu_is_a_clear_error(mini: Path, tmp_path: Path, capsys) -> None:
    """--device cuda where torch sees no GPU: exit 1 and a message that says so, no traceback; a device that
    is not a choice is refused by the parser."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    image = str(mini / "img" / "im0.png")
    with pytest.raises(SystemExit) as stop:
        main(
            ["score", image, "--banks", str(mini / "banks"), "--out", str(tmp_path / "o"), "--device", "cuda"]
        )
    code = stop.value.code
    err = " ".join(capsys.readouterr().err.split())
    assert code == 1 and "--device = 'cuda', but torch sees no CUDA GPU" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["score", image, "--device", "gpu"])


@pytest.mark.slow
def test_one_model_object_scores_an_image_file_as_evaluate_did(project, tmp_path: Path) -> None:
    """ExddModel opened on the pipeline's banks and card, scoring the test image *files* (embedder included),
    gives evaluate's scores.csv in every mode and both PatchCore scores; the exported model gives the same."""
    from exdd_core.data import load_image
    from exdd_core.runtime.choices import SCORE_MODES
    from exdd_core.serve import export_model, open_exported, open_scorer

    root, _ = project
    evaluated = {r["image"]: r for r in csv.DictReader((root / "eval" / "scores.csv").open())}
    keys = (*SCORE_MODES, "patchcore", "patchcore_reweighted")
    export_model(root / "banks", root / "eval" / "model.json", tmp_path / "exported")
    models = {
        "pipeline": open_scorer(root / "banks", root / "eval" / "model.json").model,
        "exported": open_exported(tmp_path / "exported").model,
    }
    images = sorted((root / "data" / "prepared" / "test" / "images").glob("*.png"))
    assert len(images) == len(evaluated)
    for path in images:
        want = evaluated[path.stem]
        for name, model in models.items():
            got = model.score_image(load_image(path, model.image_size))
            for k in keys:
                assert got.scores[k] == pytest.approx(float(want[k]), rel=1e-6), (name, path.name, k)
