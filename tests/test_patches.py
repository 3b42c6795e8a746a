"""Patch aggregation (eq. 1-4) against explicit loops."""

import numpy as np
import pytest
import torch

from exdd_core.features.patches import aggregate_patches, local_average, mask_coverage, to_rows


def loop_average(a: np.ndarray, p: int, padded: bool) -> np.ndarray:
    """Plain reference: mean over the p x p window, zeros outside the map when padded."""
    c, h, w = a.shape
    r = p // 2
    if padded:
        out = np.zeros((c, h, w))
        for y in range(h):
            for x in range(w):
                acc = np.zeros(c)
                for dy in range(-r, r + 1):
                    for dx in range(-r, r + 1):
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w:
                            acc += a[:, yy, xx]
                out[:, y, x] = acc / (p * p)
        return out
    out = np.zeros((c, h - 2 * r, w - 2 * r))
    for y in range(h - 2 * r):
        for x in range(w - 2 * r):
            out[:, y, x] = a[:, y : y + p, x : x + p].reshape(c, -1).mean(1)
    return out


@pytest.mark.parametrize("p", [1, 3, 5])
@pytest.mark.parametrize("padded", [True, False])
def test_local_average_matches_loops(p, padded):
    a = np.random.default_rng(p).standard_normal((4, 9, 7))
    got = local_average(torch.tensor(a)[None], p, padded=padded)[0].numpy()
    ref = loop_average(a, p, padded) if p > 1 else a
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


def bilinear_ref(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Half-pixel-centred bilinear resize (align_corners=False), written out by hand."""
    c, hi, wi = a.shape
    out = np.zeros((c, h, w))
    for y in range(h):
        for x in range(w):
            sy = max((y + 0.5) * hi / h - 0.5, 0.0)
            sx = max((x + 0.5) * wi / w - 0.5, 0.0)
            y0, x0 = min(int(np.floor(sy)), hi - 1), min(int(np.floor(sx)), wi - 1)
            y1, x1 = min(y0 + 1, hi - 1), min(x0 + 1, wi - 1)
            fy, fx = sy - y0, sx - x0
            out[:, y, x] = (
                a[:, y0, x0] * (1 - fy) * (1 - fx)
                + a[:, y0, x1] * (1 - fy) * fx
                + a[:, y1, x0] * fy * (1 - fx)
                + a[:, y1, x1] * fy * fx
            )
    return out


def test_aggregate_padded_bilinear_shapes_and_values():
    rng = np.random.default_rng(0)
    l2 = rng.standard_normal((5, 11, 6))  # odd size: 2 x layer3 != layer2, as 79 vs 40 at 632 px
    l3 = rng.standard_normal((7, 6, 3))
    got = aggregate_patches([torch.tensor(l2)[None], torch.tensor(l3)[None]], 3)[0].numpy()
    assert got.shape == (12, 11, 6)
    np.testing.assert_allclose(got[:5], loop_average(l2, 3, True), atol=1e-12)
    np.testing.assert_allclose(got[5:], bilinear_ref(loop_average(l3, 3, True), 11, 6), atol=1e-10)


def test_aggregate_authors_code_replicates():
    rng = np.random.default_rng(1)
    l2 = rng.standard_normal((2, 10, 8))
    l3 = rng.standard_normal((3, 6, 5))
    got = aggregate_patches([torch.tensor(l2)[None], torch.tensor(l3)[None]], 3, "authors_code")[0].numpy()
    assert got.shape == (5, 8, 6)
    p3 = loop_average(l3, 3, False)  # (3, 4, 3) -> adaptive pooling up to (8, 6): every cell repeated twice
    np.testing.assert_allclose(got[2:], p3.repeat(2, axis=1).repeat(2, axis=2), atol=1e-12)


def test_to_rows_order_and_mask_coverage():
    x = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    rows = to_rows(x)
    assert rows.shape == (16, 3)
    assert torch.equal(rows[4 * 1 + 2], x[0, :, 1, 2])
    assert torch.equal(rows[8 + 3], x[1, :, 0, 3])
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[0:4, 0:2] = True
    cov = mask_coverage(mask, (2, 2))
    np.testing.assert_allclose(cov.numpy(), [[0.5, 0.0], [0.0, 0.0]])
