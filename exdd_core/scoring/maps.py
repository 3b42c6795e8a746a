"""Anomaly maps at image resolution: bilinear upsampling of a patch-grid map, then a float Gaussian (eq. 23)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def _taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis (align_corners=False, half-pixel centres, clamped at 0): the two source
    indices and their weights for each output index, in float32 as torch computes them."""
    src = np.float32(n_in / n_out) * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    w1 = (src - i0.astype(np.float32)).astype(np.float32)
    return i0, np.minimum(i0 + 1, n_in - 1), np.float32(1.0) - w1, w1


def upsample(grid_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) -> (H, W) by bilinear interpolation (align_corners=False, as torch/PIL resizing), in numpy: the
    same maps with or without torch installed (an ONNX export scores without it). Equal to torch's
    F.interpolate within float32 rounding (tests/test_scoring.py)."""
    m = np.asarray(grid_map, dtype=np.float32)
    r0, r1, h0, h1 = _taps(m.shape[0], int(size[0]))
    c0, c1, w0, w1 = _taps(m.shape[1], int(size[1]))
    top = m[r0][:, c0] * w0 + m[r0][:, c1] * w1
    bottom = m[r1][:, c0] * w0 + m[r1][:, c1] * w1
    return (h0[:, None] * top + h1[:, None] * bottom).astype(np.float32)


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
