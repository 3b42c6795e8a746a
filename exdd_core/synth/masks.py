"""Inpainting masks for data sets without real defect masks (MVTec AD, folders of image-level labels): random
blobs, strokes and cracks, so `synth.count > 0` works on any data set (design.md, "Synthetic defects").

A generated mask stands where a real defect mask would: the sample's recipe names it `generated:<kind>`, and
the mask is drawn from the sample's own seed, so sample i still depends on (seed, i) alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from exdd_core.data.defects import scratch, smudge

GENERATED_PREFIX = "generated:"
KINDS: tuple[str, ...] = ("blob", "stroke", "crack")
GENERATED_IDS: tuple[str, ...] = tuple(f"{GENERATED_PREFIX}{k}" for k in KINDS)
# Defect sizes are drawn for a 632 x 224 image (KSDD2) and scale with sqrt(area), as the demo generator's.
REFERENCE_AREA = 632 * 224


def is_generated(mask_id: str) -> bool:
    return mask_id.startswith(GENERATED_PREFIX)


def _crack(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """A thin (1-2 px), jagged, branching crack: a random walk with a slowly turning heading, 0-2 branches."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    starts = [(rng.uniform(0.15 * h, 0.85 * h), rng.uniform(0.15 * w, 0.85 * w), rng.uniform(0, 2 * np.pi))]
    steps = int(rng.uniform(40, 160) * scale)
    for branch in range(1 + int(rng.integers(0, 3))):
        y, x, heading = starts[branch] if branch < len(starts) else starts[-1]
        n = steps if branch == 0 else steps // 2
        for _ in range(max(n, 4)):
            heading += rng.normal(0.0, 0.35)
            y, x = y + np.sin(heading), x + np.cos(heading)
            if not (0 <= y < h and 0 <= x < w):
                break
            mask[int(y), int(x)] = True
            if branch == 0 and rng.random() < 0.02:
                starts.append((y, x, heading + rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.2)))
    if rng.random() < 0.5:  # some cracks are 2 px wide
        mask = ndimage.binary_dilation(mask, structure=np.ones((2, 2), bool))
    return mask


def generated_mask(mask_id: str, shape: tuple[int, int], sample_seed: int) -> np.ndarray:
    """Bool (H, W) mask of kind `generated:<blob|stroke|crack>`, from the sample's seed alone; never empty."""
    kind = mask_id.removeprefix(GENERATED_PREFIX)
    if kind not in KINDS:
        raise ValueError(f"unknown generated mask {mask_id!r}; expected one of {GENERATED_IDS}")
    rng = np.random.default_rng([int(sample_seed), 0x3A5C])
    scale = float(np.sqrt(shape[0] * shape[1] / REFERENCE_AREA))
    if kind == "blob":
        mask = smudge(rng, shape, size_scale=max(scale, 0.4), contrast=50.0).mask
    elif kind == "stroke":
        length = float(rng.uniform(20, 160)) * scale
        width = float(rng.uniform(3.0, 8.0)) * max(scale, 0.5)
        mask = scratch(rng, shape, length=max(length, 6.0), width=width, contrast=50.0).mask
    else:
        mask = _crack(rng, shape, max(scale, 0.3))
    if not mask.any():  # a defect pushed off the image: a small square in the middle instead
        h, w = shape
        mask[h // 2 - 2 : h // 2 + 2, w // 2 - 2 : w // 2 + 2] = True
    return mask
