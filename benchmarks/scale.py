"""KSDD2 scale: write a 4.6 M-row feature store image by image, then build the normal bank.

KSDD2's normal bank is every patch of 2,085 training images at 632x224: 2,085 x 2,212 = 4.6 M rows, of 152
floats with the default EfficientNet-Lite0 (layers 2 + 3; 1.4 GB as float16), of 1,536 with WRN50
(`--backbone wrn50`, 14 GB). This writes such a store with `StoreWriter` one image at a time, exactly as the
features_normal stage does, then runs `build_bank` (projection to 128 dims, greedy k-center at ratio 0.01 ->
~46 k rows, gather of the selected rows), each phase in its own child process so that each one's peak RSS
(getrusage ru_maxrss) is its own.

The rows are synthetic, drawn per image from a Gaussian fitted to real patch features (`_common.feature_model`:
demo images through the seeded random WRN50 at 632x224; its spectrum, not its clusters - a harder case for
the coreset's pruning than real features, see RESULTS.md). Extracting 2,085 real images on this CPU would take
hours; this is not what is measured.

    .venv/bin/python benchmarks/scale.py                    # Lite0, 152 dims (needs ~2 GB free under /tmp)
    .venv/bin/python benchmarks/scale.py --backbone wrn50   # WRN50, 1,536 dims (needs ~15 GB)
    .venv/bin/python benchmarks/scale.py --images 200       # a fraction, to try it out
Ends with `peak_rss_gib: <x>` (the larger of the two phases).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import CACHE, add_device_arg, feature_model, machine, peak_rss_gib, resolve, sample_features

from exdd_core.runtime.choices import CORESET_METHODS

GRID = (79, 28)


def write_store(path: Path, images: int, seed: int, device: str, backbone: str) -> dict:
    """Phase 1: synthetic rows image by image into a StoreWriter (float16, the pipeline's default)."""
    from exdd_core.features.store import StoreWriter

    model = feature_model(device=device, backbone=backbone)
    rng = np.random.default_rng(seed)
    rows = GRID[0] * GRID[1]
    dim = len(model["mean"])
    attrs = {
        "kind": "normal",
        "grid": list(GRID),
        "image_size": [632, 224],
        "dtype": "float16",
        "synthetic": True,
    }
    t0 = time.perf_counter()
    t_gen = 0.0
    with StoreWriter(path, dim, "float16", attrs) as w:
        for k in range(images):
            g0 = time.perf_counter()
            x = sample_features(model, rows, rng)
            t_gen += time.perf_counter() - g0
            w.add(f"train_normal_{k:04d}", x)
            if (k + 1) % 250 == 0:
                print(f"  wrote {k + 1}/{images} images ({time.perf_counter() - t0:.0f} s)", flush=True)
    return {
        "seconds": time.perf_counter() - t0,
        "seconds_generating": t_gen,
        "rows": images * rows,
        "bytes_on_disk": sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
        "peak_rss_gib": peak_rss_gib(),
    }


def build(path: Path, out: Path, ratio: float, method: str, device: str) -> dict:
    """Phase 2: build_bank as the bank_normal stage calls it, timing its parts through a progress counter."""
    from contextlib import contextmanager

    from exdd_core.banks.build import build_bank

    marks: dict[str, float] = {}

    @contextmanager
    def counter(_desc: str, total: int):
        marks["coreset_start"] = time.perf_counter()
        done = [0]

        def advance(n: int = 1) -> None:
            done[0] += n
            if done[0] % 5000 < n:
                el = time.perf_counter() - marks["coreset_start"]
                print(f"  coreset {done[0]}/{total} picks ({el:.0f} s)", flush=True)

        yield advance
        marks["coreset_end"] = time.perf_counter()

    t0 = time.perf_counter()
    res = build_bank(
        path,
        out,
        ratio=ratio,
        min_size=1000,
        projection_dim=128,
        seed=0,
        method=method,
        device=device,
        counter=counter,
    )
    t1 = time.perf_counter()
    return {
        **res,
        "seconds": t1 - t0,
        "seconds_projection": marks.get("coreset_start", t0) - t0,
        "seconds_coreset": marks.get("coreset_end", t1) - marks.get("coreset_start", t0),
        "seconds_gather_write": t1 - marks.get("coreset_end", t1),
        "peak_rss_gib": peak_rss_gib(),
    }


def child(phase: str, args: argparse.Namespace) -> dict:
    """Run one phase in a fresh interpreter and return its JSON result line."""
    cmd = [sys.executable, __file__, "--phase", phase, "--images", str(args.images), "--dir", str(args.dir)]
    cmd += [
        "--ratio",
        str(args.ratio),
        "--method",
        args.method,
        "--device",
        args.device,
        "--seed",
        str(args.seed),
    ]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    lines = proc.stdout.splitlines()
    for line in lines[:-1]:
        print(line)
    return json.loads(lines[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_device_arg(p)
    p.add_argument("--images", type=int, default=2085, help="normal training images (KSDD2: 2,085)")
    p.add_argument("--ratio", type=float, default=0.01)
    p.add_argument("--method", default="auto", choices=CORESET_METHODS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--backbone", default="lite0", choices=("lite0", "wrn50"), help="whose features the rows model"
    )
    p.add_argument("--dir", type=Path, default=CACHE / "scale", help="where the store and bank go (deleted)")
    p.add_argument("--keep", action="store_true", help="keep the store and bank afterwards")
    p.add_argument("--phase", choices=("write", "bank"), help=argparse.SUPPRESS)
    args = p.parse_args()
    device = resolve(args.device)
    store, bank = args.dir / "normal.zarr", args.dir / "bank.zarr"

    if args.phase == "write":
        print(json.dumps(write_store(store, args.images, args.seed, device, args.backbone)))
        return
    if args.phase == "bank":
        print(json.dumps(build(store, bank, args.ratio, args.method, device)))
        return

    print(f"machine: {machine(device)}")
    free = shutil.disk_usage(args.dir.parent if args.dir.parent.exists() else "/").free / 2**30
    dim = len(
        feature_model(device=device, backbone=args.backbone)["mean"]
    )  # fit and cache outside the timing
    need = args.images * GRID[0] * GRID[1] * dim * 2 / 2**30
    print(
        f"store ({args.backbone}): {args.images} images x {GRID[0] * GRID[1]} rows x {dim} float16 = "
        f"{need:.1f} GiB; free {free:.0f} GiB"
    )
    if need * 1.1 > free:
        sys.exit("not enough free disk for the store")
    args.dir.mkdir(parents=True, exist_ok=True)
    try:
        w = child("write", args)
        print(
            f"write store: {w['seconds']:.0f} s ({w['seconds_generating']:.0f} s of it drawing synthetic rows), "
            f"{w['rows']} rows, {w['bytes_on_disk'] / 2**30:.1f} GiB on disk, peak RSS {w['peak_rss_gib']:.2f} GiB"
        )
        b = child("bank", args)
        print(
            f"build bank: {b['seconds']:.0f} s (projection {b['seconds_projection']:.0f} s, coreset "
            f"{b['seconds_coreset']:.0f} s, gather + write {b['seconds_gather_write']:.0f} s), {b['rows']} of "
            f"{b['source_rows']} rows, radius {b['coverage_radius']:.4f}, peak RSS {b['peak_rss_gib']:.2f} GiB"
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.dir, ignore_errors=True)
    print(f"machine_after: {machine(device)}")
    print(f"store_seconds: {w['seconds']:.1f}")
    print(f"bank_seconds: {b['seconds']:.1f}")
    print(f"peak_rss_gib: {max(w['peak_rss_gib'], b['peak_rss_gib']):.2f}")


if __name__ == "__main__":
    main()
