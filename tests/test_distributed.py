"""Sharded stages on 2 CPU processes (gloo, loopback only, a fixed port range, a timeout): the same results
as one process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from exdd_core.banks.distributed import shard_bounds
from exdd_core.banks.greedy import greedy_plain
from tests import dist_worker

PORTS = range(29650, 29700)


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def test_shard_bounds_cover_every_row_once() -> None:
    for n in (0, 1, 7, 10, 101):
        for world in (1, 2, 3, 5):
            spans = [shard_bounds(n, world, r) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(spans[r][1] == spans[r + 1][0] for r in range(world - 1))


@pytest.mark.parametrize(("n", "ties"), [(401, False), (300, True)])
def test_sharded_coreset_picks_equal_the_plain_greedy(tmp_path: Path, n: int, ties: bool) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 16)).astype(np.float32)
    if ties:  # duplicated rows: equal distances on both ranks, the lowest global index must win
        x[150:] = x[:150]
    np.save(tmp_path / "x.npy", x)
    want = greedy_plain(x, 60, start=7)
    out = str(tmp_path / "picks")
    mp.start_processes(
        dist_worker.coreset,
        args=(2, free_port(), str(tmp_path / "x.npy"), 60, 7, out),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for rank in range(2):
        got = json.loads(Path(f"{out}.{rank}").read_text())
        assert got["picks"] == want.indices.tolist()
        assert got["radius"] == pytest.approx(want.radius, rel=1e-6)
