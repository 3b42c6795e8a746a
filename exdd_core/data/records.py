"""One record type for every data source: an image, its split and label, and its mask (if any)."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from exdd_core.runtime.atomic import write_csv_atomic
from exdd_core.runtime.errors import InputError

MANIFEST_FIELDS = ("id", "split", "label", "image", "mask")
TYPE_FIELD = "defect_type"  # an optional last column
# A verdict from the line (data.feedback) carries these after the type column: the record columns stay first,
# so the features stage reads a feedback manifest like any other.
FEEDBACK_FIELDS = ("verdict", "time", "note", "source", "sha256")
HEADERS = (MANIFEST_FIELDS, (*MANIFEST_FIELDS, TYPE_FIELD), (*MANIFEST_FIELDS, TYPE_FIELD, *FEEDBACK_FIELDS))
# Ids of synthesized images start with this (synthesize writes syn_00000, ...): banks tell synthetic rows by it.
SYNTHETIC_PREFIX = "syn_"


@dataclass(frozen=True)
class ImageRecord:
    """An image of a data set. `label` is 1 for defective, 0 for normal; `mask_path` is None for images
    without a ground-truth mask (normal images, or defective ones of sources without pixel labels)."""

    id: str
    split: str  # "train" or "test"
    label: int
    image_path: Path
    mask_path: Path | None = None
    defect_type: str | None = (
        None  # what the data names the defect (MVTec's test/<type>/, a folder's subfolder)
    )


def write_manifest(records: list[ImageRecord], path: Path, root: Path) -> None:
    """Write records as CSV with paths relative to `root` (so a prepared folder can move with DVC)."""
    typed = any(r.defect_type for r in records)  # the column only where the data names defect types
    rows = [
        {
            "id": r.id,
            "split": r.split,
            "label": r.label,
            "image": Path(r.image_path).relative_to(root).as_posix(),
            "mask": "" if r.mask_path is None else Path(r.mask_path).relative_to(root).as_posix(),
            **({"defect_type": r.defect_type or ""} if typed else {}),
        }
        for r in records
    ]
    write_csv_atomic(path, rows, (*MANIFEST_FIELDS, TYPE_FIELD) if typed else MANIFEST_FIELDS)


def read_manifest(path: Path) -> list[ImageRecord]:
    """Read a manifest written by `write_manifest`; paths are resolved against the manifest's folder."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: manifest not found (run the stage that writes it first)")
    root = path.parent
    out: list[ImageRecord] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) not in HEADERS:
            raise InputError(f"{path}: expected columns {MANIFEST_FIELDS}, found {reader.fieldnames}")
        for row in reader:
            out.append(
                ImageRecord(
                    id=row["id"],
                    split=row["split"],
                    label=int(row["label"]),
                    image_path=root / row["image"],
                    mask_path=(root / row["mask"]) if row["mask"] else None,
                    defect_type=row.get(TYPE_FIELD) or None,
                )
            )
    return out
