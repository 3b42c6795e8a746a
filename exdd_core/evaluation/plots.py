"""The data behind evaluate's `dvc plots` (eval/plots/), one file per chart, both methods in each file with a
`method` column that names them and carries their AUROC, so the templates in .dvc/plots/ (exdd_*.json) give
ExDD and PatchCore their own colour and legend entry, draw the chance line, and mark the deployment threshold
on the score distributions (design.md, "Evaluation")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.evaluation.image_metrics import pr_points, roc_points
from exdd_core.evaluation.pixel_metrics import PixelReport
from exdd_core.runtime.atomic import write_csv_atomic


def _label(name: str, value: float | None, what: str) -> str:
    return f"{name} ({what} {value:.3f})" if value is not None and np.isfinite(value) else name


def write_plot_data(
    plots: Path,
    labels: np.ndarray,
    scores: dict[str, np.ndarray],
    mode: str,
    metrics: dict[str, Any],
    pixel: dict[str, PixelReport],
    thresholds: dict[str, float | None],
) -> None:
    """roc.csv, pr.csv (image level), pixel_roc.csv, pro.csv (pixel level, when any image has a mask), and
    dist_exdd.csv / dist_patchcore.csv (score histograms with the deployment threshold)."""
    methods = {"exdd": f"ExDD ({mode})", "patchcore": "PatchCore"}
    if len(np.unique(labels)) == 2:
        roc, pr = [], []
        for key, name in methods.items():
            auroc = metrics[key]["image_auroc"]
            roc += [{**p, "method": _label(name, auroc, "AUROC")} for p in roc_points(labels, scores[key])]
            pr += [
                {**p, "method": _label(name, metrics[key]["image_ap"], "AP")}
                for p in pr_points(labels, scores[key])
            ]
        write_csv_atomic(plots / "roc.csv", roc)
        write_csv_atomic(plots / "pr.csv", pr)
    if all(rep.roc for rep in pixel.values()):
        write_csv_atomic(
            plots / "pixel_roc.csv",
            [
                {**p, "method": _label(methods[k], rep.auroc, "AUROC")}
                for k, rep in pixel.items()
                for p in rep.roc
            ],
        )
        write_csv_atomic(
            plots / "pro.csv",
            [
                {**p, "method": _label(methods[k], rep.aupro, "AUPRO")}
                for k, rep in pixel.items()
                for p in rep.pro
            ],
        )
    for key, name in (("exdd", "exdd"), ("patchcore", "patchcore")):
        thr = thresholds.get(mode if key == "exdd" else "patchcore")
        rows = score_histogram(labels, scores[key])
        write_csv_atomic(plots / f"dist_{name}.csv", [{**r, "threshold": thr} for r in rows])


def score_histogram(labels: np.ndarray, scores: np.ndarray, bins: int = 20) -> list[dict[str, float]]:
    """Score distribution of normal vs defective images on shared bins, as the fraction of each class per
    bin (the classes differ in size tenfold on KSDD2, so raw counts would flatten the defective curve)."""
    s = np.asarray(scores, dtype=np.float64)
    lo, hi = float(s.min()), float(s.max())
    if not hi > lo:
        hi = lo + 1.0
    # ratio scores can span decades (s_P + eps near 0): log-spaced bins keep the bulk visible
    log_bins = lo > 0 and hi / lo > 100
    edges = np.geomspace(lo, hi, bins + 1) if log_bins else np.linspace(lo, hi, bins + 1)
    frac: dict[str, np.ndarray] = {}
    for name, cls in (("normal", 0), ("defective", 1)):
        sel = s[labels == cls]
        frac[name] = np.histogram(sel, bins=edges)[0] / max(len(sel), 1)
    centres = np.sqrt(edges[:-1] * edges[1:]) if log_bins else (edges[:-1] + edges[1:]) / 2
    return [
        {"score": float(c), "normal": float(frac["normal"][k]), "defective": float(frac["defective"][k])}
        for k, c in enumerate(centres)
    ]
