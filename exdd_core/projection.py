"""Random Gaussian projection (paper eq. 7), identical on every machine for a given seed."""

from __future__ import annotations

import numpy as np


def projection_matrix(in_dim: int, out_dim: int, seed: int) -> np.ndarray:
    """A (in_dim, out_dim) float32 matrix of standard-normal entries with unit-length columns.

    Drawn with numpy's PCG64 from `seed` (not torch's RNG) so CPU and CUDA machines get the same bits.
    """
    if in_dim < 1 or out_dim < 1:
        raise ValueError(f"projection dims must be >= 1, got {in_dim} -> {out_dim}")
    rng = np.random.default_rng([seed, 0x5EED])
    mat = rng.standard_normal((in_dim, out_dim))
    mat /= np.linalg.norm(mat, axis=0, keepdims=True)
    return mat.astype(np.float32)


def project(x: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """Project rows (n, in_dim) -> (n, out_dim) in float32."""
    if x.shape[-1] != mat.shape[0]:
        raise ValueError(f"projection expects rows of dim {mat.shape[0]}, got {x.shape[-1]}")
    return np.asarray(x, dtype=np.float32) @ mat
