"""Throughput of feature extraction and the coreset, one process and sharded (issue: outgrowing one process).

All figures come from one run on the same images (demo KSDD2-like images at 632 x 224, the seeded random
WideResNet-50, layers 2 and 3):

* images/s of our extraction (`write_store`: decode on the prefetch thread, backbone, aggregation, rows into a
  Zarr store) at batch 1 and batch 8;
* a bare timm forward of the same cut backbone on the same images, already decoded, at the same batch: the
  floor of our overhead (`extract_overhead_vs_bare_forward` = bare images/s / ours, at batch 1);
* 2 processes x 1 thread (gloo, each extracting half the images straight into the one store: the sharded
  features stage) against 1 process x 1 thread (`two_process_scaling` = images/s of 2 over 1);
* the sharded coreset (2 ranks) against the single-process one on the same projected rows: time, and whether
  the picks are the same index for index.

    .venv/bin/python benchmarks/throughput.py                 # CPU, the figures in RESULTS.md
    .venv/bin/python benchmarks/throughput.py --device cuda   # unchanged on a GPU (no multi-process part)
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from _common import add_device_arg, machine, resolve, sync

from exdd_core.data.imageio import save_png
from exdd_core.data.records import ImageRecord
from exdd_core.data.sources.demo import render
from exdd_core.features.embedder import Embedder, make_extractor
from exdd_core.features.extract import write_store
from exdd_core.features.store import Store

SIZE = (632, 224)
BACKBONE = {"name": "wide_resnet50_2", "weights": "random", "layers": [2, 3]}
FEATURES = {"patch_size": 3, "aggregation": "padded_bilinear", "store_dim": None, "dtype": "float16"}


def make_images(folder: Path, n: int) -> list[ImageRecord]:
    out = []
    for k in range(n):
        image, _, _ = render(0, "train", 0, 50_000 + k, SIZE)
        save_png(folder / f"im{k:03d}.png", image)
        out.append(ImageRecord(f"im{k:03d}", "train", 0, folder / f"im{k:03d}.png"))
    return out


def ours(records: list[ImageRecord], out: Path, batch: int, device: str) -> float:
    """images/s of write_store end to end (the extractor built beforehand, as a stage does once)."""
    ex = make_extractor(BACKBONE, {**FEATURES, "autocast": True}, 0, device)
    ex(np.zeros((*SIZE, 3), np.uint8))  # warm-up (first call is slower, measured ~1 s)
    sync(device)
    t0 = time.perf_counter()
    write_store(
        records,
        out,
        Embedder.around(ex, FEATURES, 0),
        image_size=SIZE,
        features=FEATURES,
        seed=0,
        manifests=[],
        kind="normal",
        batch_size=batch,
    )
    sync(device)
    return len(records) / (time.perf_counter() - t0)


def bare(records: list[ImageRecord], batch: int, device: str) -> float:
    """images/s of the cut backbone alone (the folded module that runs) on pre-decoded, pre-normalised tensors."""
    from exdd_core.data.imageio import load_image
    from exdd_core.features.backbone import to_tensor

    ex = make_extractor(BACKBONE, {**FEATURES, "autocast": True}, 0, device)
    images = np.stack([load_image(r.image_path, SIZE) for r in records])
    xs = [to_tensor(images[a : a + batch], device) for a in range(0, len(images), batch)]
    if ex.cuda:
        xs = [x.contiguous(memory_format=torch.channels_last) for x in xs]
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=ex.autocast):
        ex.runner(xs[0][:1])  # warm-up
        sync(device)
        t0 = time.perf_counter()
        for x in xs:
            ex.runner(x)
        sync(device)
    return len(records) / (time.perf_counter() - t0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_extract(rank: int, world: int, port: int, folder: str, n: int, out: str, result: str) -> None:
    import torch.distributed as dist

    from exdd_core.runtime.distributed import Ranks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    records = [ImageRecord(f"im{k:03d}", "train", 0, Path(folder) / f"im{k:03d}.png") for k in range(n)]
    ex = make_extractor(BACKBONE, FEATURES, 0, "cpu")
    ex(np.zeros((*SIZE, 3), np.uint8))
    dist.barrier()
    t0 = time.perf_counter()
    write_store(
        records, Path(out), Embedder.around(ex, FEATURES, 0), ranks=Ranks(rank, world, rank),
        image_size=SIZE, features=FEATURES, seed=0, manifests=[], kind="normal",
    )  # fmt: skip
    dist.barrier()
    if rank == 0:
        Path(result).write_text(json.dumps({"seconds": time.perf_counter() - t0}))
    dist.destroy_process_group()


def processes(folder: Path, n: int, world: int, out: Path) -> float:
    """images/s of the sharded extraction on `world` CPU processes of one thread each."""
    result = out.with_suffix(".json")
    mp.start_processes(
        _rank_extract, args=(world, _free_port(), str(folder), n, str(out), str(result)), nprocs=world,
        start_method="spawn",
    )  # fmt: skip
    return n / json.loads(result.read_text())["seconds"]


def _bare_worker(rank: int, n: int, result: str) -> None:
    """n bare forwards of random images on one thread: what the machine gives one process."""
    torch.set_num_threads(1)
    ex = make_extractor(BACKBONE, FEATURES, 0, "cpu")
    x = torch.randn(1, 3, *SIZE)
    with torch.inference_mode():
        ex.runner(x)
        t0 = time.perf_counter()
        for _ in range(n):
            ex.runner(x)
    Path(f"{result}.{rank}").write_text(str(n / (time.perf_counter() - t0)))


def bare_scaling(tmp: Path, n: int) -> float:
    """The machine's own scaling: images/s of 2 concurrent bare-forward processes over 1 (the ceiling of any
    2-process figure here; on a VM whose 2 cores share memory bandwidth it is far below 2)."""
    one = tmp / "bare1"
    mp.start_processes(_bare_worker, args=(n, str(one)), nprocs=1, start_method="spawn")
    two = tmp / "bare2"
    mp.start_processes(_bare_worker, args=(n // 2, str(two)), nprocs=2, start_method="spawn")
    single = float(Path(f"{one}.0").read_text())
    return sum(float(Path(f"{two}.{r}").read_text()) for r in range(2)) / single


def _rank_coreset(rank: int, world: int, port: int, x_path: str, k: int, start: int, result: str) -> None:
    import torch.distributed as dist

    from exdd_core.banks.distributed import greedy_sharded
    from exdd_core.runtime.distributed import shard_bounds

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x = np.load(x_path)
    a, b = shard_bounds(len(x), world, rank)
    dist.barrier()
    t0 = time.perf_counter()
    res = greedy_sharded(x[a:b], a, len(x), k, start)
    if rank == 0:
        Path(result).write_text(
            json.dumps({"seconds": time.perf_counter() - t0, "picks": res.indices.tolist()})
        )
    dist.destroy_process_group()


def coreset(store: Path, tmp: Path, k: int) -> dict:
    from exdd_core.banks.build import project_store
    from exdd_core.banks.coreset import greedy_coreset, start_index

    x = project_store(Store(store), 128, 0)
    np.save(tmp / "proj.npy", x)
    t0 = time.perf_counter()
    single = greedy_coreset(x, k, seed=0, method="auto")
    t_single = time.perf_counter() - t0
    result = tmp / "coreset.json"
    mp.start_processes(
        _rank_coreset, args=(2, _free_port(), str(tmp / "proj.npy"), k, start_index(len(x), 0), str(result)),
        nprocs=2, start_method="spawn",
    )  # fmt: skip
    sharded = json.loads(result.read_text())
    return {
        "rows": len(x),
        "k": k,
        "single_s": t_single,
        "sharded_2_s": sharded["seconds"],
        "same_picks": sharded["picks"] == single.indices.tolist(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=24, help="images per measurement (default 24)")
    ap.add_argument("--coreset-k", type=int, default=500, help="coreset picks for the sharded comparison")
    add_device_arg(ap)
    args = ap.parse_args()
    device = resolve(args.device)
    torch.set_num_threads(1)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} on {machine(device)}")
    with tempfile.TemporaryDirectory(prefix="exdd-throughput-") as tmp_name:
        tmp = Path(tmp_name)
        records = make_images(tmp, args.images)
        figures = {}
        for batch in (1, 8):
            figures[f"ours_b{batch}"] = ours(records, tmp / f"b{batch}.zarr", batch, device)
            figures[f"bare_b{batch}"] = bare(records, batch, device)
            print(
                f"batch {batch}: ours {figures[f'ours_b{batch}']:.2f} img/s, bare timm forward "
                f"{figures[f'bare_b{batch}']:.2f} img/s (1 thread, {device})"
            )
        overhead = figures["bare_b1"] / figures["ours_b1"]
        scaling = None
        if device == "cpu":
            one = processes(tmp, args.images, 1, tmp / "p1.zarr")
            two = processes(tmp, args.images, 2, tmp / "p2.zarr")
            same = np.array_equal(Store(tmp / "p1.zarr").read_all(), Store(tmp / "p2.zarr").read_all())
            scaling = two / one
            print(
                f"sharded extraction: 1 process {one:.2f} img/s, 2 processes {two:.2f} img/s, same store {same}"
            )
            machine_scaling = bare_scaling(tmp, args.images)
            print(f"the machine's own 2-process scaling (bare forwards, no I/O): {machine_scaling:.3f}")
        c = coreset(tmp / "b1.zarr", tmp, args.coreset_k)
        print(
            f"coreset of {c['k']} from {c['rows']} rows (128-d): single process {c['single_s']:.2f} s, "
            f"2 ranks (gloo) {c['sharded_2_s']:.2f} s"
        )
    print(f"extract_overhead_vs_bare_forward: {overhead:.3f}")
    print(f"two_process_scaling: {'not measured (CPU only)' if scaling is None else f'{scaling:.3f}'}")
    print(f"distributed_coreset_same_picks: {str(c['same_picks']).lower()}")


if __name__ == "__main__":
    main()
