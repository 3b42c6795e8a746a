"""Sharded stages on 2 CPU processes (gloo, loopback only, a fixed port range, a timeout): the same results
as one process."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from exdd_core.banks import greedy_plain
from exdd_core.banks.distributed import shard_bounds
from exdd_core.runtime import distributed
from tests import dist_worker

PORTS = range(29650, 29700)


def free_port() -> int:
    return distributed.free_port(PORTS)


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


def test_sharded_knn_equals_one_search_of_the_whole_bank(tmp_path: Path) -> None:
    from exdd_core.banks.knn import Bank

    rng = np.random.default_rng(5)
    x = rng.normal(size=(301, 8)).astype(np.float32)
    x[200:210] = x[:10]  # exact duplicates across the two shards: ties broken by the lower index
    q = np.concatenate([rng.normal(size=(40, 8)), x[:5]]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "q.npy", q)
    want_d, want_i = Bank(x).knn(q, 3)
    out = str(tmp_path / "knn")
    mp.start_processes(
        dist_worker.knn,
        args=(2, free_port(), str(tmp_path / "x.npy"), str(tmp_path / "q.npy"), 3, out),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for rank in range(2):
        got = np.load(f"{out}.{rank}.npz")
        np.testing.assert_allclose(got["d"], want_d.numpy(), rtol=0, atol=1e-5)
        # the same neighbours; between exact twins (equal distances) the sharded search takes the lower
        # index first, where one search's order among ties is unspecified
        np.testing.assert_array_equal(np.sort(got["i"], 1), np.sort(want_i.numpy(), 1))
        twins = np.isclose(got["d"][:, :1], got["d"][:, 1:2], rtol=0, atol=1e-6)[:, 0]
        assert twins.any() and np.all(got["i"][twins, 0] < got["i"][twins, 1])


@pytest.mark.parametrize("mode", ["fused", "paper"])
def test_the_model_on_sharded_banks_scores_as_on_whole_banks(tmp_path: Path, mode: str) -> None:
    """k-NN with the bank sharded over 2 ranks (banks.distributed.ShardedBank) behind the one model: every
    score, both maps and the bank scales equal those of the model on the whole banks. Duplicate rows across
    the shards make ties; the neighbour tables (reweighting) need rows from the other rank."""
    from exdd_core.scoring.model import ExddModel, ScoringSettings

    rng = np.random.default_rng(11)
    normal = rng.normal(size=(97, 8)).astype(np.float32)
    normal[60:66] = normal[:6]
    defect = (rng.normal(size=(41, 8)) + 1.5).astype(np.float32)
    images = rng.normal(size=(5, 20, 8)).astype(np.float32)
    images[1, :3] = normal[62:65]  # patches exactly on (duplicated) bank rows
    scoring = {
        "mode": mode, "neighbors": 3, "eps": 1e-6, "sigma": 1.0, "map_reweight": True, "map_8bit": False,
        "fusion": {"form": "tau", "lam": 0.7, "topk": 1},
    }  # fmt: skip
    want = dist_worker.scored(
        ExddModel(normal, defect, ScoringSettings.from_params(scoring), (16, 20), (4, 5)), images
    )
    np.savez(tmp_path / "data.npz", normal=normal, defect=defect, images=images, scoring=json.dumps(scoring))
    out = str(tmp_path / "model")
    mp.start_processes(
        dist_worker.sharded_model,
        args=(2, free_port(), str(tmp_path / "data.npz"), out),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    for rank in range(2):
        got = np.load(f"{out}.{rank}.npz")
        for key, value in want.items():
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)
