"""Locally aware patch features (paper eq. 1-4): p x p neighbourhood average of each layer's map, deeper
layers resized to the first layer's grid, channels concatenated."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from exdd_core.runtime.choices import AGGREGATIONS, Aggregation


def local_average(fmap: torch.Tensor, patch_size: int, *, padded: bool = True) -> torch.Tensor:
    """Average each position over its p x p neighbourhood.

    `padded=True` zero-pads by p//2 so the map keeps its size (zeros count in the border averages, as eq. 1-3
    with a zero-padded map); `padded=False` is the authors' code (`AvgPool2d(p, 1)`), which loses p//2 per side.
    """
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    if patch_size == 1:
        return fmap
    pad = patch_size // 2 if padded else 0
    return F.avg_pool2d(fmap, kernel_size=patch_size, stride=1, padding=pad, count_include_pad=True)


def aggregate_patches(
    maps: list[torch.Tensor], patch_size: int, aggregation: Aggregation = "padded_bilinear"
) -> torch.Tensor:
    """Turn backbone maps [(N, C_j, H_j, W_j), ...] into patch features (N, sum C_j, H_0, W_0).

    The first map sets the grid; the others are resized to exactly its size (not by a factor: 40*2 != 79).
    `padded_bilinear` is the paper's text; `authors_code` is the published code (unpadded pooling, then
    AdaptiveAvgPool2d resize, which replicates rather than interpolates when upsampling).
    """
    if not maps:
        raise ValueError("aggregate_patches needs at least one feature map")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    padded = aggregation == "padded_bilinear"
    pooled = [local_average(m, patch_size, padded=padded) for m in maps]
    h, w = pooled[0].shape[-2:]
    out = [pooled[0]]
    for m in pooled[1:]:
        if m.shape[-2:] != (h, w):
            if padded:
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
            else:
                m = F.adaptive_avg_pool2d(m, (h, w))
        out.append(m)
    return torch.cat(out, dim=1)


def to_rows(patches: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N*H*W, C), row-major over (image, h, w): the order every store uses."""
    n, c, h, w = patches.shape
    return patches.permute(0, 2, 3, 1).reshape(n * h * w, c)


def mask_coverage(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Fraction of each grid cell covered by a binary mask (H, W) -> (h, w), by area averaging.

    Used to pick the defect-bank patches: a position is "on the defect" when its cell is covered above
    `bank.mask_threshold`.
    """
    m = mask.to(torch.float32)[None, None]
    return F.adaptive_avg_pool2d(m, grid)[0, 0]
