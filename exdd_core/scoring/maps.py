"""Anomaly maps at image resolution: bilinear upsampling of a patch-grid map, then a float Gaussian (eq. 23)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) by bilinear interpolation (align_corners=False, as torch/PIL resizing)."""
    t = torch.as_tensor(np.asarray(grid_map, dtype=np.float32))[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def anomaly_map(
    grid_map: np.ndarray, size: tuple[int, int], sigma: float = 2.0, *, quantize_8bit: bool = False
) -> np.ndarray:
    """Upsample to the image size and smooth with a Gaussian of `sigma` pixels (0 = no smoothing).

    `quantize_8bit=True` mimics the authors' code (map scaled to 0..255 uint8 before blurring, then scaled back),
    which creates ties that lower pixel AUROC; the default keeps floats.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    up = upsample(grid_map, size)
    if quantize_8bit:
        top = float(up.max())
        scale = 255.0 / top if top > 0 else 0.0
        up = np.clip(np.round(up * scale), 0, 255).astype(np.uint8).astype(np.float32)
        out = gaussian_filter(up, sigma=sigma, mode="nearest") if sigma > 0 else up
        out = np.round(out)  # PIL keeps the blurred image in 8 bits too
        return (out / scale if scale else out).astype(np.float32)
    if sigma > 0:
        up = gaussian_filter(up, sigma=sigma, mode="nearest")
    return up.astype(np.float32)
