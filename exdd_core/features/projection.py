"""Random Gaussian projection (paper eq. 7), identical on every machine for a given seed."""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


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


def project(x: Rows, mat: Rows) -> Rows:
    """Project rows (n, in_dim) -> (n, out_dim): numpy or torch, as given (the feature stages project torch
    tensors on the backbone's device, the bank stages numpy blocks of a store)."""
    if x.shape[-1] != mat.shape[0]:
        raise ValueError(f"projection expects rows of dim {mat.shape[0]}, got {x.shape[-1]}")
    return x @ mat
