"""Image-at-a-time work on every core, results in input order: decoding, rendering and PNG encoding release
the GIL (PIL, zlib, numpy's FFT), so threads scale them without processes or pickling."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# Beyond a few threads the GIL-held parts (Python glue between the C calls) stop it scaling.
MAX_THREADS = 4


def cpu_threads() -> int:
    """The CPU threads a run may use: $OMP_NUM_THREADS when set (as torch reads it), else every core."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else os.cpu_count() or 1


def ordered_map(fn: Callable[[T], R], items: Iterable[T], threads: int | None = None) -> Iterator[R]:
    """fn over items on `threads` threads (default: `cpu_threads`, at most MAX_THREADS), yielding results in
    the order of `items`; the first exception raised by fn is raised here."""
    threads = threads or min(MAX_THREADS, cpu_threads())
    if threads == 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="exdd-io") as pool:
        yield from pool.map(fn, items)
