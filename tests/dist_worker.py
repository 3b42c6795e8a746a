"""Bodies of the 2-process gloo tests (run under torch.multiprocessing): each rank writes its result to a
file, which the test compares with the single-process result."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=__import__("datetime").timedelta(seconds=120)
    )


def coreset(rank: int, world: int, port: int, x_path: str, k: int, start: int, out: str) -> None:
    from exdd_core.banks.distributed import greedy_sharded, shard_bounds

    init(rank, world, port)
    try:
        x = np.load(x_path)
        a, b = shard_bounds(len(x), world, rank)
        res = greedy_sharded(x[a:b], a, len(x), k, start)
        Path(f"{out}.{rank}").write_text(json.dumps({"picks": res.indices.tolist(), "radius": res.radius}))
    finally:
        dist.destroy_process_group()


def knn(rank: int, world: int, port: int, x_path: str, q_path: str, k: int, out: str) -> None:
    from exdd_core.banks.distributed import knn_sharded
    from exdd_core.banks.knn import Bank
    from exdd_core.runtime.distributed import shard_bounds

    init(rank, world, port)
    try:
        x, q = np.load(x_path), np.load(q_path)
        a, b = shard_bounds(len(x), world, rank)
        d, i = knn_sharded(Bank(x[a:b]), a, q, k)
        np.savez(f"{out}.{rank}.npz", d=d.numpy(), i=i.numpy())
    finally:
        dist.destroy_process_group()


def sharded_store(rank: int, world: int, port: int, data: str, out: str, chunks: tuple[int, int]) -> None:
    """Each rank writes its span of the images in `data` (an .npz of rows, positions, counts) into one store."""
    from exdd_core.features.sharded_store import ShardedStoreWriter
    from exdd_core.runtime.distributed import Ranks, shard_bounds

    init(rank, world, port)
    try:
        z = np.load(data)
        counts = z["counts"]
        offsets = np.concatenate([[0], np.cumsum(counts)]).tolist()
        images = [f"im{i}" for i in range(len(counts))]
        lo, hi = shard_bounds(len(counts), world, rank)
        with ShardedStoreWriter(
            Path(out), z["rows"].shape[1], "float32", {"backbone": "x"}, images, offsets, (lo, hi),
            Ranks(rank, world, rank), chunk_rows=chunks[0], index_chunk_rows=chunks[1],
        ) as w:  # fmt: skip
            for i in range(lo, hi):
                a, b = offsets[i], offsets[i + 1]
                w.add(images[i], z["rows"][a:b], z["positions"][a:b])
    finally:
        dist.destroy_process_group()


def sharded_model(rank: int, world: int, port: int, data: str, out: str) -> None:
    """The scoring model on banks sharded over the ranks: every rank scores every image of `data`."""
    from exdd_core.banks.distributed import ShardedBank
    from exdd_core.runtime.distributed import shard_bounds
    from exdd_core.scoring.model import ExddModel, ScoringSettings

    init(rank, world, port)
    try:
        z = np.load(data)
        banks = []
        for name in ("normal", "defect"):
            rows = z[name]
            a, b = shard_bounds(len(rows), world, rank)
            banks.append(ShardedBank(rows[a:b], a, len(rows)))
        settings = ScoringSettings.from_params(json.loads(str(z["scoring"])))
        model = ExddModel(banks[0], banks[1], settings, (16, 20), (4, 5))
        np.savez(f"{out}.{rank}.npz", **scored(model, z["images"]))
    finally:
        dist.destroy_process_group()


def scored(model, images: np.ndarray) -> dict[str, np.ndarray]:
    """Everything the model says of each image: scores of every mode, both maps at image size, its scales."""
    out: dict[str, list] = {"tau": [[model.tau_n, model.tau_p]]}
    for rows in images:
        s = model.score(rows)
        r = s
        out.setdefault("scores", []).append(
            [*(r.exdd[m] for m in sorted(r.exdd)), r.patchcore, r.patchcore_reweighted]
        )
        out.setdefault("exdd_map", []).append(s.exdd_map())
        out.setdefault("pc_map", []).append(s.patchcore_map())
    return {k: np.asarray(v) for k, v in out.items()}
