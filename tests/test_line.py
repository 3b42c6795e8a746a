"""A line that loses nothing: `exdd score` gives every readable image its row and an unreadable one a row
saying why (exit 1); its rows are flushed as they are scored, and `--resume` after a `kill -9` scores each
image exactly once. ScoresCsv (serve/line_csv.py) directly, then the command end to end on the tiny project."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from exdd_core.serve.line_csv import ScoresCsv
from tests.tiny_project import exdd

COLUMNS = ("image", "exdd", "error")


def read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_are_on_disk_before_publishing_and_resume_retries_errors(tmp_path: Path) -> None:
    final = tmp_path / "scores.csv"
    first = ScoresCsv(final, COLUMNS, resume=False)
    first.add({"image": "a.png", "exdd": "1.5"})
    first.add({"image": "b.png", "error": "truncated"})
    assert [r["image"] for r in read(first.partial)] == ["a.png", "b.png"] and not final.exists()
    first.close()  # killed before publishing: the partial file keeps the rows
    again = ScoresCsv(final, COLUMNS, resume=True)
    assert again.done == {"a.png"}  # the error row is retried
    again.add({"image": "b.png", "exdd": "0.5"})
    again.publish()
    assert [(r["image"], r["exdd"], r["error"]) for r in read(final)] == [
        ("a.png", "1.5", ""),
        ("b.png", "0.5", ""),
    ]
    assert not again.partial.exists()
    fresh = ScoresCsv(final, COLUMNS, resume=False)  # without --resume nothing is kept
    assert fresh.done == set()
    fresh.close()


@pytest.fixture(scope="module")
def project(tiny_project) -> tuple[Path, dict[str, str]]:
    """The session's tiny `dvc repro` (tests/tiny_project.py), shared with the other slow tests."""
    root, env, _ = tiny_project
    return root, env


def test_resume_drops_torn_and_stale_rows_and_a_crash_while_resuming_loses_nothing(tmp_path: Path) -> None:
    final = tmp_path / "scores.csv"
    partial = final.with_name("scores.csv.partial")
    partial.write_text("image,exdd,error\na.png,1.5,\nb.png,2.5,\nold.png,0.1,\nc.png,0.1")  # c.png cut short
    keep = {"a.png", "b.png", "c.png"}  # old.png is not in this run
    again = ScoresCsv(final, COLUMNS, resume=True, keep=lambda r: r["image"] in keep)
    assert again.done == {"a.png", "b.png"}
    assert [r["image"] for r in read(partial)] == ["a.png", "b.png"]  # rewritten whole before appending
    again.close()
    assert not partial.with_name("scores.csv.partial.tmp").exists()
    partial.write_text("image,exdd,error\na.png,1.5\n")  # a row missing a field is not a whole row
    assert ScoresCsv(final, COLUMNS, resume=True).done == set()


@pytest.mark.slow
def test_a_truncated_image_gets_an_error_row_and_the_others_their_scores(project, tmp_path: Path) -> None:
    root, env = project
    folder = tmp_path / "line"
    folder.mkdir()
    good = sorted((root / "data" / "prepared" / "test" / "images").glob("*.png"))[:4]
    for p in good:
        shutil.copy(p, folder / p.name)
    (folder / "zz_truncated.png").write_bytes(good[0].read_bytes()[:200])  # a valid header, then nothing
    p = exdd(["score", str(folder), "--banks", "banks", "--out", str(tmp_path / "out")], root, env)
    log = " ".join(p.stderr.split())
    assert p.returncode == 1 and "Traceback" not in p.stderr
    assert "1 of 5 images could not be scored" in log
    rows = read(tmp_path / "out" / "scores.csv")
    assert [Path(r["image"]).name for r in rows] == [*(g.name for g in good), "zz_truncated.png"]
    assert all(r["exdd"] and not r["error"] for r in rows[:4])
    assert "zz_truncated.png" in rows[4]["error"] and not rows[4]["exdd"]
    stop = exdd(
        ["score", str(folder), "--banks", "banks", "--out", str(tmp_path / "o2"), "--fail-fast"], root, env
    )
    assert stop.returncode == 1 and "zz_truncated.png" in " ".join(stop.stderr.split())


@pytest.mark.slow
def test_kill_9_then_resume_scores_each_image_exactly_once(project, tmp_path: Path) -> None:
    root, env = project
    folder = tmp_path / "line"
    folder.mkdir()
    images = sorted((root / "data" / "prepared" / "test" / "images").glob("*.png"))
    for k in range(12):  # enough images that the kill lands halfway
        for p in images:
            shutil.copy(p, folder / f"{k:02d}_{p.name}")
    n = len(list(folder.iterdir()))
    out = tmp_path / "out"
    args = [
        sys.executable,
        "-m",
        "exdd_core.serve.cli",
        "score",
        str(folder),
        "--banks",
        "banks",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(args, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / "scores.csv.partial"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if partial.is_file() and len(read(partial)) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed halfway"
    kept = len(read(partial))
    assert 3 <= kept < n and not (out / "scores.csv").exists()
    p = exdd(["score", str(folder), "--banks", "banks", "--out", str(out), "--resume"], root, env)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = read(out / "scores.csv")
    names = [r["image"] for r in rows]
    assert len(names) == n and len(set(names)) == n and all(r["exdd"] for r in rows)
    straight = exdd(
        ["score", str(folder), "--banks", "banks", "--out", str(tmp_path / "straight")], root, env
    )
    assert straight.returncode == 0
    want = {r["image"]: r["exdd"] for r in read(tmp_path / "straight" / "scores.csv")}
    assert {r["image"]: r["exdd"] for r in rows} == want
