"""Plot data evaluate writes for `dvc plots`: the pixel ROC (against scikit-learn) and the score histogram.

The end-to-end check that the files exist, parse and render with `dvc plots show` is in test_cli.py, on the
one tiny pipeline run those tests share."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_curve

from exdd_core.evaluation import pixel_metrics as metrics
from exdd_core.evaluation import pixel_report
from exdd_core.evaluation.heatmaps import _case_title
from exdd_core.evaluation.plots import score_histogram
from exdd_core.runtime import ParamError


def pixel_roc_points(masks, maps, max_points: int = 500) -> list[dict[str, float]]:
    return pixel_report(masks, maps, max_points=max_points).roc


def case(seed: int, ties: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks = [ndimage.gaussian_filter(rng.normal(size=(14, 9)), 1.2) > 0.25 for _ in range(3)]
    masks.append(np.zeros((14, 9), dtype=bool))  # an image without defects
    maps = [rng.normal(size=m.shape) + 1.5 * m for m in masks]
    if ties:
        maps = [np.round(m, 1) for m in maps]
    return masks, [m.astype(np.float32) for m in maps]


def flat(masks: list[np.ndarray], maps: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([m.ravel() for m in masks]), np.concatenate([m.ravel() for m in maps])


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 5, 64])
def test_pixel_roc_equals_sklearn(monkeypatch: pytest.MonkeyPatch, ties: bool, chunk: int | None) -> None:
    # Tie groups straddling chunk boundaries must give one point, at their last index, as scikit-learn.
    masks, maps = case(3, ties)
    y, s = flat(masks, maps)
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    if chunk is not None:
        monkeypatch.setattr(metrics, "_CHUNK", chunk)
    pts = pixel_roc_points(masks, maps, max_points=10**6)
    assert [p["fpr"] for p in pts] == pytest.approx(fpr.tolist(), abs=1e-12)
    assert [p["tpr"] for p in pts] == pytest.approx(tpr.tolist(), abs=1e-12)
    assert [p["threshold"] for p in pts[1:]] == pytest.approx(thr[1:].tolist())
    assert pts[0]["threshold"] > s.max()  # finite, unlike scikit-learn's inf: strict JSON for DVC
    json.dumps(pts, allow_nan=False)


def test_pixel_roc_downsampled_keeps_ends_and_order() -> None:
    masks, maps = case(4, ties=False)
    pts = pixel_roc_points(masks, maps, max_points=12)
    assert 2 <= len(pts) <= 12
    assert (pts[0]["fpr"], pts[0]["tpr"]) == (0.0, 0.0) and (pts[-1]["fpr"], pts[-1]["tpr"]) == (1.0, 1.0)
    assert np.all(np.diff([p["fpr"] for p in pts]) >= 0) and np.all(np.diff([p["tpr"] for p in pts]) >= 0)
    with pytest.raises(ParamError):
        pixel_roc_points(masks, maps, max_points=1)


def test_pixel_report_curves_thinned_and_empty_without_defects() -> None:
    masks, maps = case(5, ties=True)
    rep = pixel_report(masks, maps, max_fpr=0.3, max_points=50)
    full = pixel_report(masks, maps, max_fpr=0.3, max_points=10**6)
    assert rep.metrics() == full.metrics()  # thinning the curves never changes the metrics
    assert len(rep.pro) <= 50 and rep.pro[0] == {"fpr": 0.0, "pro": 0.0} and rep.pro[-1] == full.pro[-1]
    assert rep.pro[-1]["fpr"] == pytest.approx(0.3)
    no_defects = pixel_report([np.zeros_like(masks[0])], maps[:1])
    assert no_defects.roc == [] and no_defects.pro == [] and np.isnan(no_defects.auroc)


def test_score_histogram_fractions_per_class() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([1.0, 1.1, 1.2, 2.0, 2.9, 3.0])
    rows = score_histogram(labels, scores, bins=4)
    assert len(rows) == 4 and set(rows[0]) == {"score", "normal", "defective"}
    assert sum(r["normal"] for r in rows) == pytest.approx(1.0)
    assert sum(r["defective"] for r in rows) == pytest.approx(1.0)
    assert rows[0]["normal"] == pytest.approx(0.75) and rows[-1]["defective"] == pytest.approx(1.0)
    assert rows[0]["score"] < rows[-1]["score"]


def test_score_histogram_log_bins_for_ratio_scores_and_constant_scores() -> None:
    labels = np.array([0, 0, 1, 1])
    rows = score_histogram(labels, np.array([1.0, 2.0, 500.0, 1e5]), bins=5)
    centres = [r["score"] for r in rows]
    assert centres[1] / centres[0] == pytest.approx(centres[2] / centres[1])  # geometric
    flat_rows = score_histogram(labels, np.ones(4), bins=3)
    assert sum(r["normal"] for r in flat_rows) == pytest.approx(1.0)


def test_heatmap_titles_do_not_call_a_caught_defect_missed() -> None:
    assert _case_title("missed-defect", 2.0985, 2.0985) == "weakest-defect (caught)"
    assert _case_title("missed-defect", 1.0, 2.0) == "missed-defect"
    assert _case_title("false-alarm", 1.0, 2.0) == "highest-normal (passed)"
    assert _case_title("false-alarm", 2.0, 2.0) == "false-alarm"
    assert _case_title("borderline", 2.0, 2.0) == "borderline"


def test_annotated_panel_and_grid_shapes() -> None:
    from exdd_core.evaluation.overlay import annotate, colormap, grid

    panel = np.full((40, 30, 3), 7, np.uint8)
    out = annotate(panel, ["title", "score 1.0"], 0.0, 2.0, font_size=10)
    assert out.shape[1] == 30 and out.shape[0] > 40
    header = out.shape[0] - 40 - 10 - 14 - 4  # lines, then the panel, the bar and its labels
    np.testing.assert_array_equal(out[header : header + 40], panel)  # the image itself, untouched
    bar = out[header + 42 : header + 52]
    np.testing.assert_array_equal(bar[0], colormap(np.linspace(0.0, 1.0, 30)))  # the overlay's colours
    g = grid([panel] * 5, columns=2, gap=3)
    assert g.shape == (3 * 40 + 2 * 3, 2 * 30 + 3, 3)
