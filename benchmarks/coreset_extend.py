"""Verdicts from the line and M_N's coreset: extend the existing picks, or rebuild? (issue 19, part 1)

When good parts confirmed on the line join M_N, the coreset can either be rebuilt over all rows (what the
pipeline does: the bank is a function of its inputs alone) or *extended*: keep the existing picks, start every
row's distance from them, and add farthest points until the larger target size. Extending costs one pass over
the rows per new pick instead of one per pick, but its picks depend on the order verdicts arrived in.

Rows: a normal feature store (default: the demo's features/normal.zarr, `dvc repro` first), projected as the
bank stage projects them (128 dims, seed 0). The last `--verdicts` images play the normals confirmed on the
line; the coreset of the others is the bank that exists. Prints seconds and coverage radius (max over all rows
of the distance to the nearest pick) of both, and their ratios.

    python benchmarks/coreset_extend.py [--store features/normal.zarr] [--verdicts 3] [--ratio 0.01]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exdd_core.banks.build import project_store
from exdd_core.banks.coreset import coreset_size, greedy_coreset
from exdd_core.banks.greedy import full_distances
from exdd_core.banks.knn import Bank
from exdd_core.features.store import Store


def extend(x: np.ndarray, picks: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Farthest-point picks added to `picks` until k: (all picks, coverage radius). Every row's distance to
    the existing picks is one exact k-NN (banks.knn), then the plain loop per new pick."""
    min_d = Bank(x[picks]).knn(x, 1)[0][:, 0].numpy().astype(np.float32)
    sel = list(picks)
    while len(sel) < k:
        i = int(np.argmax(min_d))
        sel.append(i)
        np.minimum(min_d, full_distances(x, x[i]), out=min_d)
    return np.array(sel), float(min_d.max())


def radius(x: np.ndarray, picks: np.ndarray) -> float:
    min_d = np.full(len(x), np.inf, np.float32)
    for i in picks:
        np.minimum(min_d, full_distances(x, x[i]), out=min_d)
    return float(min_d.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=Path("features/normal.zarr"))
    ap.add_argument("--verdicts", type=int, default=3, help="images that play the line's confirmed normals")
    ap.add_argument("--ratio", type=float, default=0.01)
    ap.add_argument("--min-size", type=int, default=1000)
    args = ap.parse_args()
    store = Store(args.store)
    x = project_store(store, 128, 0)
    cut = int(store.offsets[len(store.images) - args.verdicts])
    base_k, k = coreset_size(cut, args.ratio, args.min_size), coreset_size(len(x), args.ratio, args.min_size)
    existing = greedy_coreset(x[:cut], base_k, seed=0).indices  # the bank before the verdicts
    t0 = time.perf_counter()
    rebuilt = greedy_coreset(x, k, seed=0)
    t_rebuild = time.perf_counter() - t0
    t0 = time.perf_counter()
    extended, r_ext = extend(x, existing, k)
    t_extend = time.perf_counter() - t0
    r_reb = radius(x, rebuilt.indices)
    shared = len(np.intersect1d(rebuilt.indices, extended)) / k
    print(
        f"store {args.store}: {len(x)} rows ({cut} before {args.verdicts} verdict images), picks {base_k} -> {k}"
    )
    print("| | seconds | coverage radius |\n|---|---|---|")
    print(f"| rebuild (pipeline) | {t_rebuild:.2f} | {r_reb:.4f} |")
    print(f"| extend existing picks | {t_extend:.2f} | {r_ext:.4f} |")
    print(
        f"extend_time_ratio: {t_extend / t_rebuild:.2f}  radius_ratio_extend_vs_rebuild: {r_ext / r_reb:.3f}  "
        f"shared_picks: {shared:.2f}"
    )


if __name__ == "__main__":
    main()
