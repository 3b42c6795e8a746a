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


def _join(panels: list[np.ndarray], gap: int, axis: int) -> np.ndarray:
    """Panels along `axis` (1: side by side, 0: stacked) with black gaps of `gap` px between them."""
    shape = list(panels[0].shape)
    shape[axis] = gap
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if i:
            parts.append(np.zeros(shape, np.uint8))
        parts.append(p)
    return np.concatenate(parts, axis=axis)


def side_by_side(*panels: np.ndarray, gap: int = 4) -> np.ndarray:
    """Panels of equal height next to each other with a black gap."""
    return _join(list(panels), gap, axis=1)


def _font(size: int):
    from PIL import ImageFont

    try:  # the 10 px bitmap default is unreadable on a picture; `size` needs Pillow >= 10.1
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def annotate(
    panel: np.ndarray, lines: list[str], vmin: float, vmax: float, font_size: int = 14
) -> np.ndarray:
    """The panel with a black header holding `lines` (title, score, threshold, decision) above it and a
    colour bar of the map's scale (vmin .. vmax, the colours of `overlay`) below it, so a person can read the
    picture without scores.csv."""
    from PIL import Image, ImageDraw

    h, w = panel.shape[:2]
    font = _font(font_size)
    line_h = font_size + 4
    header, bar_h, labels_h = line_h * len(lines) + 4, 10, line_h
    canvas = Image.new("RGB", (w, header + h + bar_h + labels_h + 4), (0, 0, 0))
    canvas.paste(Image.fromarray(panel), (0, header))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((4, 2 + i * line_h), text, fill=(255, 255, 255), font=font)
    ramp = colormap(np.linspace(0.0, 1.0, w))[None].repeat(bar_h, axis=0)
    y = header + h + 2
    canvas.paste(Image.fromarray(ramp), (0, y))
    draw.text((2, y + bar_h), f"{vmin:.3g}", fill=(255, 255, 255), font=font)
    hi = f"{vmax:.3g}"
    draw.text((w - 2 - draw.textlength(hi, font=font), y + bar_h), hi, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def grid(panels: list[np.ndarray], columns: int, gap: int = 8) -> np.ndarray:
    """Panels in rows of at most `columns` (bottom-padded to the tallest of their row, the last row
    right-padded), instead of one endless strip."""
    rows = []
    for a in range(0, len(panels), columns):
        row = panels[a : a + columns]
        h = max(p.shape[0] for p in row)
        row = [np.pad(p, ((0, h - p.shape[0]), (0, 0), (0, 0))) for p in row]
        rows.append(side_by_side(*row, gap=gap))
    width = max(r.shape[1] for r in rows)
    return _join([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], gap, axis=0)
