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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from exdd_core.runtime.errors import InputError

PARTIAL_SUFFIX = ".partial"


class ScoresCsv:
    """Rows of `final` (a CSV with `columns`), appended to its partial file and published by `publish`.

    `keep(row)`: with `resume`, which earlier rows still stand (their image is in this run, scored with the
    same threshold); rows that recorded an error, and rows cut short by a crash, are always scored again."""

    def __init__(
        self, final: Path, columns: Sequence[str], resume: bool, keep: Callable[[dict], bool] = lambda r: True
    ) -> None:
        self.final = Path(final)
        self.partial = self.final.with_name(self.final.name + PARTIAL_SUFFIX)
        self.columns = list(columns)
        self.kept = [r for r in self._previous_rows() if keep(r)] if resume else []
        self.done = {r["image"] for r in self.kept}
        self.final.parent.mkdir(parents=True, exist_ok=True)
        # the kept rows go to a fresh file that replaces the partial in one rename: a crash while they are
        # rewritten loses nothing; new rows are then appended to it
        tmp = self.partial.with_name(self.partial.name + ".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.kept)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.partial)
        self._file = self.partial.open("a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns)

    def _previous_rows(self) -> list[dict[str, Any]]:
        """Complete, scored rows of the partial file (else of the finished one)."""
        source = self.partial if self.partial.is_file() else self.final
        if not source.is_file():
            return []
        with source.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or "image" not in reader.fieldnames:
                raise InputError(
                    f"{source}: not a scores.csv of `exdd score` (no `image` column); cannot resume"
                )
            rows = [r for r in reader if _complete(r, len(reader.fieldnames))]
        return [{c: r.get(c, "") or "" for c in self.columns} for r in rows]

    def add(self, row: dict[str, Any]) -> None:
        """Append one image's row and flush it to disk before the next image is scored."""
        self._writer.writerow({c: row.get(c, "") for c in self.columns})
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


def _complete(row: dict[str, Any], width: int) -> bool:
    """A scored row written whole: every field present, no error, and a score that reads as a number (a row
    cut short by a power loss has missing or truncated fields)."""
    if len(row) != width or None in row.values() or row.get(None) or not row.get("image") or row.get("error"):
        return False
    try:
        float(row.get("exdd", ""))
    except ValueError:
        return False
    return True
