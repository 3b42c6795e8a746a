"""Coreset selection speed (issue target 1): our greedy k-center against the plain per-pick loop.

Defaults = the target: 300 images x 784 patches = 235,200 rows, projected to 128 dims, ratio 0.01 (2,352
picks), one seeded start shared by every method. Data:

* `demo` (default): patch features of demo (KSDD2-like) images at 224x224 through the seeded random WRN50 and
  the 128-d selection projection - what the pipeline feeds the coreset. Cached under /tmp (see _common).
* `gaussian`: isotropic Gaussian rows, full intrinsic dimension: the worst case for metric pruning.
* `fitted`: rows drawn from the Gaussian fitted to real 1,536-d features (`_common.feature_model`), projected
  like the pipeline's: checks that the model benchmarks/scale.py uses is no easier for pruning than real data.

Prints one table row per method (seconds, picks/s, coverage radius by brute force, whether the picks equal the
plain loop's) and ends with `speedup_vs_plain_loop: <x>` and `radius_ratio: <ours/exact>`, where "ours" is the
method `auto` chooses on the device (lazy on CPU, the plain loop in torch on CUDA). On every device it also
prints the memory-bandwidth floor of a plain loop: (bytes read per pick) x picks / bandwidth, bandwidth measured
here by a large copy.

    .venv/bin/python benchmarks/coreset.py                 # target 1, demo features
    .venv/bin/python benchmarks/coreset.py --data gaussian # worst case
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _common import (
    add_device_arg,
    demo_patch_features,
    feature_model,
    gaussian_features,
    machine,
    resolve,
    sample_features,
    sync,
)

from exdd_core.banks.coreset import coreset_size
from exdd_core.banks.greedy import CoresetResult, greedy_plain, greedy_plain_torch
from exdd_core.banks.lazy_greedy import greedy_lazy
from exdd_core.banks.pruned import greedy_pruned
from exdd_core.features.projection import projection_matrix


def coverage_radius(x: np.ndarray, selected: np.ndarray, block: int = 65536) -> float:
    """Max over rows of x of the distance to the nearest selected row, brute force in blocks: the check
    this benchmark runs on 10^5-10^6 rows, where a per-pair reference would not fit in memory."""
    if len(selected) == 0:
        return math.inf
    s = np.asarray(x[selected], dtype=np.float32)
    best = 0.0
    for a in range(0, len(x), block):
        q = np.asarray(x[a : a + block], dtype=np.float32)
        d2 = (q * q).sum(1)[:, None] - 2.0 * q @ s.T + (s * s).sum(1)[None, :]
        best = max(best, float(np.sqrt(np.maximum(d2.min(1), 0.0)).max()))
    return best


def bandwidth_gbs(device: str, nbytes: int = 1 << 30, repeats: int = 5) -> float:
    """Sustained memory bandwidth (read + write) of a large device copy, GB/s: the best of `repeats`."""
    n = nbytes // 4
    a = torch.ones(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best / 1e9


def greedy_plain_gemv(x: np.ndarray, k: int, start: int) -> CoresetResult:
    """The fastest plain loop we know on CPU, for an honest baseline: |x|^2 precomputed, one float32 GEMV per
    pick (reads the rows once, 4x less memory traffic than `greedy_plain`). Not bit-equal to the exact greedy
    (the dot-product form rounds differently), so its picks can drift from the reference's."""
    sq = np.einsum("ij,ij->i", x, x)
    sel = np.empty(k, dtype=np.int64)
    sel[0] = start
    min_d2 = np.maximum(sq - 2.0 * (x @ x[start]) + sq[start], 0.0)
    for t in range(1, k):
        i = int(np.argmax(min_d2))
        sel[t] = i
        d2 = x @ x[i]
        d2 *= -2.0
        d2 += sq
        d2 += sq[i]
        np.minimum(min_d2, d2, out=min_d2)
    return CoresetResult(sel, float(np.sqrt(max(float(min_d2.max()), 0.0))))


def run(name: str, fn, x: np.ndarray, device: str) -> tuple[CoresetResult, float]:
    sync(device)
    t0 = time.perf_counter()
    res = fn()
    sync(device)
    dt = time.perf_counter() - t0
    return res, dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(p)
    p.add_argument("--data", default="demo", choices=("demo", "gaussian", "fitted"))
    p.add_argument("--images", type=int, default=300, help="demo images (784 patches each at 224x224)")
    p.add_argument("--rows", type=int, default=None, help="gaussian: rows (default images x 784)")
    p.add_argument("--dim", type=int, default=128, help="selection dimension")
    p.add_argument("--ratio", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-plain", action="store_true", help="skip the (slow) plain numpy loops")
    p.add_argument("--torch-plain", action="store_true", help="also time the torch plain loop on CPU")
    args = p.parse_args()
    device = resolve(args.device)
    torch.set_num_threads(torch.get_num_threads())  # default: all cores

    print(f"machine: {machine(device)}")
    if args.data == "demo":
        x = demo_patch_features(args.images, 224, args.dim, args.seed, device)
    elif args.data == "fitted":  # the Gaussian model benchmarks/scale.py draws its 4.6 M rows from
        rows = args.rows or args.images * 784
        mat = projection_matrix(1536, args.dim, args.seed)
        model = feature_model(device=device)
        rng = np.random.default_rng(args.seed)
        x = np.concatenate(
            [sample_features(model, 8192, rng)[: rows - a] @ mat for a in range(0, rows, 8192)]
        )
    else:
        x = gaussian_features(args.rows or args.images * 784, args.dim, args.seed)
    n = len(x)
    k = coreset_size(n, args.ratio, 1)
    start = int(np.random.default_rng(args.seed).integers(n))
    print(f"data: {args.data}, {n} rows x {x.shape[1]}, ratio {args.ratio} -> {k} picks, start row {start}")

    runs: dict[str, tuple[CoresetResult, float]] = {}
    if not args.skip_plain:
        runs["plain (numpy, textbook)"] = run("plain", lambda: greedy_plain(x, k, start), x, device)
        runs["plain (numpy, GEMV form)"] = run("gemv", lambda: greedy_plain_gemv(x, k, start), x, device)
    runs["pruned (numpy, exact)"] = run("pruned", lambda: greedy_pruned(x, k, start), x, device)
    runs["lazy (numpy, exact)"] = run("lazy", lambda: greedy_lazy(x, k, start), x, device)
    if device.startswith("cuda") or args.torch_plain:
        runs[f"plain (torch, {device})"] = run(
            "plain_torch", lambda: greedy_plain_torch(x, k, start, device), x, device
        )
    ours = f"plain (torch, {device})" if device.startswith("cuda") else "lazy (numpy, exact)"
    ref = runs.get("plain (numpy, textbook)")

    print(
        f"\n{'method':28s} {'seconds':>9s} {'picks/s':>9s} {'radius':>10s} {'brute radius':>12s} same picks"
    )
    radii: dict[str, float] = {}
    for name, (res, dt) in runs.items():
        brute = coverage_radius(x, res.indices)
        radii[name] = brute
        same = "-" if ref is None else str(bool(np.array_equal(res.indices, ref[0].indices)))
        print(f"{name:28s} {dt:9.2f} {k / dt:9.1f} {res.radius:10.5f} {brute:12.5f} {same}")

    bw = bandwidth_gbs(device)
    per_pick = n * x.shape[1] * 4 + n * 4  # rows + running min distances, float32
    floor = per_pick * k / (bw * 1e9)
    print(
        f"\nbandwidth_floor ({device}): {per_pick / 1e6:.1f} MB read per pick x {k} picks / "
        f"{bw:.0f} GB/s (measured copy) = {floor:.2f} s for any plain loop"
    )
    if ref is not None:
        print(f"speedup_vs_plain_loop: {ref[1] / runs[ours][1]:.2f}")
        print(f"speedup_vs_gemv_plain_loop: {runs['plain (numpy, GEMV form)'][1] / runs[ours][1]:.2f}")
        print(f"radius_ratio: {radii[ours] / radii['plain (numpy, textbook)']:.6f}")
    print(f"machine_after: {machine(device)}")


if __name__ == "__main__":
    main()
