"""Painting primitives for surface defects, shared by the demo data generator and the CPU synthesiser.

Each primitive returns a `Defect`: a float32 (H, W) signed intensity change in grey levels ("delta") and the
bool mask of exactly the pixels it changes. The delta is zeroed wherever it is below `FOOTPRINT_FRACTION` of its
peak (or below `MIN_VISIBLE` grey levels), so the mask *is* the footprint: ground truth never marks pixels that
look untouched, and no touched pixel is left out of the ground truth."""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple, TypedDict

import numpy as np
from scipy import ndimage
from typing_extensions import Unpack

FOOTPRINT_FRACTION = 0.1  # below this fraction of its peak, a defect's change is cut to zero
MIN_VISIBLE = 1.0  # grey levels; smaller changes could vanish when rounded to uint8

Shape = tuple[int, int]


class Defect(NamedTuple):
    """A signed intensity change (float32, grey levels, zero outside `mask`) and its exact footprint."""

    delta: np.ndarray
    mask: np.ndarray


def _footprint(delta: np.ndarray) -> Defect:
    """Cut the faint tail of a soft delta so that mask == footprint exactly."""
    delta = delta.astype(np.float32)
    peak = float(np.abs(delta).max(initial=0.0))
    mask = np.abs(delta) > max(FOOTPRINT_FRACTION * peak, MIN_VISIBLE)
    delta[~mask] = 0.0
    return Defect(delta, mask)


def _sign(rng: np.random.Generator, bright: bool | None) -> float:
    """+1 for a brighter defect, -1 for a darker one; random when not given."""
    if bright is None:
        bright = bool(rng.random() < 0.5)
    return 1.0 if bright else -1.0


def _random_point(rng: np.random.Generator, shape: Shape, margin: float = 0.05) -> tuple[float, float]:
    """A random (y, x) away from the border by `margin` of each side."""
    h, w = shape
    return float(rng.uniform(margin * h, (1 - margin) * h)), float(rng.uniform(margin * w, (1 - margin) * w))


def _curve_points(
    rng: np.random.Generator, center: tuple[float, float], length: float, angle: float, bend: float
) -> np.ndarray:
    """Points (y, x) of a gently curved, slightly wobbly polyline of about `length` px centred on `center`."""
    n = max(8, int(length / 4))
    t = np.linspace(-0.5, 0.5, n)
    along = t * length
    wobble = ndimage.gaussian_filter1d(rng.normal(0.0, 1.0, n), sigma=2.0, mode="nearest")
    across = bend * length * (t**2 - 1 / 12) + 0.6 * wobble
    dy, dx = np.sin(angle), np.cos(angle)
    ys = center[0] + along * dy + across * dx
    xs = center[1] + along * dx - across * dy
    return np.stack([ys, xs], axis=1)


def _distance_to_polyline(pts: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Euclidean distance of every (yy, xx) to the polyline through `pts`."""
    best = np.full(yy.shape, np.inf)
    for a, b in pairwise(pts):
        d = b - a
        seg2 = float(d @ d) or 1e-9
        u = np.clip(((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / seg2, 0.0, 1.0)
        dist = np.hypot(yy - (a[0] + u * d[0]), xx - (a[1] + u * d[1]))
        best = np.minimum(best, dist)
    return best


def scratch(
    rng: np.random.Generator,
    shape: Shape,
    *,
    center: tuple[float, float] | None = None,
    length: float | None = None,
    width: float | None = None,
    contrast: float | None = None,
    angle: float | None = None,
    bright: bool | None = None,
) -> Defect:
    """A thin (1–4 px) straight or curved scratch, brighter or darker than the surface, fading at its ends."""
    h, w = shape
    center = center if center is not None else _random_point(rng, shape)
    length = float(length if length is not None else rng.uniform(15, 0.6 * max(h, w)))
    width = float(width if width is not None else rng.uniform(1.0, 4.0))
    contrast = float(contrast if contrast is not None else rng.uniform(15, 90))
    angle = float(angle if angle is not None else rng.uniform(0, np.pi))
    bend = float(rng.uniform(-0.15, 0.15))
    pts = _curve_points(rng, center, length, angle, bend)
    sign = _sign(rng, bright)
    # Only the bounding box of the curve (plus its width) can be touched: compute distances there.
    pad = width + 2
    y0, x0 = (max(0, int(np.floor(pts[:, i].min() - pad))) for i in (0, 1))
    y1, x1 = (min(n, int(np.ceil(pts[:, i].max() + pad)) + 1) for i, n in ((0, h), (1, w)))
    delta = np.zeros(shape, dtype=np.float32)
    if y1 <= y0 or x1 <= x0:
        return _footprint(delta)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dist = _distance_to_polyline(pts, yy, xx)
    # Flat core of `width` px with a 1-px anti-aliased edge.
    profile = np.clip(width / 2 + 0.5 - dist, 0.0, 1.0)
    # Fade over the first and last fifth of the scratch, so its ends taper like a real one.
    end_dist = np.minimum(
        np.hypot(yy - pts[0, 0], xx - pts[0, 1]), np.hypot(yy - pts[-1, 0], xx - pts[-1, 1])
    )
    fade = np.clip(end_dist / max(0.2 * length, 1.0), 0.3, 1.0)
    delta[y0:y1, x0:x1] = sign * contrast * profile * fade
    return _footprint(delta)


class Blob(TypedDict, total=False):
    """Optional look of a blob-like defect (spot, smudge); what is not given is drawn at random."""

    center: tuple[float, float]
    radius: float
    contrast: float
    bright: bool


def _blob_frame(
    rng: np.random.Generator,
    shape: Shape,
    blob: Blob,
    radius_range: tuple[float, float],
    contrast_range: tuple[float, float],
    min_aspect: float,
    radius_scale: float = 1.0,
) -> tuple[float, float, float, np.ndarray, np.ndarray]:
    """Radius, contrast, aspect and the blob's rotated coordinates (u, v) over the image, (H, W) each.
    Draws, in this order: centre, radius, contrast, aspect, orientation (only what `blob` does not give)."""
    h, w = shape
    cy, cx = blob["center"] if "center" in blob else _random_point(rng, shape)
    radius = float(blob["radius"] if "radius" in blob else rng.uniform(*radius_range) * radius_scale)
    contrast = float(blob["contrast"] if "contrast" in blob else rng.uniform(*contrast_range))
    aspect = float(rng.uniform(min_aspect, 1.0))
    theta = float(rng.uniform(0, np.pi))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
    v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
    return radius, contrast, aspect, u, v


def spot(rng: np.random.Generator, shape: Shape, **blob: Unpack[Blob]) -> Defect:
    """An elliptical spot (pit, stain, speck) with soft edges, random aspect ratio and orientation."""
    radius, contrast, aspect, u, v = _blob_frame(rng, shape, blob, (2.5, 20), (15, 90), 0.4)
    r = np.hypot(u / radius, v / (radius * aspect))
    edge = float(rng.uniform(0.15, 0.5))  # softness: fraction of the radius over which it fades
    profile = np.clip((1.0 + edge / 2 - r) / edge, 0.0, 1.0)
    profile = profile * profile * (3 - 2 * profile)  # smoothstep
    return _footprint(_sign(rng, blob.get("bright")) * contrast * profile)


def smudge(rng: np.random.Generator, shape: Shape, size_scale: float = 1.0, **blob: Unpack[Blob]) -> Defect:
    """A larger, low-contrast, irregular blob (stain, oxidation, grease) built from smoothed noise;
    `size_scale` multiplies the random radius (for images smaller or larger than 632×224)."""
    radius, contrast, aspect, u, v = _blob_frame(rng, shape, blob, (12, 45), (8, 30), 0.5, size_scale)
    envelope = np.exp(-0.5 * (np.hypot(u / radius, v / (radius * aspect)) * 1.6) ** 4)
    texture = ndimage.gaussian_filter(rng.normal(0.0, 1.0, shape), sigma=max(radius / 4, 1.5))
    texture = texture / (np.abs(texture).max() or 1.0)
    profile = envelope * np.clip(0.6 + 0.8 * texture, 0.0, 1.0)
    return _footprint(_sign(rng, blob.get("bright")) * contrast * profile)


PRIMITIVES = {"scratch": scratch, "spot": spot, "smudge": smudge}


def random_defect(
    rng: np.random.Generator, shape: Shape, kind: str | None = None, **kwargs: object
) -> Defect:
    """One defect of a random (or the given) kind; keyword arguments go to the primitive."""
    if kind is None:
        kind = str(rng.choice(list(PRIMITIVES)))
    if kind not in PRIMITIVES:
        raise ValueError(f"unknown defect kind {kind!r}; expected one of {sorted(PRIMITIVES)}")
    return PRIMITIVES[kind](rng, shape, **kwargs)  # type: ignore[operator]


def combine(defects: list[Defect], shape: Shape) -> Defect:
    """Several defects as one: at each pixel the strongest delta wins (a sum could cancel opposite-signed
    overlaps and leave marked pixels unchanged), so the union of the masks is still the exact footprint."""
    delta = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    for d in defects:
        stronger = np.abs(d.delta) > np.abs(delta)
        delta[stronger] = d.delta[stronger]
        mask |= d.mask
    return Defect(delta, mask)
