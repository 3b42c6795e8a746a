"""MVTec AD (one category folder): `train/good/*`, `test/<type>/*` and `ground_truth/<type>/<stem>_mask.png`,
so the pipeline can be pointed at the field's standard benchmark as well as KSDD2."""

from __future__ import annotations

from pathlib import Path

from exdd_core.data.records import ImageRecord
from exdd_core.runtime.choices import IMAGE_SUFFIXES
from exdd_core.runtime.errors import InputError, ParamError

SPLITS = ("train", "test")
GOOD = "good"


def _images_in(folder: Path) -> list[Path]:
    """Image files of a defect-type folder, sorted for a stable order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_for(root: Path, defect_type: str, image: Path) -> Path | None:
    """The ground-truth mask of a defective test image, or None (an image-level label only: evaluate then
    leaves the image out of the pixel metrics and says how many had no mask)."""
    gt_dir = root / "ground_truth" / defect_type
    for suffix in IMAGE_SUFFIXES:
        candidate = gt_dir / f"{image.stem}_mask{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _type_folders(split_dir: Path, split: str) -> list[Path]:
    """`train/good` for train; every defect-type folder of `test/` for test."""
    if split == "train":
        good = split_dir / GOOD
        if not good.is_dir():
            raise InputError(f"{good}: MVTec train folder not found (expected train/good/*.png)")
        return [good]
    return sorted(p for p in split_dir.iterdir() if p.is_dir())


def read_mvtec(root: Path, split: str) -> list[ImageRecord]:
    """Records of one split of an MVTec AD category; ids are `<type>_<stem>` (unique within the split)."""
    if split not in SPLITS:
        raise ParamError(f"MVTec split must be one of {SPLITS}, got {split!r}")
    root = Path(root)
    split_dir = root / split
    if not split_dir.is_dir():
        raise InputError(f"{split_dir}: MVTec split folder not found (expected {root}/{split}/<type>/*.png)")
    records = []
    for type_dir in _type_folders(split_dir, split):
        defect_type = type_dir.name
        label = 0 if defect_type == GOOD else 1
        for image in _images_in(type_dir):
            mask = _mask_for(root, defect_type, image) if label else None
            kind = defect_type if label else None
            records.append(ImageRecord(f"{defect_type}_{image.stem}", split, label, image, mask, kind))
    if not records:
        raise InputError(f"{split_dir}: no images found (expected {', '.join(IMAGE_SUFFIXES)} files)")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError(
            f"{split_dir}: image ids are not unique ({dup}); two files share a stem in one folder?"
        )
    return records
