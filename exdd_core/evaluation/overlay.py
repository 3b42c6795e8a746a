"""Heatmap overlays people can look at: image, anomaly map in colour, ground truth outlined."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB on a blue-cyan-yellow-red ramp (a small 'jet'-like map, no matplotlib)."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4 * x - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * x - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * x - 1), 0, 1)
    return (np.stack([r, g, b], -1) * 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    vmin: float,
    vmax: float,
    mask: np.ndarray | None = None,
    alpha: float = 0.5,
) -> np.ndarray:
    """Blend the normalised map over the image; outline the ground truth in white."""
    norm = (amap - vmin) / (vmax - vmin) if vmax > vmin else np.zeros_like(amap)
    heat = colormap(norm).astype(np.float32)
    out = (1 - alpha) * image.astype(np.float32) + alpha * heat
    if mask is not None and mask.any():
        edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
        out[edge] = 255.0
    return np.clip(out, 0, 255).astype(np.uint8)


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Panels of equal height next to each other with a black gap."""
    h = panels[0].shape[0]
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            parts.append(np.zeros((h, gap, 3), np.uint8))
        parts.append(p)
    return np.concatenate(parts, axis=1)
