"""Write-then-rename helpers: an output appears complete or not at all, so DVC never caches half of one.

A stage killed with SIGKILL leaves at most a `.<name>.partial-*` sibling, which the next run removes.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def partial_prefix(final: Path) -> str:
    return f".{final.name}.partial-"


def clean_stale_partials(final: Path) -> None:
    """Remove leftovers of interrupted writes of `final` (any process)."""
    parent = final.parent
    if parent.is_dir():
        for p in parent.glob(partial_prefix(final) + "*"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def replace_path(tmp: Path, final: Path) -> None:
    """Move a finished temporary file or folder into place, replacing what was there."""
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(tmp, final)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to `final`; on success it becomes `final`, on error it vanishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(final)
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(final), dir=final.parent))
    try:
        yield tmp
        replace_path(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary sibling."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{partial_prefix(path)}{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
