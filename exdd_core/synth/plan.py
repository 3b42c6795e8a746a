"""Which normal image, which real defect mask and which prompt each synthetic sample uses, and how its mask is
jittered. Sample i is drawn from (seed, i) alone, so `synth.count=150` keeps the first 100 samples of
`synth.count=100` unchanged (DVC reruns stay comparable) and the prompts split evenly over any count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from exdd_core.runtime.errors import ParamError

PLAN_STREAM = 7919  # mixed into the seed so plans never share a random stream with other uses of `seed`
MAX_SHIFT = 0.10  # fraction of the image size
SCALE_RANGE = (0.8, 1.2)


@dataclass(frozen=True)
class SampleRecipe:
    """Everything needed to reproduce synthetic sample `index`; shift is (dy, dx) as fractions of (H, W)."""

    index: int
    normal_id: str
    mask_id: str
    prompt_index: int
    flip_h: bool
    flip_v: bool
    shift: tuple[float, float]
    scale: float
    sample_seed: int


def plan_sample(
    seed: int, i: int, normal_ids: list[str], mask_ids: list[str], n_prompts: int, jitter: bool
) -> SampleRecipe:
    """The recipe of sample `i`, from `default_rng([seed, 7919, i])` only; prompt_index = i % n_prompts.

    The same number of values is drawn whether or not `jitter` is on, so switching jitter changes only the
    jitter, not which image, mask or diffusion seed a sample gets."""
    if not normal_ids:
        raise ParamError("synthesis needs normal training images to paint defects into, but none were given")
    if not mask_ids:
        raise ParamError(
            "synthesis needs real defect masks (defective training images with ground truth), but none were given;"
            " set synth.masks: generated (or auto) to paint into generated masks, or synth.count: 0"
        )
    if n_prompts < 1:
        raise ParamError(f"synthesis needs at least one prompt, got {n_prompts}")
    if seed < 0 or i < 0:
        raise ParamError(f"seed and sample index must be >= 0, got seed={seed}, i={i}")
    rng = np.random.default_rng([int(seed), PLAN_STREAM, int(i)])
    normal_id = normal_ids[int(rng.integers(len(normal_ids)))]
    mask_id = mask_ids[int(rng.integers(len(mask_ids)))]
    flips = rng.random(2) < 0.5
    shift = rng.uniform(-MAX_SHIFT, MAX_SHIFT, 2)
    scale = float(rng.uniform(*SCALE_RANGE))
    sample_seed = int(rng.integers(2**31 - 1))
    return SampleRecipe(
        index=int(i),
        normal_id=normal_id,
        mask_id=mask_id,
        prompt_index=int(i) % n_prompts,
        flip_h=bool(flips[0]) and jitter,
        flip_v=bool(flips[1]) and jitter,
        shift=(float(shift[0]), float(shift[1])) if jitter else (0.0, 0.0),
        scale=scale if jitter else 1.0,
        sample_seed=sample_seed,
    )


def _bbox_centre(mask: np.ndarray) -> tuple[float, float]:
    """Centre (y, x) of the mask's bounding box."""
    ys, xs = np.nonzero(mask)
    return (ys.min() + ys.max()) / 2.0, (xs.min() + xs.max()) / 2.0


def apply_jitter(mask: np.ndarray, recipe: SampleRecipe) -> np.ndarray:
    """Flip, scale about the mask's centre and shift a bool mask (same shape out); if the result is empty (the
    defect was pushed off the image) the unjittered mask is returned, since a sample needs a defect."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return mask.copy()
    h, w = mask.shape
    out = mask
    if recipe.flip_h:
        out = out[:, ::-1]
    if recipe.flip_v:
        out = out[::-1, :]
    if recipe.scale != 1.0 or recipe.shift != (0.0, 0.0):
        cy, cx = _bbox_centre(out)
        dy, dx = recipe.shift[0] * h, recipe.shift[1] * w
        # Output pixel o comes from input c + (o - c - shift) / scale.
        s = 1.0 / recipe.scale
        offset = (cy - (cy + dy) * s, cx - (cx + dx) * s)
        out = ndimage.affine_transform(out.astype(np.uint8), [s, s], offset=offset, order=0, cval=0) > 0
    out = np.ascontiguousarray(out)
    return out if out.any() else mask.copy()
