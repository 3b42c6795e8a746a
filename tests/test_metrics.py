"""Metrics against hand-computed values and slow, obviously-correct references (design.md, "Evaluation")."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from exdd_core.evaluation import pixel_metrics as metrics
from exdd_core.evaluation import pixel_report
from exdd_core.evaluation.image_metrics import image_metrics, pr_points, roc_points
from exdd_core.runtime import InputError, ParamError

# --------------------------------------------------------------------------------------------------------
# the two views of `pixel_report` these tests check


def pixel_metrics(masks, maps, max_fpr: float = 0.3) -> dict[str, float]:
    return pixel_report(masks, maps, max_fpr).metrics()


def pro_curve(masks, maps, max_fpr: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """The exact (unthinned) PRO curve of the report."""
    pro = pixel_report(masks, maps, max_fpr, max_points=10**9).pro
    return np.array([p["fpr"] for p in pro]), np.array([p["pro"] for p in pro])


# --------------------------------------------------------------------------------------------------------
# slow references


def auroc_by_pairs(labels: list[int], scores: list[float]) -> float:
    """AUROC = P(score of a defective > score of a normal), ties counting half."""
    pos = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    neg = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


def pr_at(labels: list[int], scores: list[float], t: float) -> tuple[float, float]:
    tp = sum(1 for y, s in zip(labels, scores, strict=True) if s >= t and y == 1)
    fp = sum(1 for y, s in zip(labels, scores, strict=True) if s >= t and y == 0)
    n_pos = sum(labels)
    return tp / (tp + fp), tp / n_pos


def ap_by_loop(labels: list[int], scores: list[float]) -> float:
    """Σ (R_k − R_{k−1}) P_k over distinct thresholds, highest first."""
    ap, r_prev = 0.0, 0.0
    for t in sorted(set(scores), reverse=True):
        p, r = pr_at(labels, scores, t)
        ap += (r - r_prev) * p
        r_prev = r
    return ap


def f1_max_by_loop(labels: list[int], scores: list[float]) -> tuple[float, float]:
    best, best_t = -1.0, None
    for t in sorted(set(scores)):  # ascending: a strict '>' keeps the lowest threshold of a tie in F1
        p, r = pr_at(labels, scores, t)
        f1 = 0.0 if p + r == 0 else 2 * p * r / (p + r)
        if f1 > best:
            best, best_t = f1, t
    return best, best_t


def integrate_to(fpr: list[float], pro: list[float], max_fpr: float) -> float:
    """Trapezoid of pro over fpr from the first point to max_fpr, interpolating the point at max_fpr."""
    area = 0.0
    for i in range(1, len(fpr)):
        x0, y0, x1, y1 = fpr[i - 1], pro[i - 1], fpr[i], pro[i]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_end) / 2
            break
    return area / max_fpr


def aupro_reference(masks: list[np.ndarray], maps: list[np.ndarray], max_fpr: float) -> float:
    """PRO and FPR recomputed from scratch at every distinct threshold: slow and plain."""
    components: list[tuple[int, np.ndarray]] = []  # (image index, boolean region)
    for i, m in enumerate(masks):
        lab, k = ndimage.label(m)
        components += [(i, lab == c) for c in range(1, k + 1)]
    all_scores = np.concatenate([mp.ravel() for mp in maps]).astype(np.float32)
    normal_scores = np.concatenate([mp[~m] for mp, m in zip(maps, masks, strict=True)]).astype(np.float32)
    fpr, pro = [0.0], [0.0]
    for t in sorted(set(all_scores.tolist()), reverse=True):
        t32 = np.float32(t)
        fractions = [
            np.count_nonzero(maps[i].astype(np.float32)[region] >= t32) / np.count_nonzero(region)
            for i, region in components
        ]
        pro.append(sum(fractions) / len(fractions))
        fpr.append(np.count_nonzero(normal_scores >= t32) / normal_scores.size)
    return integrate_to(fpr, pro, max_fpr)


def random_case(seed: int, n: int = 3, shape: tuple[int, int] = (12, 10), ties: bool = False):
    """Blobby masks (some images without any defect) and noisy maps that prefer defect pixels."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for i in range(n):
        if i == n - 1:
            mask = np.zeros(shape, dtype=bool)  # an image without defects: normal pixels only
        else:
            mask = ndimage.gaussian_filter(rng.normal(size=shape), 1.2) > 0.25
        mp = rng.normal(size=shape) + 1.5 * mask
        if ties:
            mp = np.round(mp, 1)
        masks.append(mask)
        maps.append(mp.astype(np.float32))
    assert sum(int(m.sum()) for m in masks) > 0
    return masks, maps


# --------------------------------------------------------------------------------------------------------
# image level


def test_image_metrics_textbook_example() -> None:
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    m = image_metrics(np.array(labels), np.array(scores))
    assert m["auroc"] == pytest.approx(0.75, abs=1e-12)  # 3 of 4 pairs concordant
    assert m["ap"] == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3, abs=1e-12)
    assert m["f1_max"] == pytest.approx(0.8, abs=1e-12)  # at 0.35: P = 2/3, R = 1
    assert m["f1_threshold"] == pytest.approx(0.35, abs=1e-12)
    assert all(type(v) is float for v in m.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_image_metrics_against_loops_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=25)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(size=25) + labels, 1)  # rounding makes ties, across classes too
    m = image_metrics(labels, scores)
    ly, ls = labels.tolist(), scores.tolist()
    assert m["auroc"] == pytest.approx(auroc_by_pairs(ly, ls), rel=1e-12)
    assert m["ap"] == pytest.approx(ap_by_loop(ly, ls), rel=1e-12)
    f1, t = f1_max_by_loop(ly, ls)
    assert m["f1_max"] == pytest.approx(f1, rel=1e-12)
    assert m["f1_threshold"] == pytest.approx(t, rel=1e-12)


def test_f1_max_tie_reports_the_lowest_threshold() -> None:
    # F1 = 2/3 both at t = 4 (P = 1, R = 1/2) and at t = 1 (P = 1/2, R = 1): the lower threshold, which
    # misses fewer defects, is reported.
    m = image_metrics(np.array([1, 0, 0, 1]), np.array([4.0, 3.0, 2.0, 1.0]))
    assert m["f1_max"] == pytest.approx(2 / 3, rel=1e-12)
    assert m["f1_threshold"] == 1.0


def test_constant_scores_do_not_crash() -> None:
    labels = np.array([0, 1, 0, 0, 1])
    m = image_metrics(labels, np.full(5, 3.0))
    assert m["auroc"] == 0.5
    assert m["ap"] == pytest.approx(0.4)  # everything predicted defective: precision = prevalence
    assert m["f1_max"] == pytest.approx(2 * 0.4 / 1.4)
    assert m["f1_threshold"] == 3.0
    assert len(roc_points(labels, np.full(5, 3.0))) == 2


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_single_class_gives_nan_without_warning(labels: list[int]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = image_metrics(np.array(labels), np.array([0.1, 0.5, 0.9]))
        assert roc_points(np.array(labels), np.array([0.1, 0.5, 0.9])) == []
        assert pr_points(np.array(labels), np.array([0.1, 0.5, 0.9])) == []
    assert set(m) == {"auroc", "ap", "f1_max", "f1_threshold"}
    assert all(math.isnan(v) for v in m.values())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_image_scores_raise(bad: float) -> None:
    with pytest.raises(InputError, match="scores"):
        image_metrics(np.array([0, 1, 1]), np.array([0.1, bad, 0.3]))


def test_bad_labels_and_lengths_raise() -> None:
    with pytest.raises(InputError, match="labels"):
        image_metrics(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(InputError, match="scores"):
        image_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]))


def test_roc_and_pr_points_downsampled_keep_ends_and_are_strict_json() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=2000)
    scores = rng.normal(size=2000) + labels
    fpr, tpr, _ = roc_curve(labels, scores)
    assert fpr.size > 50
    roc = roc_points(labels, scores, max_points=50)
    assert 2 <= len(roc) <= 50
    assert (roc[0]["fpr"], roc[0]["tpr"]) == (0.0, 0.0)
    assert (roc[-1]["fpr"], roc[-1]["tpr"]) == (1.0, 1.0)
    assert roc[0]["threshold"] > scores.max()
    assert [p["fpr"] for p in roc] == sorted(p["fpr"] for p in roc)
    full = roc_points(labels, scores, max_points=10**6)
    assert [p["fpr"] for p in full] == fpr.tolist() and [p["tpr"] for p in full] == tpr.tolist()

    precision, recall, _ = precision_recall_curve(labels, scores)
    pr = pr_points(labels, scores, max_points=50)
    assert 2 <= len(pr) <= 50
    assert (pr[0]["recall"], pr[0]["precision"]) == (0.0, 1.0)
    assert pr[-1]["recall"] == 1.0 and pr[-1]["precision"] == pytest.approx(precision[0])
    assert pr[-1]["threshold"] == scores.min()
    assert [p["threshold"] for p in pr] == sorted((p["threshold"] for p in pr), reverse=True)
    assert len(pr_points(labels, scores, max_points=10**6)) == recall.size

    json.dumps({"roc": roc, "pr": pr}, allow_nan=False)  # no Infinity: DVC plots need strict JSON
    with pytest.raises(ParamError):
        roc_points(labels, scores, max_points=1)


# --------------------------------------------------------------------------------------------------------
# pixel level


def two_component_case() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One 1×8 row: a 1-pixel defect (0), a normal (1), a 3-pixel defect (2-4), normals (5-7)."""
    mask = np.array([[1, 0, 1, 1, 1, 0, 0, 0]], dtype=bool)
    mp = np.array([[0.9, 0.7, 0.6, 0.6, 0.2, 0.4, 0.1, 0.1]], dtype=np.float32)
    return [mask], [mp]


def test_aupro_hand_computed_two_components() -> None:
    # Thresholds high to low give (FPR, PRO): (0, 0) → 0.9 catches only the small component: (0, 1/2)
    # → 0.7: (1/4, 1/2) → 0.6: (1/4, 1/2 + 1/2·2/3 = 5/6) → 0.4: (1/2, 5/6) → 0.2: (1/2, 1) → 0.1: (1, 1).
    masks, maps = two_component_case()
    # Up to 0.3: 0.25·1/2 + 0.05·5/6 = 1/6; normalised by 0.3 → 5/9.
    assert pixel_metrics(masks, maps, max_fpr=0.3)["aupro"] == pytest.approx(5 / 9, rel=1e-9)
    # Up to 1: 0.25·1/2 + 0.25·5/6 + 0.5·1 = 5/6.
    assert pixel_metrics(masks, maps, max_fpr=1.0)["aupro"] == pytest.approx(5 / 6, rel=1e-9)
    # Up to 0.1 (interpolated inside the flat PRO = 1/2 stretch): 1/2.
    assert pixel_metrics(masks, maps, max_fpr=0.1)["aupro"] == pytest.approx(0.5, rel=1e-9)

    fpr, pro = pro_curve(masks, maps, max_fpr=0.3)
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25, 0.3], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 5 / 6, 5 / 6], rtol=0, atol=1e-12)
    # max_fpr on a vertical step: the curve ends on the step's top, once.
    fpr, pro = pro_curve(masks, maps, max_fpr=0.25)
    np.testing.assert_allclose(fpr, [0, 0, 0.25, 0.25], rtol=0, atol=1e-12)
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 5 / 6], rtol=0, atol=1e-12)
    assert pixel_metrics(masks, maps, max_fpr=0.25)["aupro"] == pytest.approx(0.5, rel=1e-9)


def test_components_use_4_connectivity() -> None:
    # Defects (0,0)-(0,1) and (1,2) touch only diagonally: two components (sizes 2 and 1) with scipy's
    # default structure. The single pixel scores highest, so at the top threshold PRO = 1/2 (it would be 1/3
    # with 8-connectivity), and stays there until every normal pixel is in (FPR = 1).
    mask = np.zeros((3, 3), dtype=bool)
    mask[0, 0] = mask[0, 1] = mask[1, 2] = True
    mp = np.where(mask, 0.1, 0.5).astype(np.float32)
    mp[1, 2] = 0.9
    assert pixel_metrics([mask], [mp], max_fpr=1.0)["aupro"] == pytest.approx(0.5, rel=1e-9)


def test_perfect_map_gives_one() -> None:
    masks, _ = random_case(7)
    rng = np.random.default_rng(7)
    maps = [np.where(m, 2.0 + rng.random(m.shape), rng.random(m.shape)).astype(np.float32) for m in masks]
    for max_fpr in (0.3, 0.01, 1.0):
        m = pixel_metrics(masks, maps, max_fpr=max_fpr)
        assert m["aupro"] == pytest.approx(1.0, rel=1e-12)
        assert m["auroc"] == pytest.approx(1.0, rel=1e-12)
        assert m["ap"] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_aupro_against_slow_reference(seed: int, ties: bool, max_fpr: float) -> None:
    masks, maps = random_case(seed, ties=ties)
    got = pixel_metrics(masks, maps, max_fpr=max_fpr)["aupro"]
    assert got == pytest.approx(aupro_reference(masks, maps, max_fpr), rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 2, 7, 64])
def test_chunked_sweep_gives_the_same_numbers(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    # Tie groups that straddle chunk boundaries must still be cut only at their last index.
    masks, maps = random_case(11, ties=True)
    whole = pixel_metrics(masks, maps)
    monkeypatch.setattr(metrics, "_CHUNK", chunk)
    parts = pixel_metrics(masks, maps)
    for key in ("auroc", "ap", "aupro"):
        assert parts[key] == pytest.approx(whole[key], rel=1e-12)
    fpr, pro = pro_curve(masks, maps, max_fpr=0.3)
    assert fpr[-1] == pytest.approx(0.3) and np.all(np.diff(fpr) >= 0)
    assert np.trapezoid(pro, fpr) / 0.3 == pytest.approx(whole["aupro"], rel=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_and_ap_equal_sklearn(ties: bool) -> None:
    masks, maps = random_case(5, n=4, shape=(20, 16), ties=ties)
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([mp.ravel() for mp in maps])
    m = pixel_metrics(np.stack(masks), np.stack(maps))  # the (N, H, W) form
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), rel=1e-9)
    assert m["ap"] == pytest.approx(average_precision_score(y, s), rel=1e-9)
    assert all(type(v) is float for v in m.values())


def test_images_of_different_sizes_and_float64_maps() -> None:
    masks, maps = two_component_case()
    other_mask = np.zeros((3, 2), dtype=bool)
    other_map = np.full((3, 2), 0.05)  # float64, below everything else: only adds low-scoring normals
    m = pixel_metrics([*masks, other_mask], [*maps, other_map], max_fpr=1.0)
    # Normals are now 4 + 6 = 10; the curve's points are (0,1/2) (.1,1/2) (.1,5/6) (.2,5/6) (.2,1) (1,1).
    assert m["aupro"] == pytest.approx(0.1 * 0.5 + 0.1 * 5 / 6 + 0.8, rel=1e-9)


def test_no_defect_pixels_gives_nan() -> None:
    masks = [np.zeros((4, 5), dtype=bool)] * 2
    maps = [np.random.default_rng(0).random((4, 5))] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = pixel_metrics(masks, maps)
        fpr, pro = pro_curve(masks, maps)
    assert all(math.isnan(v) for v in m.values())
    assert fpr.size == 0 and pro.size == 0


def test_constant_maps_do_not_crash() -> None:
    masks, _ = two_component_case()
    m = pixel_metrics(masks, [np.ones((1, 8), dtype=np.float32)], max_fpr=0.3)
    assert m["auroc"] == 0.5
    # One threshold: (0, 0) → (1, 1); at FPR 0.3 PRO is interpolated to 0.3, area 0.045 / 0.3.
    assert m["aupro"] == pytest.approx(0.15, rel=1e-9)


def test_sort_keys_keep_float_order_and_tie_the_two_zeros() -> None:
    rng = np.random.default_rng(4)
    special = [0.0, -0.0, 1e-45, -1e-45, 3.4e38, -3.4e38, 1.0, -1.0]
    x = np.concatenate([rng.normal(scale=10.0, size=300), special]).astype(np.float32)
    k = metrics._sortable_bits(x).astype(np.int64)
    x64 = x.astype(np.float64)  # exact, and no overflow in the differences
    np.testing.assert_array_equal(np.sign(k[:, None] - k[None, :]), np.sign(x64[:, None] - x64[None, :]))


def test_negative_scores_and_signed_zeros_match_sklearn() -> None:
    # -0.0 == 0.0: if the two zeros were not one tie group, AUROC would move away from sklearn's.
    masks = [np.array([[1, 0, 1, 0, 0, 1]], dtype=bool)]
    maps = [np.array([[0.0, -0.0, -0.0, 0.0, -2.5, -1.0]], dtype=np.float32)]
    y, s = masks[0].ravel(), maps[0].ravel()
    m = pixel_metrics(masks, maps)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), rel=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, s), rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e39])
def test_non_finite_maps_raise(bad: float) -> None:
    masks, maps = two_component_case()
    broken = maps[0].astype(np.float64)
    broken[0, 3] = bad
    with pytest.raises(InputError, match=r"maps\[0\]"):
        pixel_metrics(masks, [broken])


def test_bad_pixel_inputs_raise() -> None:
    masks, maps = two_component_case()
    with pytest.raises(InputError, match="shape"):
        pixel_metrics(masks, [maps[0][:, :4]])
    with pytest.raises(InputError, match="masks"):
        pixel_metrics([masks[0].astype(np.uint8) * 255], maps)
    with pytest.raises(InputError, match="1 images but maps has 2"):
        pixel_metrics(masks, maps * 2)
    with pytest.raises(ParamError, match="max_fpr"):
        pixel_metrics(masks, maps, max_fpr=0.0)
