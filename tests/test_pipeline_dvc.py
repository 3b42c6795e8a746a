"""End-to-end DVC tests on a tiny profile: the pipeline runs, only affected stages rerun, and a remote shares
every artifact so a fresh clone reruns nothing. Slow (minutes): marked `slow`, run in CI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from exdd_core.runtime.runlog import FALLBACK_NOTE
from tests.dag_deps import undeclared_params
from tests.tiny_project import ALL_STAGES, ran_stages, reads_dir, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tiny_project) -> tuple[Path, dict[str, str]]:
    root, env, first_repro = tiny_project
    assert ran_stages(first_repro) == ALL_STAGES
    return root, env


# Params a stage may read without declaring them, because they change no output.
NO_OUTPUT_EFFECT = {"synth.cache_dir"}  # where generated samples are cached


def test_every_stage_declares_the_params_it_read(project):
    root, _ = project
    reads = {p.stem: json.loads(p.read_text()) for p in reads_dir(root).glob("*.json")}
    reads = {k: v for k, v in reads.items() if k in ALL_STAGES}  # (`exdd score` records its reads too)
    assert set(reads) == ALL_STAGES
    assert reads["evaluate"] and "scoring.mode" in reads["evaluate"]
    dvc = yaml.safe_load((root / "dvc.yaml").read_text())
    assert undeclared_params(dvc, reads, NO_OUTPUT_EFFECT) == {}


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        (
            "exdd_core/features/patches.py",
            ALL_STAGES - {"prepare", "synthesize"},  # features, banks, fit_fusion, evaluate
        ),
        ("exdd_core/evaluation/report.py", {"evaluate"}),
    ],
)
def test_editing_code_reruns_what_runs_it(project, edited, expected):
    root, env = project
    path = root / edited
    try:
        path.write_text(path.read_text() + "\n# an edit\n")
        assert "/".join(edited.split("/")[:2]) in run(["dvc", "status"], root, env)  # the package folder
        out = run(["dvc", "repro"], root, env)
        assert ran_stages(out) == expected, out[-3000:]
    finally:
        run(["git", "checkout", "--", "."], root, env)
        run(["dvc", "checkout", "--force"], root, env)
    assert "up to date" in run(["dvc", "status"], root, env)


def test_replacing_a_raw_image_reruns_prepare_and_what_follows(project, tmp_path):
    """data.root is a dependency of prepare: a KSDD2 folder outside the repo (a DVC external dependency)."""
    import numpy as np

    from exdd_core.data.imageio import load_image, save_png
    from exdd_core.data.sources.demo import generate_demo

    root, env = project
    raw = tmp_path / "ksdd2"
    for r in generate_demo(raw, seed=3, train_normal=6, train_defective=3, test_normal=4, test_defective=4):
        if r.mask_path is None:  # KSDD2 has a (blank) mask beside every image
            save_png(
                r.image_path.with_name(f"{r.id}_GT.png"), np.zeros(load_image(r.image_path).shape[:2], bool)
            )
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"].update(source="ksdd2", root=str(raw))
    try:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        verdicts = {"features_feedback"}  # the line's images: unchanged
        assert ran_stages(run(["dvc", "repro"], root, env)) == ALL_STAGES - verdicts
        assert "up to date" in run(["dvc", "status"], root, env)
        image = raw / "train" / "train_normal_0002.png"
        pixels = load_image(image)
        save_png(image, 255 - pixels)  # the same file name, other content
        status = run(["dvc", "status"], root, env)
        assert "prepare:" in status and str(raw) in status, status
        out = run(["dvc", "repro"], root, env)
        assert {"prepare", "synthesize", "features_normal", "bank_normal", "evaluate"} <= ran_stages(out), out
    finally:
        run(["git", "checkout", "--", "."], root, env)
        run(["dvc", "checkout", "--force"], root, env)


def test_repro_outputs(project):
    root, _ = project
    m = json.loads((root / "metrics.json").read_text())
    assert set(m["modes"]) == {"fused", "paper", "same_patch", "max_ratio"} and m["exdd"]["mode"] == "fused"
    assert m["fusion"]["lam"] == 1.0 and m["fusion"]["head_dim"] == 152  # the default: the defect head, lam 1
    card = json.loads((root / "eval" / "model.json").read_text())
    assert len(card["scoring"]["fusion"]["head"]["weight"]) == 152 and "head" not in m["fusion"]
    for block in (m["exdd"], m["patchcore"]):
        assert 0.0 <= block["image_auroc"] <= 1.0 and 0.0 <= block["pixel_auroc"] <= 1.0
    assert m["comparable_to_paper"] is False
    assert m["profile"]["weights"] == "imagenet" and m["profile"]["synth_count"] == 2
    assert m["bank_sizes"]["normal"] == 20
    assert (root / "eval" / "heatmaps.png").stat().st_size > 0
    lines = (root / "eval" / "scores.csv").read_text().splitlines()
    assert len(lines) == 1 + 8


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("synth.count=3", {"synthesize", "features_defect", "bank_defect", "fit_fusion", "evaluate"}),
        ("scoring.neighbors=2", {"evaluate"}),
        ("bank.normal_ratio=0.05", {"bank_normal", "bank_defect", "fit_fusion", "evaluate"}),
    ],
)
def test_exp_run_reruns_only_affected_stages(project, change, expected):
    root, env = project
    try:
        out = run(["dvc", "exp", "run", "-S", change], root, env)
        assert ran_stages(out) == expected, out[-3000:]
    finally:
        run(["git", "checkout", "--", "."], root, env)
        run(["dvc", "checkout", "--force"], root, env)


def test_remote_push_clone_pull_reruns_nothing(project, tmp_path):
    root, env = project
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "shared", str(remote)], root, env)
    run(["git", "add", "-A"], root, env)
    run(["git", "commit", "-qm", "add remote"], root, env)
    run(["dvc", "push", "--run-cache"], root, env)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], tmp_path, env)
    clone_env = {**env, "PYTHONPATH": str(clone)}
    run(["dvc", "pull"], clone, clone_env)
    assert (clone / "banks" / "normal.zarr" / "zarr.json").is_file()
    out = run(["dvc", "repro"], clone, clone_env)
    assert ran_stages(out) == set(), out[-3000:]
    assert "didn't change" in out or "up to date" in out.lower()


def test_sigkill_mid_write_leaves_no_partial_output(project):
    """Kill a stage (and DVC) while the store is being written: nothing half-written is left where DVC
    caches, and the next `dvc repro` completes with the metrics of an uninterrupted run."""
    import signal
    import time

    root, env = project
    before = json.loads((root / "metrics.json").read_text())
    partial: list[Path] = []
    for _attempt in range(3):  # the write window is short: under odd scheduling the stage may finish first
        proc = subprocess.Popen(
            ["dvc", "repro", "-f", "-s", "features_normal"],
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            partial = list((root / "features").glob(".normal.zarr.partial-*"))
            if partial:
                break
            time.sleep(0.002)
        if partial:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            break
        proc.wait(timeout=300)
    assert partial, "the stage finished before it could be interrupted, three times"
    store = root / "features" / "normal.zarr"
    assert not store.exists() or (store / "zarr.json").is_file()
    run(["dvc", "repro"], root, env)  # reruns or restores from the run-cache whatever the kill removed
    assert "up to date" in run(["dvc", "status"], root, env)
    assert json.loads((root / "metrics.json").read_text()) == before
    # any stage that starts (here evaluate, not the killed one) removes the leftovers of dead writers
    out = run(["dvc", "repro", "-f", "-s", "evaluate"], root, env)
    assert ran_stages(out) == {"evaluate"}
    assert not list((root / "features").glob(".normal.zarr.partial-*"))
    assert json.loads((root / "metrics.json").read_text()) == before


def test_queued_sweep_runs_and_shows_table2(project):
    """`dvc exp run --queue -S synth.count=0,3` + `dvc queue start` runs both; `dvc exp show` has their metrics."""
    import time

    root, env = project
    run(["dvc", "exp", "run", "--queue", "-S", "synth.count=0,3"], root, env)
    run(["dvc", "queue", "start"], root, env)
    deadline = time.time() + 600
    while time.time() < deadline:
        status = run(["dvc", "queue", "status"], root, env)
        if "Queued" not in status and "Running" not in status:
            break
        time.sleep(2)
    assert "Failed" not in status, status
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root, env))
    counts = {}
    for baseline in shown:
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs", []):
                data = rev.get("data") or {}
                params = data.get("params", {}).get("params.yaml", {}).get("data", {})
                metrics = data.get("metrics", {}).get("metrics.json", {}).get("data", {})
                if "exdd" in metrics:
                    counts[params["synth"]["count"]] = metrics["exdd"]["image_auroc"]
    assert {0, 3} <= set(counts), shown


def test_mvtec_without_defects_falls_back_to_patchcore_loudly(tmp_path):
    """MVTec AD has no defective training images: with synth.count 0 the defect bank is empty, and every
    ExDD score falls back to PatchCore (design.md, "Empty defect bank") - said in the log and in metrics.json."""
    from tests.test_robustness import _mvtec
    from tests.tiny_project import build_tiny_project

    _mvtec(tmp_path / "mvtec")
    root = tmp_path / "project"
    root.mkdir()
    _, out = build_tiny_project(
        root, {"data": {"source": "mvtec", "root": str(tmp_path / "mvtec")}, "synth": {"count": 0}}
    )
    assert ran_stages(out) == ALL_STAGES
    m = json.loads((root / "metrics.json").read_text())
    assert m["fallback"] is True and m["bank_sizes"]["defect"] == 0
    assert m["exdd"]["image_auroc"] == m["patchcore"]["image_auroc"]
    assert FALLBACK_NOTE in " ".join(out.split())
    per_type = m["per_type"]  # MVTec names its defect types (test/<type>/): one here
    assert list(per_type) == ["scratch"] and per_type["scratch"]["images"] == 2
    assert (
        per_type["scratch"]["exdd"]["image_auroc"] == m["exdd"]["image_auroc"]
    )  # the only type: the whole set
    assert 0.0 <= per_type["scratch"]["exdd"]["recall"] <= 1.0


def test_mvtec_with_synthesis_paints_into_generated_masks(tmp_path):
    """MVTec AD has no defect masks to inpaint into: synth.masks auto paints into generated blobs, strokes
    and cracks, so the default synth.count runs and the defect bank holds synthetic rows. Its defective test
    images here have no masks either: image metrics, null pixel metrics with a note."""
    import shutil

    from tests.test_robustness import _mvtec
    from tests.tiny_project import build_tiny_project

    _mvtec(tmp_path / "mvtec")
    shutil.rmtree(tmp_path / "mvtec" / "ground_truth")  # image-level labels only, as most factory data
    root = tmp_path / "project"
    root.mkdir()
    data = {"source": "mvtec", "root": str(tmp_path / "mvtec"), "image_size": [256, 128]}
    # bank.purify off: on this noise "surface" purification may drop every painted row; what is checked here is
    # that synthesis paints into generated masks and its rows reach the bank
    _, out = build_tiny_project(root, {"data": data, "synth": {"count": 4}, "bank": {"purify": None}})
    assert ran_stages(out) == ALL_STAGES
    m = json.loads((root / "metrics.json").read_text())
    assert (
        m["fallback"] is False and m["defect_bank"]["synthetic_rows"] == m["defect_bank"]["defect_rows"] > 0
    )
    assert "generated masks" in " ".join(out.split())
    assert (
        m["exdd"]["pixel_auroc"] is None and 0.0 <= m["exdd"]["image_auroc"] <= 1.0
    )  # no masks: null, noted
    assert m["pixel_note"].startswith("2 of 2 defective test images have no mask")


def test_folder_of_grayscale_images_without_masks_runs_end_to_end(tmp_path):
    """Factory data: a folder of good parts, one of rejected parts, one of known rejects for training - all
    grayscale, no masks anywhere. Image metrics come out, pixel metrics are null with a note, and the known
    rejects feed the defect bank through pseudo-masks."""
    from PIL import Image

    from exdd_core.data.sources.demo import render
    from tests.tiny_project import build_tiny_project

    raw = tmp_path / "line7"
    for folder, label, split, n in (
        ("good", 0, "train", 8),
        ("bad", 1, "test", 4),
        ("rejects", 1, "train", 3),
    ):
        (raw / folder).mkdir(parents=True)
        for k in range(n):
            image, _, _ = render(5, split, label, k, (128, 64))
            Image.fromarray(image).convert("L").save(raw / folder / f"part{k:03d}.png")
    root = tmp_path / "project"
    root.mkdir()
    folder = {"normal_dir": "good", "abnormal_dir": "bad", "known_defects_dir": "rejects", "mask_dir": None}
    folder["normal_test_fraction"] = 0.2
    _, out = build_tiny_project(root, {"data": {"source": "folder", "root": str(raw), "folder": folder}})
    assert ran_stages(out) == ALL_STAGES
    m = json.loads((root / "metrics.json").read_text())
    assert 0.0 <= m["exdd"]["image_auroc"] <= 1.0 and 0.0 <= m["patchcore"]["image_auroc"] <= 1.0
    assert m["exdd"]["pixel_auroc"] is None and m["patchcore"]["aupro"] is None
    assert "4 of 4 defective test images have no mask" in m["pixel_note"]
    assert m["test_images"] == {"normal": 2, "defective": 4, "defective_with_mask": 0}
    log = " ".join(out.split())
    kept = re.search(r"(\d+) of (\d+) rows of unmasked images kept as pseudo-defects", log)
    assert kept and 0 < int(kept[1]) < int(kept[2]), log[-3000:]
    assert m["defect_bank"]["defect_rows"] > m["defect_bank"]["synthetic_rows"]  # real (pseudo) rows too


def test_a_failed_evaluate_leaves_the_previous_results(project):
    """scoring.device: cuda on a machine without a GPU: evaluate stops with a clear error, and the previous
    metrics, card and plots stay in place (persist outputs, published only at the end), so `exdd score`
    still scores with the previous card."""
    root, env = project
    before = {p: (root / p).read_bytes() for p in ("metrics.json", "eval/model.json", "eval/scores.csv")}
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["scoring"]["device"] = "cuda"
    try:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True, timeout=600)
        log = " ".join((p.stdout + p.stderr).split())
        assert p.returncode != 0 and "scoring.device = 'cuda', but torch sees no CUDA GPU" in log, log[-2000:]
        assert "Traceback" not in log
        assert {p: (root / p).read_bytes() for p in before} == before
        assert (root / "eval" / "plots" / "roc.csv").is_file()
        image = next((root / "data" / "prepared" / "test" / "images").glob("*.png"))
        cli = [sys.executable, "-m", "exdd_core.serve.cli", "score", str(image), "--banks", "banks"]
        out = run([*cli, "--out", str(root / "scored-after-failure")], root, env)
        assert "score done in" in " ".join(out.split())
    finally:
        run(["git", "checkout", "--", "."], root, env)
        run(["dvc", "checkout", "--force"], root, env)


def test_two_processes_give_the_one_process_outputs_and_dvc_stays_clean(project):
    """EXDD_NPROC=2: the features stage relaunches itself under torchrun (gloo, loopback), each rank writes
    its half of the images straight into the one store: the single-process store (same rows, order,
    attributes), so `dvc status` stays clean - the number of processes is an execution setting, not a param.
    A rank that fails stops the run: one clear error per rank, no traceback, nothing committed."""
    from exdd_core.features.store import Store

    root, env = project
    before = Store(root / "features" / "test.zarr")
    rows, attrs = before.read_all(), dict(before.attrs)
    env2 = {**env, "EXDD_NPROC": "2", "EXDD_DIST_PORT": "29611"}
    out = run([sys.executable, "stages/features.py", "test"], root, env2)
    log = " ".join(out.split())
    assert "2 ranks on cpu, cpu wrote their shards into features/test.zarr" in log, log[-2000:]
    after = Store(root / "features" / "test.zarr")
    np.testing.assert_array_equal(after.read_all(), rows)
    assert dict(after.attrs) == attrs
    assert "up to date" in run(["dvc", "status"], root, env).lower()
    assert not list((root / "features").glob(".test.zarr.partial-*"))
    # a stage that is not sharded says so under EXDD_NPROC, and refuses to run as a torchrun rank
    out = run([sys.executable, "stages/prepare.py"], root, env2)
    assert "prepare runs on one process: EXDD_NPROC applies to the sharded stages" in " ".join(out.split())
    p = subprocess.run(
        [sys.executable, "stages/prepare.py"], cwd=root, env={**env, "WORLD_SIZE": "2", "RANK": "1"},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert p.returncode == 1 and "prepare does not run sharded" in " ".join(p.stderr.split()), p.stderr[
        -2000:
    ]
    assert "up to date" in run(["dvc", "status"], root, env).lower()
    # a rank fails (an unreadable image in one shard): its error, the others stopped, the old store kept
    image = sorted((root / "data" / "prepared" / "test" / "images").glob("*.png"))[-1]
    good = image.read_bytes()
    try:
        image.write_bytes(b"not a png")
        p = subprocess.run(
            [sys.executable, "stages/features.py", "test"], cwd=root, env={**env2, "EXDD_DIST_PORT": "29615"},
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        image.write_bytes(good)
    log = " ".join((p.stdout + p.stderr).split())
    assert p.returncode == 1, log[-3000:]
    assert f"{image.name}: cannot read as an image" in log and "Traceback" not in log, log[-3000:]
    assert "failed first" in log and "other ranks were stopped; nothing was committed" in log, log[-3000:]
    np.testing.assert_array_equal(Store(root / "features" / "test.zarr").read_all(), rows)
    assert not list((root / "features").glob(".test.zarr.partial-*"))
    # the coreset too: rows sharded over 2 ranks, the picks (and so the bank) of one process
    bank = Store(root / "banks" / "normal.zarr").read_all()
    run([sys.executable, "stages/bank.py", "normal"], root, {**env2, "EXDD_DIST_PORT": "29612"})
    np.testing.assert_array_equal(Store(root / "banks" / "normal.zarr").read_all(), bank)
    assert "up to date" in run(["dvc", "status"], root, env).lower()
    # and synthesis: each rank a shard of the sample indices, rank 0 moves them into one folder
    synthetic = {
        p.relative_to(root): p.read_bytes() for p in (root / "data" / "synthetic").rglob("*") if p.is_file()
    }
    out = run([sys.executable, "stages/synthesize.py"], root, {**env2, "EXDD_DIST_PORT": "29613"})
    assert "on 2 ranks" in " ".join(out.split())
    again = {
        p.relative_to(root): p.read_bytes() for p in (root / "data" / "synthetic").rglob("*") if p.is_file()
    }
    assert again == synthetic
    assert "up to date" in run(["dvc", "status"], root, env).lower()
    # and evaluate: each rank a shard of the test images, rank 0 gathers and writes every output
    outputs = ("metrics.json", "eval/scores.csv", "eval/model.json", "eval/heatmaps.png")
    before = {name: (root / name).read_bytes() for name in outputs}
    out = run([sys.executable, "stages/evaluate.py"], root, {**env2, "EXDD_DIST_PORT": "29614"})
    assert "(2 ranks, each a shard of the test images)" in " ".join(out.split())
    assert {name: (root / name).read_bytes() for name in outputs} == before
    assert "up to date" in run(["dvc", "status"], root, env).lower()
    # and with each bank sharded over the ranks (k-NN merged per query), every rank scoring every image
    env3 = {**env2, "EXDD_DIST_PORT": "29616", "EXDD_SHARD_BANKS": "1"}
    out = run([sys.executable, "stages/evaluate.py"], root, env3)
    assert "(2 ranks, each bank sharded over them)" in " ".join(out.split())
    assert {name: (root / name).read_bytes() for name in outputs} == before
    assert "up to date" in run(["dvc", "status"], root, env).lower()


def test_verdicts_from_the_line_rerun_only_what_they_feed(project):
    """`exdd feedback add` then `dvc repro`: confirmed defects re-embed only themselves and rebuild M_P (and
    what reads it); confirmed normals the normal side. prepare, features_normal and features_test never rerun,
    and `dvc status` is clean after."""
    from exdd_core.data.imageio import save_png
    from exdd_core.data.sources import demo
    from tests.tiny_project import exdd

    root, env = project
    size = tuple(yaml.safe_load((root / "params.yaml").read_text())["data"]["image_size"])
    line = root.parent / "line"
    line.mkdir(exist_ok=True)
    for k in range(3):  # defective parts the banks never saw (beyond the demo's test indices)
        save_png(line / f"defect_{k}.png", demo.render(7, "test", 1, 500 + k, size)[0])
    save_png(line / "good.png", demo.render(7, "test", 0, 500, size)[0])
    try:
        p = exdd(["feedback", "add", "--defect", *map(str, sorted(line.glob("defect_*.png")))], root, env)
        assert p.returncode == 0, p.stderr
        out = run(["dvc", "repro"], root, env)
        # the normal verdicts' store comes out byte-identical: bank_normal stays cached
        assert ran_stages(out) == {"features_feedback", "bank_defect", "fit_fusion", "evaluate"}, out
        assert "up to date" in run(["dvc", "status"], root, env)
        metrics = json.loads((root / "metrics.json").read_text())
        assert metrics["line_verdicts"] == {"normal": 0, "defect": 3}
        card = json.loads((root / "eval" / "model.json").read_text())
        assert card["banks"]["defect"]["line_verdicts"] == 3
        p = exdd(["feedback", "add", "--normal", str(line / "good.png")], root, env)
        assert p.returncode == 0, p.stderr
        out = run(["dvc", "repro"], root, env)
        normal_side = {"features_feedback", "bank_normal", "bank_defect", "fit_fusion", "evaluate"}
        assert ran_stages(out) == normal_side, out
        assert "up to date" in run(["dvc", "status"], root, env)
        listed = json.loads(exdd(["feedback", "list", "--json"], root, env).stdout)
        assert listed["recorded"] == listed["in_banks"] == {"defect": 3, "normal": 1}
    finally:
        run(["git", "checkout", "--", "."], root, env)
        run(["git", "clean", "-fdq", "data/feedback"], root, env)
        run(["dvc", "checkout", "--force"], root, env)
