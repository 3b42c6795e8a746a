"""`exdd score`'s scores.csv, written as the images are scored, so a line loses nothing.

Why not one atomic write at the end: a command killed halfway (a power cut, `kill -9`, a full disk on the
last image) would lose every score it had computed. Each row is appended and flushed to
`<out>/scores.csv.partial` as soon as its image is scored; when every image has its row the partial file is
renamed to `scores.csv` in one step, so `scores.csv` is always complete. `--resume` keeps the scored rows of a
partial (or finished) file and scores only the images they lack; rows that recorded an error are retried.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exdd_core.runtime.errors import InputError

PARTIAL_SUFFIX = ".partial"


class ScoresCsv:
    """Rows of `final` (a CSV with `columns`), appended to its partial file and published by `publish`."""

    def __init__(self, final: Path, columns: Sequence[str], resume: bool) -> None:
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + PARTIAL_SUFFIX)
        self.columns = list(columns)
        kept = self._previous_rows() if resume else []
        self.kept = kept  # rows of an earlier run that --resume keeps
        self.done = {r["image"] for r in kept}
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.partial.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow(row)
        self._sync()

    def _previous_rows(self) -> list[dict[str, Any]]:
        """The rows a resumed run keeps: those of the partial file (else of the finished one) without error."""
        source = self.partial if self.partial.is_file() else self.final
        if not source.is_file():
            return []
        with source.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise InputError(
                    f"{source}: not a scores.csv of `exdd score` (no `image` column); cannot resume"
                )
            rows = [r for r in reader if r.get("image") and not r.get("error")]
        return [{c: r.get(c, "") or "" for c in self.columns} for r in rows]

    def add(self, row: dict[str, Any]) -> None:
        """Append one image's row and flush it to disk before the next image is scored."""
        self._writer.writerow({c: row.get(c, "") for c in self.columns})
        self._sync()

    def _sync(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def publish(self) -> None:
        """Every image has its row: the partial file becomes scores.csv in one rename."""
        self._file.close()
        os.replace(self.partial, self.final)

    def close(self) -> None:
        """Stop without publishing (the partial file keeps the rows for --resume)."""
        if not self._file.closed:
            self._file.close()
