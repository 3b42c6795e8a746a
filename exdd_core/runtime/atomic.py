"""The one write-then-rename helper: an output appears complete or not at all, so DVC never caches half of one.

Every temporary sibling is named `.<name>.partial-<pid>-<random>`, so a writer killed with SIGKILL leaves a
leftover whose owner can be checked: `clean_dead_partials` (run at every stage start by `runlog.run_stage`)
removes the leftovers of writers that are no longer alive, wherever they are in the workspace, and never
touches those of a live process (another rank, a concurrent writer).
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_PARTIAL = re.compile(r"^\..+\.partial-(\d+)(?:-[0-9a-f]+)?$")
# Folders never scanned for leftovers: not ours, or large and never written by a stage.
_SKIP_DIRS = {".git", ".venv", ".dvc", ".exdd-cache", "node_modules", "__pycache__", ".pytest_cache"}


def partial_prefix(final: Path) -> str:
    return f".{Path(final).name}.partial-"


def partial_path(final: Path) -> Path:
    """A fresh temporary sibling of `final` that names this process as its writer."""
    final = Path(final)
    return final.with_name(f"{partial_prefix(final)}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale_partials(final: Path) -> None:
    """Remove leftovers of interrupted writes of `final` by processes that are no longer running."""
    parent = Path(final).parent
    if parent.is_dir():
        for p in parent.glob(partial_prefix(Path(final)) + "*"):
            m = _PARTIAL.match(p.name)
            if m is None or not _alive(int(m.group(1))):
                _remove(p)


def clean_dead_partials(root: Path = Path("."), max_depth: int = 4) -> list[Path]:
    """Remove every `.<name>.partial-<pid>-*` under `root` whose writer is dead; returns what was removed.

    Called at every stage start: after a SIGKILL, `dvc repro` may restore the killed stage's output from the
    run-cache without running that stage again, and its partial (GBs of features at KSDD2 scale) would stay.
    """
    removed: list[Path] = []
    root = Path(root)
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for e in entries:
            m = _PARTIAL.match(e.name)
            if m is not None:
                if not _alive(int(m.group(1))):
                    _remove(Path(e.path))
                    removed.append(Path(e.path))
            elif e.is_dir(follow_symlinks=False) and depth < max_depth and e.name not in _SKIP_DIRS:
                stack.append((Path(e.path), depth + 1))
    return removed


def replace_path(tmp: Path, final: Path) -> None:
    """Move a finished temporary file or folder into place, replacing what was there."""
    if final.is_dir() and not final.is_symlink():
        shutil.rmtree(final)
    elif final.exists() or final.is_symlink():
        final.unlink()
    os.replace(tmp, final)


class PendingPath:
    """A temporary sibling of `final` (an empty folder when `directory`, else a path to write one file to)
    that becomes `final` on `commit()` and vanishes on `abort()`. For writers that outlive one `with` block
    (the store writer); everything else uses `atomic_path`."""

    def __init__(self, final: Path, *, directory: bool = False) -> None:
        self.final = Path(final)
        self.final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_partials(self.final)
        self.tmp = partial_path(self.final)
        if directory:
            self.tmp.mkdir()

    def commit(self) -> Path:
        replace_path(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        _remove(self.tmp)


@contextmanager
def atomic_path(final: Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `final` (see PendingPath); on success it replaces `final`, on any error
    (or interrupt) it is removed."""
    pending = PendingPath(final, directory=directory)
    try:
        yield pending.tmp
        pending.commit()
    except BaseException:
        pending.abort()
        raise


def atomic_dir(final: Path) -> Iterator[Path]:
    """`atomic_path(final, directory=True)`: a whole output folder at once."""
    return atomic_path(final, directory=True)


@contextmanager
def staging_dir(final: Path, elsewhere: Mapping[str, Path] | None = None) -> Iterator[Path]:
    """A temporary folder beside `final` to write a stage's outputs into; on success each entry is moved
    into `final` (replacing what was there), except the names in `elsewhere`, which go to the path it gives
    (a stage's metrics file). Other files already in `final` (DVC's .gitignore) stay. On error nothing moves."""
    final, elsewhere = Path(final), dict(elsewhere or {})
    pending = PendingPath(final.parent / f"{final.name}-staging", directory=True)
    try:
        yield pending.tmp
        final.mkdir(parents=True, exist_ok=True)
        for entry in sorted(pending.tmp.iterdir()):
            replace_path(entry, Path(elsewhere.get(entry.name, final / entry.name)))
    finally:
        pending.abort()  # empty after success; everything staged after a failure


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a small text file through a temporary sibling."""
    write_bytes_atomic(path, text.encode())


def write_csv_atomic(path: Path, rows: list[dict[str, Any]], fieldnames: Sequence[str] | None = None) -> None:
    """The one CSV writer: rows of dicts, header from `fieldnames` (default: the first row's keys); an empty
    list with no fieldnames writes an empty file."""
    names = list(fieldnames) if fieldnames is not None else (list(rows[0]) if rows else [])
    buf = io.StringIO()
    if names:
        w = csv.DictWriter(buf, fieldnames=names, lineterminator="\r\n")
        w.writeheader()
        w.writerows(rows)
    write_text_atomic(path, buf.getvalue())
