"""`exdd score`'s loop over a folder, as a line runs it: one image per core.

Each of `workers` threads takes an image through decode, scoring and its overlay PNG; torch runs each
image's ops on one thread. On a 2-core CPU two images at once, one thread each, are 1.6x the images/s of one
image on two threads (benchmarks/score_rate.py): the small convolutions of a line backbone split badly across
threads, while decoding, nearest neighbours and PNG encoding (which release the GIL) fill the gaps.

Rows reach scores.csv in input order, each once its overlay is on disk, so a killed run's
`scores.csv.partial` never lists an overlay that is not there and `--resume` redoes exactly the missing
images. The scorer computes only the strategies the CSV and the overlay show (`ExddModel.score(only=...)`).
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exdd_core.runtime.errors import ExddError
from exdd_core.runtime.runlog import log, track
from exdd_core.scoring.card import Card
from exdd_core.serve.inputs import load_for_scoring

SCORE_COLUMNS = ("image", "exdd", "patchcore", "decision", "threshold", "overlay", "error")
# Images in flight per worker (running or queued): keeps every worker busy while the rows are written in
# order, and bounds memory (an image and its maps each).
IN_FLIGHT = 2


@dataclass
class LineRun:
    """How one `exdd score` run scores: the mode reported, its threshold (None: no decisions), the card, and
    what to write; `workers` images at once (`score_paths`)."""

    mode: str
    thr: float | None
    card: Card
    resize: bool
    overlays: Path | None  # folder for the overlay PNGs; None with --no-overlays
    fail_fast: bool
    workers: int = 1  # images scored at once


def overlay_names(paths: list[Path]) -> list[str]:
    """One PNG name per input, the image's stem, made unique when two folders hold the same name."""
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        n = seen.get(p.stem, 0)
        seen[p.stem] = n + 1
        names.append(f"{p.stem}.png" if n == 0 else f"{p.stem}-{n + 1}.png")
    return names


def _row(path: Path, name: str, scored: Any, run: LineRun) -> dict[str, Any]:
    s = scored.scores[run.mode]
    return {
        "image": str(path),
        # repr: the shortest text that reads back as the same float, so a score equal to the threshold
        # (the F1-optimal threshold is a test image's score) stays equal in the CSV
        "exdd": repr(float(s)),
        "patchcore": repr(float(scored.patchcore)),
        "decision": _decision(float(s), run.thr),
        "threshold": "" if run.thr is None else repr(float(run.thr)),
        "overlay": "" if run.overlays is None else f"overlays/{name}",
    }


def _decision(score: float, thr: float | None) -> str:
    return "" if thr is None else ("defective" if score >= thr else "normal")


def _write_overlay(scorer: Any, scored: Any, path: Path, name: str, run: LineRun) -> None:
    """The heatmap overlay PNG of one scored image, at the file's own size."""
    from exdd_core.data.imageio import save_png
    from exdd_core.evaluation.overlay import annotate, overlay

    assert run.overlays is not None
    s, lo_hi = float(scored.scores[run.mode]), run.card.map_range
    over = overlay(scored.image, scorer.map_at_image_size(scored), *lo_hi)
    decision = _decision(s, run.thr)
    thr_text = "none" if run.thr is None else f"{run.thr:.4g}"
    lines = [path.name, f"ExDD ({run.mode}) {s:.4g}, thr {thr_text}", f"-> {decision or 'no threshold'}"]
    save_png(run.overlays / name, annotate(over, lines, *lo_hi, font_size=12))


def score_paths(
    scorer: Any, todo: list[tuple[Path, str]], run: LineRun, add_row: Callable[[dict[str, Any]], None]
) -> tuple[list[dict[str, Any]], int, int]:
    """Score `todo` (path, overlay name) on `run.workers` threads; `add_row(row)` appends each row, in input
    order. An image that cannot be read or scored gets a row with its error (or, with fail_fast, stops the
    run); write errors always stop it. Returns the rows, how many images were resized and how many failed."""
    only = tuple(dict.fromkeys((run.mode, run.card.scoring["mode"], "patchcore")))

    def one(path: Path, name: str) -> tuple[dict[str, Any], bool, bool]:
        try:
            scored = scorer.score_loaded(load_for_scoring(path, run.card.image_size, run.resize), only)
        except ExddError as e:  # an image that cannot be read or scored
            if run.fail_fast:
                log.error("--fail-fast: stopped at %s", path)
                raise
            log.warning("%s: not scored: %s", path, e)
            return {"image": str(path), "error": str(e)}, False, True
        if run.overlays is not None:
            _write_overlay(scorer, scored, path, name, run)
        return _row(path, name, scored, run), bool(scored.resized), False

    rows: list[dict[str, Any]] = []
    resized = failed = 0
    items = iter(todo)
    window: deque[Future[tuple[dict[str, Any], bool, bool]]] = deque()
    with ThreadPoolExecutor(run.workers, thread_name_prefix="exdd-score") as pool:

        def fill() -> None:
            while len(window) < IN_FLIGHT * run.workers and (item := next(items, None)) is not None:
                window.append(pool.submit(one, *item))

        try:
            fill()
            for _ in track(range(len(todo)), "score", len(todo)):
                row, was_resized, was_failed = window.popleft().result()
                add_row(row)
                rows.append(row)
                resized, failed = resized + was_resized, failed + was_failed
                fill()
        except BaseException:
            for waiting in window:
                waiting.cancel()
            raise
    return rows, resized, failed


def score_folder_rows(
    scorer: Any, paths: list[Path], args: argparse.Namespace, run: LineRun
) -> tuple[list[dict[str, Any]], int, int]:
    """Every image not already in a resumed scores.csv (serve/line_csv.py), appending each row as it is
    done; returns every row (kept ones first), how many images were resized and how many failed."""
    from exdd_core.serve.line_csv import ScoresCsv

    paths = list(dict.fromkeys(paths))  # an image given twice is scored once
    names, thr_text = {str(p) for p in paths}, "" if run.thr is None else repr(float(run.thr))
    scores = ScoresCsv(
        args.out / "scores.csv",
        SCORE_COLUMNS,
        args.resume,
        keep=lambda r: r["image"] in names and r["threshold"] == thr_text,
    )
    if scores.done:
        log.info("--resume: %d images already scored in %s", len(scores.done), scores.partial)
    todo = [(p, n) for p, n in zip(paths, overlay_names(paths), strict=True) if str(p) not in scores.done]
    if run.overlays is not None:
        run.overlays.mkdir(parents=True, exist_ok=True)
    try:
        rows, resized, failed = score_paths(scorer, todo, run, scores.add)
    except BaseException:
        log.error("the rows scored so far are in %s", scores.partial)
        raise
    finally:
        scores.close()
    scores.publish()
    return [*scores.kept, *rows], resized, failed
