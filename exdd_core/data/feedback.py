"""Verdicts from the line, kept as data the pipeline depends on (design.md, "Learning from the line").

    <feedback>/defect/   images/<id>.<ext>, masks/<id>.png, manifest.csv   confirmed defects -> M_P
    <feedback>/normal/   images/<id>.<ext>, manifest.csv                   false alarms that were good parts -> M_N

Each manifest is a prepared manifest (data.records) with the verdict's columns after it: when, an optional
note, where the file came from and its SHA-256. A manifest is only ever appended to, so no verdict is lost
or rewritten; the same file given again is skipped, and a file given both verdicts is refused."""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from exdd_core.data.imageio import image_size_of, load_mask
from exdd_core.data.records import FEEDBACK_FIELDS, MANIFEST_FIELDS, TYPE_FIELD
from exdd_core.runtime.atomic import atomic_path
from exdd_core.runtime.choices import VERDICTS
from exdd_core.runtime.errors import InputError
from exdd_core.runtime.hashing import file_digest

COLUMNS = (*MANIFEST_FIELDS, TYPE_FIELD, *FEEDBACK_FIELDS)


@dataclass(frozen=True)
class Added:
    """What one `add_verdicts` did: the new ids, and (file, why) for each file skipped."""

    ids: list[str]
    skipped: list[tuple[Path, str]]


def manifest_path(root: Path, verdict: str) -> Path:
    if verdict not in VERDICTS:
        raise InputError(f"verdict {verdict!r}: expected one of {', '.join(VERDICTS)}")
    return Path(root) / verdict / "manifest.csv"


def read_verdicts(root: Path) -> list[dict[str, str]]:
    """Every verdict row of both manifests (defect first), as the CSV holds it."""
    rows: list[dict[str, str]] = []
    for verdict in VERDICTS:
        path = manifest_path(root, verdict)
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise InputError(f"{path}: expected columns {COLUMNS}, found {reader.fieldnames}")
            rows.extend(reader)
    return rows


def init_feedback(root: Path) -> None:
    """Both manifests with their header and no verdict (what the pipeline reads before the first one)."""
    for verdict in VERDICTS:
        path = manifest_path(root, verdict)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(",".join(COLUMNS) + "\n")


def _check(images: list[Path], masks: list[Path], image_size: tuple[int, int], verdict: str) -> None:
    """Sizes as the banks' (H, W), masks one per image (defects only) and non-empty, or InputError."""
    if masks and verdict != "defect":
        raise InputError("--mask goes with --defect only: a good part has no defect to outline")
    if masks and len(masks) != len(images):
        raise InputError(f"{len(masks)} masks for {len(images)} images: give one --mask per image, in order")
    h, w = image_size
    for i, path in enumerate(images):
        if image_size_of(path) != (h, w):
            got = image_size_of(path)
            raise InputError(
                f"{path} is {got[0]}x{got[1]} (H x W), but the banks were built from {h}x{w} images; "
                f"resize it to {h}x{w} first (as prepare does) so its patches match the banks' scale"
            )
        if masks:
            if not load_mask(masks[i], image_size_of_source=(h, w)).any():
                raise InputError(f"{masks[i]}: the mask marks no pixel; leave it out to use a pseudo-mask")


def add_verdicts(
    root: Path,
    verdict: str,
    images: list[Path],
    image_size: tuple[int, int],
    *,
    masks: list[Path] | None = None,
    note: str = "",
    defect_type: str = "",
    now: datetime | None = None,
) -> Added:
    """Copy `images` (and their masks) into `root`/`verdict`/ and append one manifest row each.

    Every file is checked before anything is written; the copies are written atomically before the rows that
    name them, and the rows are appended in one write and synced."""
    path = manifest_path(root, verdict)
    masks = list(masks or [])
    _check(images, masks, image_size, verdict)
    init_feedback(root)
    known = {r["sha256"]: r for r in read_verdicts(root)}
    stamp = (now or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    n = sum(1 for r in known.values() if r["verdict"] == verdict)
    rows, skipped = [], []
    for i, image in enumerate(images):
        digest = file_digest(image)
        if digest in known:
            seen = known[digest]
            if seen["verdict"] != verdict:
                raise InputError(
                    f"{image}: already recorded as {seen['verdict']} ({seen['id']}, from {seen['source']}); "
                    "one image has one verdict"
                )
            skipped.append((Path(image), f"already recorded as {seen['id']}"))
            continue
        rid = f"feedback_{verdict}_{n + len(rows):04d}"
        rows.append(_copy_in(path.parent, rid, Path(image), masks[i] if masks else None, verdict))
        rows[-1].update(defect_type=defect_type if verdict == "defect" else "", verdict=verdict)
        rows[-1].update(time=stamp, note=note)
        rows[-1].update(source=str(Path(image).resolve()), sha256=digest)
        known[digest] = rows[-1]
    if rows:
        _append(path, rows)
    return Added([r["id"] for r in rows], skipped)


def _copy_in(folder: Path, rid: str, image: Path, mask: Path | None, verdict: str) -> dict[str, str]:
    """Copy one image (bytes as given) and its mask into `folder`; the manifest row's record columns."""
    rel_image = Path("images") / f"{rid}{image.suffix.lower()}"
    _copy(image, folder / rel_image)
    rel_mask = ""
    if mask is not None:
        rel_mask = (Path("masks") / f"{rid}{Path(mask).suffix.lower()}").as_posix()
        _copy(Path(mask), folder / rel_mask)
    label = "1" if verdict == "defect" else "0"
    return {"id": rid, "split": "train", "label": label, "image": rel_image.as_posix(), "mask": rel_mask}


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _append(path: Path, rows: list[dict[str, str]]) -> None:
    """Append rows to a manifest in one write, synced: the rows already there are never rewritten."""
    buf = io.StringIO()
    csv.DictWriter(buf, COLUMNS, lineterminator="\n").writerows(rows)
    with open(path, "a", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
