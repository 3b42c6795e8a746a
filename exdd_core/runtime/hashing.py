"""The one file hasher (streamed, never a whole file in memory) and the digests built on it.

Used for: manifest hashes in feature-store provenance, the KSDD2 archive's MD5, the backbone weights id,
the synthesis cache's and the runner cache's keys (arrays, source files, JSON parts) and the SDXL model-folder
fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

BLOCK = 1 << 20


def _stream(f: BinaryIO, h: hashlib._Hash, limit: int | None = None) -> None:
    """Feed `h` from `f` in BLOCK-sized reads, at most `limit` bytes (all when None)."""
    left = limit
    while left is None or left > 0:
        chunk = f.read(BLOCK if left is None else min(BLOCK, left))
        if not chunk:
            return
        h.update(chunk)
        if left is not None:
            left -= len(chunk)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, streamed."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        _stream(f, h)
    return h.hexdigest()


def file_fingerprint(path: Path, full_limit: int, part: int) -> str:
    """SHA-256 of a file's size and bytes; for files over `full_limit`, of its size, first and last `part`
    bytes only: multi-GB weights are fingerprinted in a fraction of a second, and two different trainings
    differ in their first megabytes."""
    size = Path(path).stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= full_limit:
            _stream(f, h)
        else:
            _stream(f, h, part)
            f.seek(size - part)
            _stream(f, h, part)
    return h.hexdigest()


def files_digest(*paths: Path) -> str:
    """SHA-256 over several files' names and contents (a CPU backend's code identity)."""
    h = hashlib.sha256()
    for p in paths:
        h.update(Path(p).name.encode() + b"\0")
        with open(p, "rb") as f:
            _stream(f, h)
        h.update(b"\0")
    return h.hexdigest()


def array_digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes: two inputs share a digest only if they are identical."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def json_digest(parts: dict[str, Any]) -> str:
    """SHA-256 of `parts` as canonical JSON (sorted keys, no whitespace): the same parts always give the same
    key. A cache key: only plain JSON values are accepted (TypeError otherwise)."""
    try:
        text = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise TypeError(f"cache key parts must be plain JSON values, got {parts!r}: {e}") from e
    return hashlib.sha256(text.encode()).hexdigest()
