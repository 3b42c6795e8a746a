"""The heatmap grid of evaluate (`eval/heatmaps.png`): the best, worst and borderline test images, each as
image | ExDD map overlay with the ground truth outlined, titled with case, score and threshold."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from exdd_core.data.imageio import load_image, save_png
from exdd_core.evaluation.overlay import annotate, grid, overlay, side_by_side

# Colour range of every overlay, as percentiles of all test maps of a run: one shared scale (a cool image is a
# normal one), robust to a few extreme pixels. Display only: no metric depends on it.
HEATMAP_RANGE_PERCENTILES = (1.0, 99.9)
# Panels per row of eval/heatmaps.png (each panel is image | overlay): a picture a screen can show.
HEATMAP_COLUMNS = 3


def pick_cases(
    labels: np.ndarray, scores: np.ndarray, threshold: float, how_many: int
) -> list[tuple[str, int]]:
    """(kind, index) of the best, worst and borderline test images, about a third each, no repeats."""
    order = np.argsort(scores)
    defective = [int(i) for i in order[::-1] if labels[i] == 1]
    normal = [int(i) for i in order if labels[i] == 0]
    border = [int(i) for i in np.argsort(np.abs(scores - threshold))]
    queues = [
        ("best-defect", defective),
        ("best-normal", normal),
        ("missed-defect", defective[::-1]),
        ("false-alarm", normal[::-1]),
        ("borderline", border),
    ]
    picked: list[tuple[str, int]] = []
    seen: set[int] = set()
    while len(picked) < min(how_many, len(labels)):
        progressed = False
        for kind, q in queues:
            while q and q[0] in seen:
                q.pop(0)
            if q and len(picked) < how_many:
                idx = q.pop(0)
                picked.append((kind, idx))
                seen.add(idx)
                progressed = True
        if not progressed:
            break
    return picked


def _case_title(kind: str, score: float, threshold: float) -> str:
    """The weakest defect is only "missed" below the threshold, the strongest normal only a "false alarm"
    at or above it; on a well-separated test set they are neither, and the title must not say so."""
    if kind == "missed-defect" and score >= threshold:
        return "weakest-defect (caught)"
    if kind == "false-alarm" and score < threshold:
        return "highest-normal (passed)"
    return kind


def write_heatmaps(
    out_dir: Path,
    ids: list[str],
    labels: np.ndarray,
    scores: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    records: dict,
    size: tuple[int, int],
    threshold: float,
    how_many: int,
    value_range: tuple[float, float] | None = None,
) -> Path | None:
    """One PNG with an overlay per chosen case (ground truth outlined), each titled with its kind, id, score,
    threshold and decision over a colour bar of the shared scale, in rows of HEATMAP_COLUMNS."""
    if how_many <= 0:
        return None
    cases = pick_cases(labels, scores, threshold, how_many)
    lo, hi = value_range if value_range is not None else np.percentile(maps, HEATMAP_RANGE_PERCENTILES)
    panels = []
    for kind, k in cases:
        img = load_image(records[ids[k]].image_path, size)
        over = overlay(img, maps[k], float(lo), float(hi), masks[k])
        decision = "defective" if scores[k] >= threshold else "normal"
        truth = "defective" if labels[k] else "normal"
        lines = [
            f"{_case_title(kind, scores[k], threshold)}: {ids[k]}",
            f"score {scores[k]:.4g}, threshold {threshold:.4g}",
            f"-> {decision} (truth: {truth})",
        ]
        panels.append(annotate(side_by_side(img, over), lines, float(lo), float(hi)))
    path = out_dir / "heatmaps.png"
    save_png(path, grid(panels, HEATMAP_COLUMNS))
    return path
