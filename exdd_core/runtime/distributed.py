"""Running a stage on several processes with torch.distributed (gloo on CPUs, NCCL on GPUs), launched by
torchrun. How many processes is an execution setting, not a param: results do not depend on it, so changing
it must not make DVC rerun anything. It comes from the environment (design.md, "Scaling past one process"):

    EXDD_NPROC=4 dvc repro          # each heavy stage relaunches itself under torchrun with 4 processes
    torchrun --nproc-per-node 4 stages/features.py normal    # or launch a stage by hand (or under SLURM)

Without either, a stage runs in one process, as always.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from exdd_core.runtime.errors import ParamError, RankStopped

T = TypeVar("T")

NPROC_ENV = "EXDD_NPROC"
PORT_ENV = "EXDD_DIST_PORT"  # optional: the rendezvous port (default: a free one of PORT_RANGE)
PORT_RANGE = range(29500, 29600)
# evaluate under torchrun: 1 = keep each bank sharded over the ranks (ShardedBank: for banks no single device
# holds; every rank scores every image), else each rank holds the whole banks and scores a shard of images.
SHARD_BANKS_ENV = "EXDD_SHARD_BANKS"


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def ranks() -> Ranks:
    """This process's rank in the torchrun world (0 of 1 when not launched by torchrun)."""
    env = os.environ
    return Ranks(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def shard_bounds(n: int, world: int, rank: int) -> tuple[int, int]:
    """The contiguous items [a, b) of `rank` out of n: the first n % world ranks get one more."""
    base, extra = divmod(n, world)
    a = rank * base + min(rank, extra)
    return a, a + base + (rank < extra)


def gather_shards(
    fn: Callable[[int, int], T], n: int, ranks: Ranks | None, concat: Callable[[list[T]], T]
) -> T | None:
    """Run `fn(lo, hi)` on this rank's contiguous shard of range(n); rank 0 gets every rank's result joined
    in rank order by `concat` (what one process computes with fn(0, n)), the other ranks None. Without a group
    (None, or a world of 1) it is fn(0, n): the library's functions stay free of ranks."""
    if ranks is None or ranks.world == 1:
        return fn(0, n)
    import torch.distributed as dist

    mine = fn(*shard_bounds(n, ranks.world, ranks.rank))
    parts: list[T] | None = [None] * ranks.world if ranks.main else None  # type: ignore[list-item]
    dist.gather_object(mine, parts, dst=0)
    return concat(parts) if ranks.main and parts is not None else None


def requested_nproc() -> int:
    value = os.environ.get(NPROC_ENV, "1")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ParamError(f"{NPROC_ENV}={value!r}: expected a whole number of processes >= 1")
    return n


def shard_banks() -> bool:
    """$EXDD_SHARD_BANKS: an execution setting like the number of processes (the scores are the same)."""
    value = os.environ.get(SHARD_BANKS_ENV, "0")
    if value not in ("0", "1"):
        raise ParamError(f"{SHARD_BANKS_ENV}={value!r}: expected 1 (shard the banks over the ranks) or 0")
    return value == "1"


def free_port(ports: range = PORT_RANGE) -> int:
    """$EXDD_DIST_PORT if set, else the first port of `ports` free on the loopback interface."""
    if os.environ.get(PORT_ENV):
        return int(os.environ[PORT_ENV])
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}; set {PORT_ENV}")


def relaunch_if_requested() -> int | None:
    """When EXDD_NPROC > 1 and this process is not a torchrun worker: run this very command under torchrun
    (one node, loopback rendezvous, in this process) and return its exit code; else None (run here, in one
    process). A failed rank ends the run: torchrun stops the others, and the summary names the rank that
    failed first (its own error is logged above it) instead of torchrun's traceback."""
    n = requested_nproc()
    if n == 1 or "RANK" in os.environ:
        return None
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from exdd_core.runtime.runlog import log, setup_logging

    setup_logging()
    # torchrun would set 1 thread per process with a banner; share the cores out instead (as many as a
    # rank can use without oversubscribing), unless the user chose.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    args = torchrun.parse_args(
        [
            "--nnodes", "1", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
            "--master-port", str(free_port()), *sys.argv,
        ]
    )  # fmt: skip
    stage = Path(sys.argv[0]).name
    try:
        torchrun.run(args)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        log.error(
            "%s: rank %d of %d failed first (exit code %s; its error is above), the other ranks were stopped; "
            "nothing was committed",
            stage, rank, n, failure.exitcode,
        )  # fmt: skip
        return 1
    except SignalException as e:  # Ctrl-C or a scheduler's SIGTERM to this launcher
        log.error(
            "%s: interrupted (%s), the %d ranks were stopped; nothing was committed", stage, e.sigval.name, n
        )
        return 130
    return 0


def init(device: str) -> Ranks:
    """Join the process group when launched by torchrun: gloo on CPUs; on GPUs NCCL for CUDA tensors *and*
    gloo for CPU ones (the coreset's and k-NN's small collectives, object gathers and barriers run on CPU
    tensors, which NCCL alone refuses)."""
    r = ranks()
    if r.world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = device.startswith("cuda")
            if cuda:
                import torch

                torch.cuda.set_device(r.local_rank)
            dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    return r


def local_device(device: str, r: Ranks) -> str:
    """cuda -> cuda:<local rank> when several processes share a node's GPUs; anything else as is."""
    return f"cuda:{r.local_rank}" if device == "cuda" and r.world > 1 else device


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _peer_died(e: BaseException) -> bool:
    """A collective failed because another rank's process is gone (gloo: the connection closed)."""
    text = str(e)
    return any(m in text for m in ("Connection closed by peer", "Connection reset by peer", "Broken pipe"))


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise RankStopped(
        "stopped by torchrun because another rank failed (its error is above); nothing was committed"
    )


def run_stage_sharded(name: str, body: Callable[[], str]) -> None:
    """A stage's entry point when it can run sharded: with EXDD_NPROC > 1 (and not yet under torchrun) the
    same command again under torchrun, else the stage itself (runlog.run_stage), leaving the process group
    cleanly either way. Under torchrun, a rank whose peer died, or which torchrun stops (SIGTERM) because
    another failed, ends with one line saying so: its open writers abort (runtime.atomic), nothing is
    committed."""
    from exdd_core.runtime.runlog import run_stage

    code = relaunch_if_requested()
    if code is not None:
        sys.exit(code)
    r = ranks()

    def guarded() -> str:
        try:
            return body()
        except RuntimeError as e:
            if r.world > 1 and _peer_died(e):
                raise RankStopped("another rank failed (its error is above); nothing was committed") from None
            raise

    if r.world > 1:
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        label = f"{name} (rank {r.rank} of {r.world})" if r.world > 1 else None
        run_stage(name, guarded, label=label, sharded=True)
    finally:
        if r.world > 1:  # the stage is over: a SIGTERM now (torchrun ending the group) just ends the process
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        finish()
