"""Running a stage on several processes with torch.distributed (gloo on CPUs, NCCL on GPUs), launched by
torchrun. How many processes is an execution setting, not a param: results do not depend on it, so changing
it must not make DVC rerun anything. It comes from the environment (design.md, "Scaling past one process"):

    EXDD_NPROC=4 dvc repro          # each heavy stage relaunches itself under torchrun with 4 processes
    torchrun --nproc-per-node 4 stages/features.py normal    # or launch a stage by hand (or under SLURM)

Without either, a stage runs in one process, as always.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

NPROC_ENV = "EXDD_NPROC"
PORT_ENV = "EXDD_DIST_PORT"  # optional: the rendezvous port (default: a free one of PORT_RANGE)
PORT_RANGE = range(29500, 29600)


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


def requested_nproc() -> int:
    value = os.environ.get(NPROC_ENV, "1")
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        from exdd_core.runtime.errors import ParamError

        raise ParamError(f"{NPROC_ENV}={value!r}: expected a whole number of processes >= 1")
    return n


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
    (one node, loopback rendezvous) and return its exit code; else None (run here, in one process)."""
    n = requested_nproc()
    if n == 1 or "RANK" in os.environ:
        return None
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", str(n),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *sys.argv,
    ]  # fmt: skip
    return subprocess.call(cmd)


def init(device: str) -> Ranks:
    """Join the process group when launched by torchrun (NCCL for CUDA, gloo otherwise)."""
    r = ranks()
    if r.world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            nccl = device.startswith("cuda")
            if nccl:  # object collectives on NCCL use the current device: this rank's GPU
                import torch

                torch.cuda.set_device(r.local_rank)
            dist.init_process_group("nccl" if nccl else "gloo")
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


def run_stage_sharded(name: str, body: Callable[[], str]) -> None:
    """A stage's entry point when it can run sharded: with EXDD_NPROC > 1 (and not yet under torchrun) the
    same command again under torchrun, else the stage itself (runlog.run_stage), leaving the process group
    cleanly either way."""
    from exdd_core.runtime.runlog import run_stage

    code = relaunch_if_requested()
    if code is not None:
        sys.exit(code)
    try:
        run_stage(name, body)
    finally:
        finish()
