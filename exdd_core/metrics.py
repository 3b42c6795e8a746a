"""Evaluation metrics (SPEC item 10): image AUROC / AP / F1-max, pixel AUROC / AP and AUPRO, plus
downsampled curves for DVC plots.

Image-level metrics are small and go through scikit-learn, the reference everybody compares against.
Pixel-level metrics are computed here from a single descending sort of all pixels: a KSDD2 test set is
about 1004 × 632 × 224 ≈ 142 M pixels, and scikit-learn would sort them once per metric and keep several
float64 arrays of that length alive at once. One sort of the float32 scores, walked in chunks, gives the
ROC, the precision–recall curve and the per-region-overlap curve at every distinct threshold exactly.

Conventions shared by everything here:

- a sample (image or pixel) is predicted defective when its score is **≥** the threshold;
- ties are handled as scikit-learn does: only the last index of each group of equal scores is a curve point,
  so equal scores are always on the same side of a threshold;
- a metric that is undefined because only one class is present is returned as NaN without an exception or
  a warning, so that a pipeline run on a degenerate split still writes its ``metrics.json`` (NaN is a
  visible "undefined", where 0 or 0.5 would look like a real result);
- non-finite scores are a caller's bug and raise :class:`~exdd_core.errors.InputError` naming the argument.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from sklearn.metrics import (
    average_precision_score,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from exdd_core.errors import InputError, ParamError

__all__ = [
    "image_metrics",
    "pixel_metrics",
    "pixel_report",
    "pixel_roc_points",
    "pr_points",
    "pro_curve",
    "roc_points",
]

NAN = float("nan")

# Pixels processed per step of the sweep over the sorted order; bounds the temporaries (~40 bytes a pixel)
# independently of the data set's size. Module-level so tests can shrink it to exercise chunk boundaries.
_CHUNK = 1 << 22


# --------------------------------------------------------------------------------------------------------
# input checks


def _binary_labels(labels: object, name: str) -> np.ndarray:
    """Labels as a 1-D bool array; anything but 0/1 (or bool) is refused rather than guessed at (a 0/255
    mask or a float probability passed by mistake would otherwise silently change every number)."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"{name} must hold 0/1 labels, got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        bad = arr[~np.isin(arr, (0, 1))][:5].tolist()
        raise InputError(f"{name} must hold only 0 and 1, found e.g. {bad}")
    return arr.astype(bool)


def _finite_scores(scores: object, name: str, n: int) -> np.ndarray:
    """Scores as a 1-D float64 array of length `n` (image level: small, so precision is free)."""
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be numeric: {e}") from e
    if arr.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise InputError(f"{name} has {arr.shape[0]} entries but labels has {n}")
    if not np.isfinite(arr).all():
        raise InputError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN/Inf value(s)")
    return arr


def _check_image_inputs(labels: object, scores: object) -> tuple[np.ndarray, np.ndarray]:
    y = _binary_labels(labels, "labels")
    if y.size == 0:
        raise InputError("labels is empty: nothing to evaluate")
    s = _finite_scores(scores, "scores", y.size)
    return y, s


def _downsample_indices(n: int, max_points: int) -> np.ndarray:
    """At most `max_points` evenly spread indices of 0..n-1, always keeping the first and the last (the
    curve's end points, which a plot must not lose)."""
    if max_points < 2:
        raise ParamError(f"max_points must be at least 2 (first and last point), got {max_points}")
    if n <= max_points:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, num=max_points)).astype(np.int64))


def _above_max(scores: np.ndarray) -> float:
    """A finite threshold that predicts nothing defective: the next float above the highest score.
    scikit-learn uses +inf for the curve's first point, which strict JSON (DVC plots) cannot hold."""
    return float(np.nextafter(scores.max(), np.inf))


# --------------------------------------------------------------------------------------------------------
# image level


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Image-level metrics of defect scores (higher = more defective) against 0/1 labels (1 = defective).

    Returns plain Python floats (ready for ``json.dump``):

    - ``auroc``: area under the ROC curve (scikit-learn; ties count half, constant scores give 0.5);
    - ``ap``: average precision (scikit-learn's step-wise sum, not the trapezoid, which is optimistic);
    - ``f1_max``: the best F1 over all thresholds of the precision–recall curve, i.e. what a perfectly
      tuned threshold would reach; ``f1_threshold``: the lowest threshold reaching it (score ≥ threshold
      means defective).

    If only one class is present all four are NaN: AUROC and AP are undefined, and an F1 on such a split
    would say nothing about separating the classes. No exception and no warning, so a degenerate split
    still produces a metrics file. Raises InputError for NaN/Inf scores, non-0/1 labels or a length
    mismatch.
    """
    y, s = _check_image_inputs(labels, scores)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return {"auroc": NAN, "ap": NAN, "f1_max": NAN, "f1_threshold": NAN}
    precision, recall, thresholds = precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold; it can never be the F1 maximum anyway.
    p, r = precision[:-1], recall[:-1]
    denom = p + r
    f1 = np.divide(2 * p * r, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))  # thresholds ascend, so the first maximum is the lowest threshold
    return {
        "auroc": float(roc_auc_score(y, s)),
        "ap": float(average_precision_score(y, s)),
        "f1_max": float(f1[best]),
        "f1_threshold": float(thresholds[best]),
    }


def roc_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 500) -> list[dict[str, float]]:
    """The image ROC curve as ``[{"fpr", "tpr", "threshold"}, ...]`` (fpr ascending) for DVC plots,
    evenly downsampled to at most `max_points` points keeping the first (0, 0) and the last (1, 1).

    The first point's threshold, +inf in scikit-learn, is replaced by the next float above the highest
    score (it predicts nothing defective either way) so the list is valid strict JSON. With only one class
    the curve is undefined and an empty list is returned.
    """
    y, s = _check_image_inputs(labels, scores)
    if y.all() or not y.any():
        return []
    fpr, tpr, thr = roc_curve(y, s)
    thr = thr.copy()
    thr[~np.isfinite(thr)] = _above_max(s)
    keep = _downsample_indices(fpr.size, max_points)
    return [{"fpr": float(fpr[i]), "tpr": float(tpr[i]), "threshold": float(thr[i])} for i in keep]


def pr_points(labels: np.ndarray, scores: np.ndarray, max_points: int = 500) -> list[dict[str, float]]:
    """The image precision–recall curve as ``[{"recall", "precision", "threshold"}, ...]`` (recall
    ascending, i.e. threshold descending) for DVC plots, downsampled to at most `max_points` keeping both
    ends.

    scikit-learn's closing point (recall 0, precision 1) has no threshold; it gets the next float above the
    highest score, the threshold at which nothing is predicted defective. With only one class an empty list
    is returned, as for :func:`roc_points`.
    """
    y, s = _check_image_inputs(labels, scores)
    if y.all() or not y.any():
        return []
    precision, recall, thr = precision_recall_curve(y, s)
    thr = np.append(thr, _above_max(s))
    precision, recall, thr = precision[::-1], recall[::-1], thr[::-1]
    keep = _downsample_indices(recall.size, max_points)
    return [
        {"recall": float(recall[i]), "precision": float(precision[i]), "threshold": float(thr[i])}
        for i in keep
    ]


# --------------------------------------------------------------------------------------------------------
# pixel level


@dataclass
class _Pixels:
    """All test pixels as one sorted array of packed keys, plus the ground-truth component sizes.

    A key is ``(order-preserving bits of the float32 score) << 32 | component id`` (id 0 = normal pixel,
    1..n_components = defect pixels). Sorting these values is several times faster than an argsort of the
    scores followed by gathers, and it is the only array as long as the data set (8 bytes a pixel).
    """

    keys: np.ndarray  # uint64 (M,), sorted ascending
    component_size: np.ndarray  # int64 (n_components + 1,), entry 0 = number of normal pixels
    n_components: int

    @property
    def n_defect(self) -> int:
        return int(self.component_size[1:].sum())

    @property
    def n_normal(self) -> int:
        return int(self.component_size[0])


def _as_image_list(arr: object, name: str) -> list[np.ndarray] | np.ndarray:
    """Either an (N, H, W) array (kept as is: images are read one at a time, never copied as a whole) or a
    sequence of 2-D arrays (images may differ in size)."""
    if isinstance(arr, np.ndarray):
        if arr.ndim != 3:
            raise InputError(f"{name} must be (N, H, W) or a list of H×W arrays, got shape {arr.shape}")
        return arr
    if not isinstance(arr, Sequence) or isinstance(arr, (str, bytes)):
        raise InputError(f"{name} must be an (N, H, W) array or a list of H×W arrays, got {type(arr)}")
    out = [np.asarray(a) for a in arr]
    for i, a in enumerate(out):
        if a.ndim != 2:
            raise InputError(f"{name}[{i}] must be 2-D (H×W), got shape {a.shape}")
    return out


def _mask_2d(m: np.ndarray, name: str) -> np.ndarray:
    if m.dtype == bool:
        return m
    if not (np.issubdtype(m.dtype, np.integer) or np.issubdtype(m.dtype, np.floating)):
        raise InputError(f"{name} must be a bool (or 0/1) mask, got dtype {m.dtype}")
    if not np.isin(m, (0, 1)).all():
        raise InputError(f"{name} must hold only 0/1 (or bool); convert e.g. 0/255 PNG masks first")
    return m.astype(bool)


_SIGN32 = np.uint32(0x80000000)


def _sortable_bits(x: np.ndarray) -> np.ndarray:
    """Map finite float32 values to uint32 with the same order (equal floats → equal integers): flip all
    bits of negatives, set the sign bit of positives. −0.0 is first made +0.0 so the two zeros tie."""
    bits = (x + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0 in IEEE arithmetic
    return np.where(bits & _SIGN32, ~bits, bits | _SIGN32)


def _prepare_pixels(masks: object, maps: object) -> _Pixels:
    """Check every image, label its ground-truth components (scipy's default structure, i.e.
    4-connectivity, as in the MVTec AD evaluation; ids unique over all images) and build the sorted keys."""
    mask_list = _as_image_list(masks, "masks")
    map_list = _as_image_list(maps, "maps")
    n = len(mask_list)
    if len(map_list) != n:
        raise InputError(f"masks has {n} images but maps has {len(map_list)}")
    if n == 0:
        raise InputError("masks and maps are empty: nothing to evaluate")
    total = int(sum(int(np.prod(np.shape(m))) for m in map_list))

    keys = np.empty(total, dtype=np.uint64)
    sizes: list[np.ndarray] = [np.zeros(1, dtype=np.int64)]  # entry 0 accumulates normal pixels
    offset = 0
    n_comp = 0
    for i in range(n):
        mk = np.asarray(mask_list[i])
        mp = np.asarray(map_list[i])
        if mk.shape != mp.shape:
            raise InputError(f"masks[{i}] has shape {mk.shape} but maps[{i}] has shape {mp.shape}")
        if not (np.issubdtype(mp.dtype, np.integer) or np.issubdtype(mp.dtype, np.floating)):
            raise InputError(f"maps[{i}] must be numeric, got dtype {mp.dtype}")
        mk = _mask_2d(mk, f"masks[{i}]")
        with np.errstate(over="ignore"):  # an overflow to inf is reported just below
            mp32 = np.ascontiguousarray(mp, dtype=np.float32)
        # Checked after the cast: a float64 value beyond float32's range would become inf here.
        if not np.isfinite(mp32).all():
            raise InputError(
                f"maps[{i}] contains NaN/Inf (or values beyond float32's range, ±3.4e38): "
                "anomaly maps must be finite"
            )
        lab, k = ndimage.label(mk)
        counts = np.bincount(lab.ravel(), minlength=k + 1)
        sizes[0][0] += counts[0]
        sizes.append(counts[1:])
        lab[mk] += n_comp
        n_comp += int(k)
        sl = slice(offset, offset + mp32.size)
        np.left_shift(_sortable_bits(mp32).ravel().astype(np.uint64), np.uint64(32), out=keys[sl])
        keys[sl] |= lab.ravel().astype(np.uint64)
        offset += mp32.size

    keys.sort()  # in place: no second array of this size
    return _Pixels(keys, np.concatenate(sizes).astype(np.int64), n_comp)


@dataclass
class _SweepResult:
    auroc: float
    ap: float
    aupro: float
    fpr: np.ndarray | None  # PRO curve up to max_fpr (with the interpolated end point), if asked for
    pro: np.ndarray | None


def _sweep(px: _Pixels, max_fpr: float, keep_curve: bool = False) -> _SweepResult:
    """Walk all pixels once in descending score order and integrate ROC, PR and PRO curves exactly.

    Each pixel carries: 1 to the true-positive count if defective, else 1 to the false-positive count, and
    1 / (|C| · n_components) to PRO if it belongs to component C, so the cumulative sums at the last index of
    each group of tied scores are TP, FP and PRO at that threshold. The sums are continued across chunks,
    so memory is the sorted keys plus per-chunk temporaries, whatever the number of pixels.

    - AUROC: trapezoid over (FP/n_normal, TP/n_defect) from (0, 0), in exact integer arithmetic
      (what scikit-learn's roc_auc_score computes);
    - AP: Σ (R_k − R_{k−1}) · P_k over distinct thresholds (scikit-learn's average_precision_score);
    - AUPRO: trapezoid of PRO over FPR from (0, 0) to FPR = max_fpr, the point at max_fpr linearly
      interpolated between its neighbours, divided by max_fpr.
    """
    n_def, n_nor = px.n_defect, px.n_normal
    if n_def == 0 or n_nor == 0:
        empty = np.zeros(0)
        return _SweepResult(NAN, NAN, NAN, empty if keep_curve else None, empty if keep_curve else None)

    m = px.keys.size
    weight = np.zeros(px.n_components + 1, dtype=np.float64)
    weight[1:] = 1.0 / (px.component_size[1:] * px.n_components)
    # Walked from the end = descending score; the order inside a tie group does not matter, only its
    # last index is used.
    desc = px.keys[::-1]
    low32 = np.uint64(0xFFFFFFFF)
    shift = np.uint64(32)

    tp_run = fp_run = 0  # cumulative counts up to the end of the previous chunk
    pro_run = 0.0
    tp_prev = fp_prev = 0  # last curve point (end of a tie group) seen so far, starting at the origin
    pro_prev = 0.0
    roc_twice = 0  # Σ ΔFP · (TP_k + TP_{k−1}) = 2 · AUROC · n_normal · n_defect
    ap_sum = 0.0  # Σ ΔTP · precision
    pro_area = 0.0
    pro_done = False
    fpr_parts: list[np.ndarray] = [np.zeros(1)]
    pro_parts: list[np.ndarray] = [np.zeros(1)]

    for a in range(0, m, _CHUNK):
        b = min(a + _CHUNK, m)
        k_ab = desc[a:b]
        s = k_ab >> shift  # the score's sortable bits: equal exactly when the scores are equal
        comp = (k_ab & low32).astype(np.intp)
        is_def = comp > 0
        tp = tp_run + np.cumsum(is_def, dtype=np.int64)
        fp = (a + np.arange(1, b - a + 1, dtype=np.int64)) - tp
        pro = pro_run + np.cumsum(weight[comp])
        tp_run, fp_run, pro_run = int(tp[-1]), int(fp[-1]), float(pro[-1])

        is_end = np.empty(b - a, dtype=bool)
        np.not_equal(s[:-1], s[1:], out=is_end[:-1])
        is_end[-1] = True if b == m else bool(s[-1] != desc[b] >> shift)
        ends = np.flatnonzero(is_end)
        if ends.size == 0:
            continue
        tp_e = np.concatenate(([tp_prev], tp[ends]))
        fp_e = np.concatenate(([fp_prev], fp[ends]))
        pro_e = np.concatenate(([pro_prev], pro[ends]))
        tp_prev, fp_prev, pro_prev = int(tp_e[-1]), int(fp_e[-1]), float(pro_e[-1])

        roc_twice += int(np.sum(np.diff(fp_e) * (tp_e[1:] + tp_e[:-1])))
        ap_sum += float(np.sum(np.diff(tp_e) * (tp_e[1:] / (tp_e[1:] + fp_e[1:]))))

        if not pro_done:
            x = fp_e / n_nor
            k = int(np.searchsorted(x, max_fpr, side="right"))  # x[:k] ≤ max_fpr < x[k:]
            xs, ys = x[:k], pro_e[:k]
            if k < x.size:  # this chunk crosses max_fpr: close the curve at exactly max_fpr
                x0, y0, x1, y1 = x[k - 1], pro_e[k - 1], x[k], pro_e[k]
                if x0 < max_fpr:  # (else the curve already has its point at max_fpr)
                    y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
                    xs, ys = np.append(xs, max_fpr), np.append(ys, y_end)
                pro_done = True
            pro_area += float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]))) / 2.0
            if keep_curve:
                fpr_parts.append(xs[1:])
                pro_parts.append(ys[1:])

    assert tp_run == n_def and fp_run == n_nor, "sweep lost pixels"
    return _SweepResult(
        auroc=roc_twice / (2.0 * n_nor * n_def),
        ap=ap_sum / n_def,
        aupro=pro_area / max_fpr,
        fpr=np.concatenate(fpr_parts) if keep_curve else None,
        pro=np.concatenate(pro_parts) if keep_curve else None,
    )


def _check_max_fpr(max_fpr: float) -> float:
    ok = isinstance(max_fpr, numbers.Real) and not isinstance(max_fpr, bool)
    if not (ok and 0.0 < float(max_fpr) <= 1.0):
        raise ParamError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
    return float(max_fpr)


def pixel_metrics(
    masks: Sequence[np.ndarray] | np.ndarray,
    maps: Sequence[np.ndarray] | np.ndarray,
    max_fpr: float = 0.3,
) -> dict[str, float]:
    """Pixel-level metrics of anomaly maps against ground-truth masks, over all pixels of all images.

    `masks`: bool (or 0/1) H×W arrays, as a list or an (N, H, W) array; images without defects simply
    contribute normal pixels. `maps`: float H×W maps of the same shapes (higher = more defective). Maps
    are evaluated as float32, which is also what the pipeline stores; scores that differ only beyond
    float32 precision count as ties. Working memory is 8 bytes a pixel (≈1.1 GB for 142 M pixels) plus
    per-image and per-chunk temporaries; the maps are never copied as a whole.

    Returns plain floats:

    - ``auroc``, ``ap``: pixel AUROC and average precision, equal to scikit-learn's on the flattened
      arrays (computed from one shared sort to keep memory down on ~10⁸ pixels);
    - ``aupro``: the area under the per-region-overlap curve from FPR 0 to `max_fpr`, divided by
      `max_fpr` (MVTec AD, Bergmann et al.), so a perfect map scores 1.0. PRO(t) is the mean over all
      ground-truth connected components (4-connectivity, per image) of the fraction of the component's
      pixels with map ≥ t: unlike pixel AUROC, a small defect counts as much as a large one. FPR(t) is the
      fraction of normal pixels with map ≥ t. The curve is exact (every distinct threshold), starts at
      (0, 0), and its point at `max_fpr` is linearly interpolated.

    All three are NaN (no exception) when there are no defect pixels, or no normal pixels, at all.
    Raises InputError for NaN/Inf maps, non-0/1 masks or mismatched shapes; ParamError for a max_fpr
    outside (0, 1].
    """
    max_fpr = _check_max_fpr(max_fpr)
    res = _sweep(_prepare_pixels(masks, maps), max_fpr)
    return {"auroc": res.auroc, "ap": res.ap, "aupro": res.aupro}


def pro_curve(
    masks: Sequence[np.ndarray] | np.ndarray,
    maps: Sequence[np.ndarray] | np.ndarray,
    max_fpr: float = 0.3,
    max_points: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The PRO curve behind ``pixel_metrics(...)["aupro"]``, for plotting: ``(fpr, pro)`` float64 arrays
    from (0, 0) up to and including the interpolated point at ``fpr == max_fpr``, FPR non-decreasing.

    Unnormalised: ``np.trapezoid(pro, fpr) / max_fpr`` is the AUPRO (exactly, when not downsampled). The
    exact curve has a point per distinct score up to `max_fpr`, which can be millions on a real data set;
    `max_points` evenly downsamples it, keeping both ends. Empty arrays when AUPRO is undefined.
    """
    max_fpr = _check_max_fpr(max_fpr)
    res = _sweep(_prepare_pixels(masks, maps), max_fpr, keep_curve=True)
    assert res.fpr is not None and res.pro is not None
    fpr, pro = res.fpr, res.pro
    if max_points is not None and fpr.size:
        keep = _downsample_indices(fpr.size, max_points)
        fpr, pro = fpr[keep], pro[keep]
    return fpr, pro


def _from_sortable_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_sortable_bits`: the float32 scores back from their order-preserving bits."""
    bits = bits.astype(np.uint32)
    raw = np.where(bits & _SIGN32, bits & ~_SIGN32, ~bits).astype(np.uint32)
    return raw.view(np.float32)


def _roc_walk(px: _Pixels, max_points: int) -> list[dict[str, float]]:
    """The pixel ROC curve from the sorted keys, one chunk at a time, as ``[{"fpr", "tpr", "threshold"}]``.

    Points are taken at the last index of each tie group (as scikit-learn's ``roc_curve`` with
    ``drop_intermediate=False``). Each chunk keeps at most `max_points` of its points and the result is
    thinned again to `max_points`, so memory stays bounded on 10⁸ pixels; both ends are always kept."""
    n_def, n_nor = px.n_defect, px.n_normal
    if n_def == 0 or n_nor == 0:
        return []
    m = px.keys.size
    desc = px.keys[::-1]
    low32, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    fp_parts: list[np.ndarray] = [np.zeros(1, np.int64)]
    tp_parts: list[np.ndarray] = [np.zeros(1, np.int64)]
    bits_parts: list[np.ndarray] = []
    tp_run = 0
    for a in range(0, m, _CHUNK):
        b = min(a + _CHUNK, m)
        k_ab = desc[a:b]
        s = k_ab >> shift
        tp = tp_run + np.cumsum((k_ab & low32) > 0, dtype=np.int64)
        fp = (a + np.arange(1, b - a + 1, dtype=np.int64)) - tp
        tp_run = int(tp[-1])
        is_end = np.empty(b - a, dtype=bool)
        np.not_equal(s[:-1], s[1:], out=is_end[:-1])
        is_end[-1] = True if b == m else bool(s[-1] != desc[b] >> shift)
        ends = np.flatnonzero(is_end)
        if ends.size == 0:
            continue
        ends = ends[_downsample_indices(ends.size, max_points)]
        fp_parts.append(fp[ends])
        tp_parts.append(tp[ends])
        bits_parts.append(s[ends])
    fp_all, tp_all = np.concatenate(fp_parts), np.concatenate(tp_parts)
    thr32 = _from_sortable_bits(np.concatenate(bits_parts))
    top = np.nextafter(thr32[0], np.float32(np.inf))  # (0, 0): above every float32 map value
    thr = np.concatenate(([top], thr32)).astype(np.float64)
    keep = _downsample_indices(fp_all.size, max_points)
    return [
        {"fpr": float(fp_all[i] / n_nor), "tpr": float(tp_all[i] / n_def), "threshold": float(thr[i])}
        for i in keep
    ]


def pixel_roc_points(
    masks: Sequence[np.ndarray] | np.ndarray,
    maps: Sequence[np.ndarray] | np.ndarray,
    max_points: int = 500,
) -> list[dict[str, float]]:
    """The pixel ROC curve as ``[{"fpr", "tpr", "threshold"}, ...]`` (fpr ascending) for DVC plots, at
    most `max_points` points from (0, 0) to (1, 1). Inputs as :func:`pixel_metrics`; thresholds are the
    float32 map values. Empty list when there are no defect (or no normal) pixels."""
    if max_points < 2:
        raise ParamError(f"max_points must be at least 2 (first and last point), got {max_points}")
    return _roc_walk(_prepare_pixels(masks, maps), max_points)


def pixel_report(
    masks: Sequence[np.ndarray] | np.ndarray,
    maps: Sequence[np.ndarray] | np.ndarray,
    max_fpr: float = 0.3,
    max_points: int = 500,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """``(pixel_metrics(...), pixel_roc_points(...))`` from a single sort of the pixels: on a KSDD2-sized
    test set the sort is the expensive part, and evaluate needs both for each method."""
    max_fpr = _check_max_fpr(max_fpr)
    if max_points < 2:
        raise ParamError(f"max_points must be at least 2 (first and last point), got {max_points}")
    px = _prepare_pixels(masks, maps)
    res = _sweep(px, max_fpr)
    return {"auroc": res.auroc, "ap": res.ap, "aupro": res.aupro}, _roc_walk(px, max_points)
