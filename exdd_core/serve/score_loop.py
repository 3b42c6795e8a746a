"""`exdd score`'s loop over a folder, as a line runs it: decoding, scoring and writing overlap.

    reader thread:  decode image i + 1, i + 2 (PIL releases the GIL)      -> LoadedImage
    main thread:    backbone + nearest neighbours of image i               -> scores
    writer thread:  map at image size, overlay, PNG of image i - 1, ...    -> overlays/, then its scores.csv row

A row is appended to scores.csv only once its overlay is on disk (in input order), so a killed run's
`scores.csv.partial` never lists an overlay that is not there and `--resume` redoes exactly the missing
images. The scorer computes only the strategies the CSV and the overlay show (`ExddModel.score(only=...)`).
"""

from __future__ import annotations

import argparse
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exdd_core.runtime.errors import ExddError
from exdd_core.runtime.runlog import log, track
from exdd_core.scoring.card import Card
from exdd_core.serve.inputs import LoadedImage, load_for_scoring

SCORE_COLUMNS = ("image", "exdd", "patchcore", "decision", "threshold", "overlay", "error")
# Images decoded ahead of the one being scored: enough to hide a decode behind a backbone pass.
PREFETCH = 2
# Overlays queued for the writer before scoring waits for it: bounds memory (an image and its map each).
PENDING_WRITES = 4


@dataclass
class LineRun:
    """What one `exdd score` run scores with: the mode reported, its threshold (None: no decisions), the card."""

    mode: str
    thr: float | None
    card: Card
    resize: bool
    overlays: Path | None  # folder for the overlay PNGs; None with --no-overlays
    fail_fast: bool


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
    """The heatmap overlay PNG of one scored image, at the file's own size (on the writer thread)."""
    from exdd_core.data.imageio import save_png
    from exdd_core.evaluation.overlay import annotate, overlay

    assert run.overlays is not None
    s, lo_hi = float(scored.scores[run.mode]), run.card.map_range
    over = overlay(scored.image, scorer.map_at_image_size(scored), *lo_hi)
    decision = _decision(s, run.thr)
    thr_text = "none" if run.thr is None else f"{run.thr:.4g}"
    lines = [path.name, f"ExDD ({run.mode}) {s:.4g}, thr {thr_text}", f"-> {decision or 'no threshold'}"]
    save_png(run.overlays / name, annotate(over, lines, *lo_hi, font_size=12))


def _prefetched(
    todo: list[tuple[Path, str]], reader: ThreadPoolExecutor, size: tuple[int, int], resize: bool
) -> Iterator[tuple[Path, str, Future[LoadedImage]]]:
    """The inputs with their decode submitted PREFETCH images ahead of the consumer."""
    queue: deque[tuple[Path, str, Future[LoadedImage]]] = deque()
    items = iter(todo)
    while True:
        while len(queue) <= PREFETCH:
            item = next(items, None)
            if item is None:
                break
            queue.append((*item, reader.submit(load_for_scoring, item[0], size, resize)))
        if not queue:
            return
        yield queue.popleft()


def score_paths(
    scorer: Any, todo: list[tuple[Path, str]], run: LineRun, add_row: Any
) -> tuple[list[dict[str, Any]], int, int]:
    """Score `todo` (path, overlay name) in order; `add_row(row)` appends each row (after its overlay is
    written). An image that cannot be read or scored gets a row with its error (or, with fail_fast, stops the
    run); write errors always stop it. Returns the rows, how many images were resized and how many failed."""
    only = tuple(dict.fromkeys((run.mode, run.card.scoring["mode"], "patchcore")))
    rows: list[dict[str, Any]] = []
    pending: deque[tuple[dict[str, Any], Future[None] | None]] = deque()
    resized = failed = 0

    def flush(keep: int) -> None:
        while len(pending) > keep:
            row, write = pending.popleft()
            if write is not None:
                write.result()  # a failed overlay write raises here and stops the run
            add_row(row)
            rows.append(row)

    with (
        ThreadPoolExecutor(1, thread_name_prefix="exdd-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="exdd-write") as writer,
    ):
        try:
            for path, name, loading in track(
                _prefetched(todo, reader, run.card.image_size, run.resize), "score", len(todo)
            ):
                try:
                    scored = scorer.score_loaded(loading.result(), only)
                except ExddError as e:  # an image that cannot be read or scored
                    if run.fail_fast:
                        log.error("--fail-fast: stopped at %s", path)
                        raise
                    log.warning("%s: not scored: %s", path, e)
                    pending.append(({"image": str(path), "error": str(e)}, None))
                    failed += 1
                    continue
                resized += bool(scored.resized)
                write = None
                if run.overlays is not None:
                    write = writer.submit(_write_overlay, scorer, scored, path, name, run)
                pending.append((_row(path, name, scored, run), write))
                flush(PENDING_WRITES)
        finally:
            flush(0)  # the rows before a stop are kept; a failed overlay write raises here
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
