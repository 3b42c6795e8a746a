"""Pixel-level metrics: AUROC, AP and AUPRO, with the pixel ROC and PRO curves for DVC plots, all from one
descending sort of every test pixel walked once (docs/design.md, "Evaluation").

Written here rather than with scikit-learn: a KSDD2 test set is about 1004 × 632 × 224 ≈ 142 M pixels, and
scikit-learn would sort them once per metric and keep several float64 arrays of that length alive at once.
One sort of packed (score, component) keys, walked in chunks, gives the ROC, the precision-recall sum and
the per-region-overlap curve at every distinct threshold exactly. Conventions as `image_metrics`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from exdd_core.evaluation.image_metrics import NAN, downsample_indices
from exdd_core.runtime.errors import InputError, ParamError

# Pixels processed per step of the walk over the sorted order; bounds the temporaries (~40 bytes a pixel)
# independently of the data set's size. Module-level so tests can shrink it to exercise chunk boundaries.
_CHUNK = 1 << 22
_SIGN32 = np.uint32(0x80000000)
_LOW32 = np.uint64(0xFFFFFFFF)
_SHIFT = np.uint64(32)


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


def _sortable_bits(x: np.ndarray) -> np.ndarray:
    """Map finite float32 values to uint32 with the same order (equal floats → equal integers): flip all
    bits of negatives, set the sign bit of positives. −0.0 is first made +0.0 so the two zeros tie."""
    bits = (x + np.float32(0.0)).view(np.uint32)  # -0.0 + 0.0 == +0.0 in IEEE arithmetic
    return np.where(bits & _SIGN32, ~bits, bits | _SIGN32)


def _from_sortable_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_sortable_bits`: the float32 scores back from their order-preserving bits."""
    bits = bits.astype(np.uint32)
    raw = np.where(bits & _SIGN32, bits & ~_SIGN32, ~bits).astype(np.uint32)
    return raw.view(np.float32)


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
        np.left_shift(_sortable_bits(mp32).ravel().astype(np.uint64), _SHIFT, out=keys[sl])
        keys[sl] |= lab.ravel().astype(np.uint64)
        offset += mp32.size

    keys.sort()  # in place: no second array of this size
    return _Pixels(keys, np.concatenate(sizes).astype(np.int64), n_comp)


@dataclass
class _Points:
    """Curve points of one chunk: cumulative TP, FP, PRO and the score bits at the last index of each group
    of tied scores (a threshold of the curve)."""

    tp: np.ndarray
    fp: np.ndarray
    pro: np.ndarray
    bits: np.ndarray


def _walk(px: _Pixels) -> Iterator[_Points]:
    """The one walk over all pixels in descending score order, chunk by chunk.

    Each pixel carries 1 to the true-positive count if defective, else 1 to the false-positive count, and
    1 / (|C| · n_components) to PRO if it belongs to component C; the cumulative sums at the last index of
    each tie group are TP, FP and PRO at that threshold. Sums are continued across chunks, so memory is the
    sorted keys plus per-chunk temporaries, whatever the number of pixels."""
    m = px.keys.size
    weight = np.zeros(px.n_components + 1, dtype=np.float64)
    weight[1:] = 1.0 / (px.component_size[1:] * px.n_components)
    desc = px.keys[::-1]  # the order inside a tie group does not matter, only its last index is used
    tp_run, pro_run = 0, 0.0
    for a in range(0, m, _CHUNK):
        b = min(a + _CHUNK, m)
        k_ab = desc[a:b]
        s = k_ab >> _SHIFT  # the score's sortable bits: equal exactly when the scores are equal
        comp = (k_ab & _LOW32).astype(np.intp)
        tp = tp_run + np.cumsum(comp > 0, dtype=np.int64)
        fp = (a + np.arange(1, b - a + 1, dtype=np.int64)) - tp
        pro = pro_run + np.cumsum(weight[comp])
        tp_run, pro_run = int(tp[-1]), float(pro[-1])
        is_end = np.empty(b - a, dtype=bool)
        np.not_equal(s[:-1], s[1:], out=is_end[:-1])
        is_end[-1] = True if b == m else bool(s[-1] != desc[b] >> _SHIFT)
        ends = np.flatnonzero(is_end)
        if ends.size:
            yield _Points(tp[ends], fp[ends], pro[ends], s[ends])


@dataclass
class PixelReport:
    """Pixel AUROC, AP and AUPRO (NaN when the test set has no defect or no normal pixels), the pixel ROC
    curve as ``[{"fpr", "tpr", "threshold"}]`` and the PRO curve as ``[{"fpr", "pro"}]`` up to max_fpr,
    each thinned to at most `max_points` points keeping both ends (empty when undefined)."""

    auroc: float
    ap: float
    aupro: float
    roc: list[dict[str, float]] = field(default_factory=list)
    pro: list[dict[str, float]] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        return {"auroc": self.auroc, "ap": self.ap, "aupro": self.aupro}


def _check_max_fpr(max_fpr: float) -> float:
    ok = isinstance(max_fpr, numbers.Real) and not isinstance(max_fpr, bool)
    if not (ok and 0.0 < float(max_fpr) <= 1.0):
        raise ParamError(f"max_fpr must be in (0, 1], got {max_fpr!r}")
    return float(max_fpr)


def pixel_report(
    masks: Sequence[np.ndarray] | np.ndarray,
    maps: Sequence[np.ndarray] | np.ndarray,
    max_fpr: float = 0.3,
    max_points: int = 500,
) -> PixelReport:
    """Pixel-level metrics and curves of anomaly maps against ground-truth masks, over all pixels.

    `masks`: bool (or 0/1) H×W arrays, as a list or an (N, H, W) array. `maps`: float H×W maps of the same
    shapes (higher = more defective), evaluated as float32. Working memory is 8 bytes a pixel plus
    per-image and per-chunk temporaries.

    - AUROC: trapezoid over (FP/n_normal, TP/n_defect) from (0, 0), in exact integer arithmetic (what
      scikit-learn's roc_auc_score computes on the flattened arrays);
    - AP: Σ (R_k − R_{k−1}) · P_k over distinct thresholds (scikit-learn's average_precision_score);
    - AUPRO: the area under the per-region-overlap curve from FPR 0 to `max_fpr`, divided by `max_fpr`
      (MVTec AD). PRO(t) is the mean over all ground-truth components (4-connectivity, per image) of the
      fraction of the component's pixels with map ≥ t; the curve's point at `max_fpr` is interpolated.
    """
    max_fpr = _check_max_fpr(max_fpr)
    if max_points < 2:
        raise ParamError(f"max_points must be at least 2 (first and last point), got {max_points}")
    px = _prepare_pixels(masks, maps)
    n_def, n_nor = px.n_defect, px.n_normal
    if n_def == 0 or n_nor == 0:
        return PixelReport(NAN, NAN, NAN)

    tp_prev = fp_prev = 0  # last curve point seen so far, starting at the origin
    pro_prev = 0.0
    roc_twice = 0  # Σ ΔFP · (TP_k + TP_{k−1}) = 2 · AUROC · n_normal · n_defect
    ap_sum = 0.0  # Σ ΔTP · precision
    pro_area = 0.0
    pro_done = False
    roc_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    pro_x: list[np.ndarray] = [np.zeros(1)]
    pro_y: list[np.ndarray] = [np.zeros(1)]
    for pt in _walk(px):
        tp_e = np.concatenate(([tp_prev], pt.tp))
        fp_e = np.concatenate(([fp_prev], pt.fp))
        pro_e = np.concatenate(([pro_prev], pt.pro))
        tp_prev, fp_prev, pro_prev = int(tp_e[-1]), int(fp_e[-1]), float(pro_e[-1])
        roc_twice += int(np.sum(np.diff(fp_e) * (tp_e[1:] + tp_e[:-1])))
        ap_sum += float(np.sum(np.diff(tp_e) * (tp_e[1:] / (tp_e[1:] + fp_e[1:]))))
        keep = downsample_indices(pt.tp.size, max_points)
        roc_parts.append((pt.fp[keep], pt.tp[keep], pt.bits[keep]))
        if not pro_done:
            xs, ys, pro_done = _pro_up_to(fp_e / n_nor, pro_e, max_fpr)
            pro_area += float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]))) / 2.0
            pro_x.append(xs[1:])
            pro_y.append(ys[1:])
    assert tp_prev == n_def and fp_prev == n_nor, "walk lost pixels"
    return PixelReport(
        auroc=roc_twice / (2.0 * n_nor * n_def),
        ap=ap_sum / n_def,
        aupro=pro_area / max_fpr,
        roc=_roc_points(roc_parts, n_def, n_nor, max_points),
        pro=_pro_points(np.concatenate(pro_x), np.concatenate(pro_y), max_points),
    )


def _pro_up_to(x: np.ndarray, pro: np.ndarray, max_fpr: float) -> tuple[np.ndarray, np.ndarray, bool]:
    """One chunk of the PRO curve (FPR x, PRO) up to max_fpr, closed at exactly max_fpr by linear
    interpolation when the chunk crosses it (then True: the curve is complete)."""
    k = int(np.searchsorted(x, max_fpr, side="right"))  # x[:k] ≤ max_fpr < x[k:]
    xs, ys = x[:k], pro[:k]
    if k == x.size:
        return xs, ys, False
    x0, y0, x1, y1 = x[k - 1], pro[k - 1], x[k], pro[k]
    if x0 < max_fpr:  # (else the curve already has its point at max_fpr)
        y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        xs, ys = np.append(xs, max_fpr), np.append(ys, y_end)
    return xs, ys, True


def _roc_points(
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_def: int, n_nor: int, max_points: int
) -> list[dict[str, float]]:
    """The ROC curve from (0, 0), as scikit-learn's ``roc_curve(drop_intermediate=False)`` thinned: each
    chunk kept at most `max_points` of its points and the whole is thinned again."""
    fp_all = np.concatenate([np.zeros(1, np.int64), *(p[0] for p in parts)])
    tp_all = np.concatenate([np.zeros(1, np.int64), *(p[1] for p in parts)])
    thr32 = _from_sortable_bits(np.concatenate([p[2] for p in parts]))
    top = np.nextafter(thr32[0], np.float32(np.inf))  # (0, 0): above every float32 map value
    thr = np.concatenate(([top], thr32)).astype(np.float64)
    keep = downsample_indices(fp_all.size, max_points)
    return [
        {"fpr": float(fp_all[i] / n_nor), "tpr": float(tp_all[i] / n_def), "threshold": float(thr[i])}
        for i in keep
    ]


def _pro_points(fpr: np.ndarray, pro: np.ndarray, max_points: int) -> list[dict[str, float]]:
    """The PRO curve behind AUPRO from (0, 0) to its interpolated point at max_fpr, unnormalised:
    ``trapezoid(pro, fpr) / max_fpr`` is the AUPRO (exactly, when not thinned)."""
    keep = downsample_indices(fpr.size, max_points)
    return [{"fpr": float(fpr[i]), "pro": float(pro[i])} for i in keep]
