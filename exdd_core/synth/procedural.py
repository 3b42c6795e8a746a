"""The CPU synthesis backend (demo profile): paints a defect inside a real defect's mask without a diffusion
model, following the two prompts of the paper — "copper metal scratches" (coppery, bright streaks along the
mask) and "white marks on the wall" (whitish spots and marks). It never touches a pixel outside the mask, and
it always fills the mask's interior, so the diff mask is non-empty and shaped like the real defect."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from exdd_core.data.defects import Defect, combine, scratch, spot
from exdd_core.runtime.errors import InputError

PROMPT_STYLES = ("copper_scratches", "white_marks")  # prompt i uses style i % 2
COPPER = np.array([205.0, 122.0, 72.0])
COPPER_GAIN = np.array([1.0, 0.62, 0.38])  # a bright delta tinted copper


def _check(image: np.ndarray, mask: np.ndarray) -> None:
    """uint8 (H, W, 3) image and a non-empty bool (H, W) mask of the same size, or InputError."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"paint_defect needs a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if mask.shape != image.shape[:2]:
        raise InputError(f"paint_defect: mask is {mask.shape}, image is {image.shape[:2]}")
    if not mask.any():
        raise InputError("paint_defect: the defect mask is empty, there is nowhere to paint")


def _fill_alpha(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Opacity in 0..1 that follows the mask's shape: rising over ~3 px from its edge, mottled inside."""
    inside = ndimage.distance_transform_edt(mask)
    ramp = max(1.0, min(3.0, float(inside.max()) / 2))
    alpha = np.clip(inside / ramp, 0.0, 1.0)
    mottle = ndimage.gaussian_filter(rng.normal(0.0, 1.0, mask.shape), sigma=2.0)
    mottle = 0.7 + 0.3 * np.clip(mottle / (np.abs(mottle).max() or 1.0) + 0.5, 0.0, 1.0)
    return alpha * mottle * mask


def _principal_axis(mask: np.ndarray) -> tuple[float, float]:
    """(angle, length) of the mask's long axis: scratches are drawn along it, as long as the mask."""
    ys, xs = np.nonzero(mask)
    if len(ys) < 2:
        return 0.0, 4.0
    cov = np.cov(np.stack([ys, xs]).astype(np.float64))
    vals, vecs = np.linalg.eigh(cov)
    vy, vx = vecs[:, -1]
    return float(np.arctan2(vy, vx)), float(max(4.0, np.sqrt(12.0 * max(vals[-1], 0.0))))


def _centres(rng: np.random.Generator, mask: np.ndarray, n: int) -> list[tuple[float, float]]:
    """`n` random pixel centres inside the mask."""
    ys, xs = np.nonzero(mask)
    pick = rng.integers(len(ys), size=n)
    return [(float(ys[j]), float(xs[j])) for j in pick]


def _clip(defect: Defect, mask: np.ndarray) -> Defect:
    """A defect restricted to the mask."""
    delta = np.where(mask, defect.delta, 0.0).astype(np.float32)
    return Defect(delta, defect.mask & mask)


def _scratches(rng: np.random.Generator, mask: np.ndarray) -> Defect:
    """3–8 bright scratches along the mask's long axis, centred inside it."""
    angle, length = _principal_axis(mask)
    parts = [
        scratch(
            rng,
            mask.shape,
            center=c,
            length=length * float(rng.uniform(0.5, 1.1)),
            width=float(rng.uniform(1.0, 3.0)),
            contrast=float(rng.uniform(40, 90)),
            angle=angle + float(rng.normal(0.0, 0.15)),
            bright=True,
        )
        for c in _centres(rng, mask, int(rng.integers(3, 9)))
    ]
    return _clip(combine(parts, mask.shape), mask)


def _marks(rng: np.random.Generator, mask: np.ndarray) -> Defect:
    """2–6 whitish spots inside the mask, sized to it."""
    radius_max = max(2.0, float(ndimage.distance_transform_edt(mask).max()) * 1.5)
    parts = [
        spot(
            rng,
            mask.shape,
            center=c,
            radius=float(rng.uniform(1.5, radius_max)),
            contrast=float(rng.uniform(40, 90)),
            bright=True,
        )
        for c in _centres(rng, mask, int(rng.integers(2, 7)))
    ]
    return _clip(combine(parts, mask.shape), mask)


def paint_defect(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, prompt_index: int
) -> np.ndarray:
    """`image` with a defect painted inside `mask` (bool (H, W)); pixels outside the mask are returned as they
    were. Prompt 0 → copper scratches, 1 → white marks (further prompts cycle through the two)."""
    mask = np.asarray(mask, dtype=bool)
    _check(image, mask)
    style = PROMPT_STYLES[int(prompt_index) % len(PROMPT_STYLES)]
    alpha = _fill_alpha(mask, rng)[:, :, None]
    base = image.astype(np.float64)
    if style == "copper_scratches":
        colour = COPPER * float(rng.uniform(0.85, 1.1))
        alpha = alpha * float(rng.uniform(0.45, 0.8))
        streaks, gain = _scratches(rng, mask), COPPER_GAIN
    else:
        colour = np.full(3, float(rng.uniform(225, 250)))
        alpha = alpha * float(rng.uniform(0.5, 0.85))
        streaks, gain = _marks(rng, mask), np.ones(3)
    painted = base * (1.0 - alpha) + colour * alpha + streaks.delta[:, :, None] * gain
    painted = np.clip(np.rint(painted), 0, 255).astype(np.uint8)
    return np.where(mask[:, :, None], painted, image)
