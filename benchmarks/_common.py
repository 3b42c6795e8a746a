"""Shared helpers of the benchmarks: device choice, machine description, RSS, and the cached feature sets.

Benchmarks are scripts, not tests: each prints a table and ends with machine-readable `key: value` lines that
RESULTS.md quotes. They run unchanged on CPU and CUDA (`--device auto|cpu|cuda`).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from exdd_core.runtime.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

CACHE = Path(os.environ.get("EXDD_BENCH_CACHE", "/tmp/exdd-bench"))


def add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when present"
    )


def resolve(device: str) -> str:
    from exdd_core.runtime.device import resolve_device

    return resolve_device(device)


def machine(device: str) -> str:
    """One line saying where a figure was measured, including how loaded the CPUs were when it started."""
    import torch

    load = os.getloadavg()
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else "no GPU used"
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{platform.node()} {platform.machine()} {os.cpu_count()} cores {mem_gib:.0f} GiB, {gpu}, "
        f"torch {torch.__version__} threads {torch.get_num_threads()}, "
        f"load avg {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
    )


def peak_rss_gib(children: bool = False) -> float:
    """Peak resident set size of this process (or of its waited-for children) so far, GiB (Linux: ru_maxrss KiB)."""
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    return resource.getrusage(who).ru_maxrss / 2**20


def current_rss_gib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**30


@contextmanager
def timed() -> Iterator[list[float]]:
    """`with timed() as t: ...` then t[0] is the wall time in seconds."""
    out: list[float] = []
    t0 = time.perf_counter()
    try:
        yield out
    finally:
        out.append(time.perf_counter() - t0)


def sync(device: str) -> None:
    """Wait for queued CUDA work so wall times mean something on a GPU."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def demo_patch_features(
    n_images: int, size: int = 224, proj_dim: int = 128, seed: int = 0, device: str = "cpu"
) -> np.ndarray:
    """Projected patch features of `n_images` demo (KSDD2-like) normal images through the seeded random WRN50.

    Realistic for the coreset: CNN patch features have a low intrinsic dimension, which is what pruning
    exploits; Gaussian noise is the worst case and is measured separately. Extraction costs ~0.3-1 s an image
    on CPU, so the projection (n_images * (size/8)^2 rows x proj_dim, float32) is cached under CACHE.
    """
    path = CACHE / f"demo-wrn50random-{n_images}x{size}-p{proj_dim}-s{seed}.npy"
    if path.is_file():
        return np.load(path)
    from exdd_core.data.sources.demo import render
    from exdd_core.features.embedder import make_extractor
    from exdd_core.features.patches import to_rows
    from exdd_core.features.projection import projection_matrix

    ext = make_extractor(
        {"name": "wide_resnet50_2", "weights": "random", "layers": [2, 3]},
        {"patch_size": 3, "aggregation": "padded_bilinear"},
        seed,
        device,
    )
    mat = projection_matrix(ext.dim, proj_dim, seed)
    parts = []
    t0 = time.perf_counter()
    for k in range(n_images):
        img, _, _ = render(seed, "train", 0, k, (size, size))
        rows = to_rows(ext(img)).float().cpu().numpy()
        parts.append(rows @ mat)
        if (k + 1) % 25 == 0:
            print(f"  extracted {k + 1}/{n_images} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    x = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, x)
    return x


def gaussian_features(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Isotropic Gaussian rows: full intrinsic dimension, the worst case for any metric pruning."""
    return np.random.default_rng(seed).standard_normal((n, dim), dtype=np.float32)


# Backbones the synthetic feature models are fitted to: the seeded random WRN50 (the paper's architecture, 1,536
# dims) and the default EfficientNet-Lite0 with its ImageNet weights (layers 2 + 3: 152 dims).
MODEL_BACKBONES = {
    "wrn50": {"name": "wide_resnet50_2", "weights": "random", "layers": [2, 3]},
    "lite0": {"name": "tf_efficientnet_lite0", "weights": "imagenet", "layers": [2, 3]},
}


def feature_model(
    n_images: int = 16, rank: int = 64, seed: int = 0, device: str = "cpu", backbone: str = "wrn50"
) -> dict[str, np.ndarray]:
    """A Gaussian model of full-size patch features, fitted to real ones: mean, top `rank` principal axes with
    their standard deviations, and an isotropic residual for the remaining variance.

    Fitted on demo (KSDD2-like) normal images at the KSDD2 size 632x224 (79 x 28 = 2,212 patches, 1,536 dims)
    through the seeded random WRN50, and cached under CACHE. Sampling it costs ~50 ms an image instead of a
    backbone pass, which is what makes a 2,085-image (4.6 M row) store buildable here. A Gaussian keeps the
    spectrum but not the clusters of real features, so pruning has less to work with: benchmarks/coreset.py
    `--data fitted` measures that against the real features at the same size.
    """
    tag = "wrn50random" if backbone == "wrn50" else backbone
    path = CACHE / f"featmodel-{tag}-{n_images}x632x224-r{rank}-s{seed}.npz"
    if path.is_file():
        with np.load(path) as f:
            return dict(f)
    from exdd_core.data.sources.demo import render
    from exdd_core.features.embedder import make_extractor
    from exdd_core.features.patches import to_rows

    ext = make_extractor(
        MODEL_BACKBONES[backbone], {"patch_size": 3, "aggregation": "padded_bilinear"}, seed, device
    )
    rows = []
    for k in range(n_images):
        img, _, _ = render(seed, "train", 0, 10_000 + k, (632, 224))
        rows.append(to_rows(ext(img)).float().cpu().numpy())
    x = np.concatenate(rows).astype(np.float64)
    mean = x.mean(0)
    x -= mean
    cov = x.T @ x / len(x)
    vals, vecs = np.linalg.eigh(cov)
    vals, vecs = vals[::-1], vecs[:, ::-1]
    resid = float(vals[rank:].sum() / (len(vals) - rank))
    model = {
        "mean": mean.astype(np.float32),
        "axes": np.ascontiguousarray(vecs[:, :rank].T, dtype=np.float32),  # (rank, dim)
        "std": np.sqrt(np.maximum(vals[:rank], 0.0)).astype(np.float32),
        "resid_std": np.float32(np.sqrt(max(resid, 0.0))),
        "explained": np.float32(vals[:rank].sum() / vals.sum()),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **model)
    return model


def sample_features(model: dict[str, np.ndarray], rows: int, rng: np.random.Generator) -> np.ndarray:
    """`rows` float32 feature rows drawn from `feature_model`'s Gaussian."""
    g = rng.standard_normal((rows, len(model["std"])), dtype=np.float32) * model["std"]
    out = rng.standard_normal((rows, len(model["mean"])), dtype=np.float32)
    out *= model["resid_std"]
    out += g @ model["axes"]
    out += model["mean"]
    return out
