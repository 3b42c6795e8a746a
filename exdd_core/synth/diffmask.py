"""Where a synthetic defect really is (design.md, "The method" 7): the inpainting mask is only where the model *may* paint,
so the defect bank uses the pixels that actually changed — the diff mask — and everything outside the (slightly
grown) inpainting mask is restored from the original so only the defect region differs."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from exdd_core.runtime.errors import InputError, ParamError


def _check_pair(original: np.ndarray, generated: np.ndarray, inpaint_mask: np.ndarray) -> None:
    """Same (H, W, 3) uint8 shape for both images and (H, W) for the mask, or InputError saying which."""
    if original.shape != generated.shape or original.ndim != 3 or original.shape[2] != 3:
        raise InputError(
            f"diff mask needs two (H, W, 3) images of one size, got {original.shape} and {generated.shape}"
        )
    if inpaint_mask.shape != original.shape[:2]:
        raise InputError(f"inpainting mask is {inpaint_mask.shape}, expected {original.shape[:2]}")


def dilate_mask(mask: np.ndarray, dilate: int) -> np.ndarray:
    """Grow a bool mask by `dilate` px (8-connected steps); 0 leaves it as is."""
    if dilate < 0:
        raise ParamError(f"synth.dilate must be >= 0, got {dilate}")
    mask = np.asarray(mask, dtype=bool)
    if dilate == 0 or not mask.any():
        return mask.copy()
    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=int(dilate))


def diff_mask(
    original: np.ndarray,
    generated: np.ndarray,
    inpaint_mask: np.ndarray,
    threshold: float,
    dilate: int = 3,
    min_area: int = 4,
) -> np.ndarray:
    """Bool (H, W): max-over-channels |generated − original| > threshold·255, inside the inpainting mask grown
    by `dilate` px, with 8-connected specks smaller than `min_area` px removed (they are noise, not defect)."""
    if not 0.0 <= threshold < 1.0:
        raise ParamError(f"synth.diff_threshold must be in [0, 1), got {threshold}")
    if min_area < 0:
        raise ParamError(f"synth.min_area must be >= 0, got {min_area}")
    _check_pair(original, generated, inpaint_mask)
    diff = np.abs(generated.astype(np.int16) - original.astype(np.int16)).max(axis=2)
    changed = (diff > threshold * 255.0) & dilate_mask(inpaint_mask, dilate)
    if min_area <= 1 or not changed.any():
        return changed
    labels, n = ndimage.label(changed, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]


def paste_outside(
    original: np.ndarray, generated: np.ndarray, inpaint_mask: np.ndarray, dilate: int
) -> np.ndarray:
    """The generated image with every pixel outside the inpainting mask (grown by `dilate` px) copied back from
    the original, so diffusion's global drift (colour shift, VAE blur) adds no false defect evidence."""
    _check_pair(original, generated, inpaint_mask)
    region = dilate_mask(inpaint_mask, dilate)
    return np.where(region[:, :, None], generated, original).astype(np.uint8)
