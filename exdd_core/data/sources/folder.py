"""A generic folder data set, the way factories keep images: a folder of good parts, a folder of rejected
ones, optionally their masks, and optionally known defective parts for training (image-level labels or
masks). All folders are relative to `data.root`, so the whole data set is one DVC dependency.

    data.folder.normal_dir        good images; `normal_test_fraction` of them (seeded) are held out for test
    data.folder.abnormal_dir      defective test images; in subfolders, each subfolder's name is their defect type
    data.folder.mask_dir          optional: masks, matched to any image by stem (`<stem>.png`, `<stem>_mask.*`)
    data.folder.known_defects_dir optional: defective *training* images (masks from mask_dir where present)

Images may be grayscale, 16-bit or RGBA, in any of IMAGE_SUFFIXES; the image loader normalises them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.data.records import ImageRecord
from exdd_core.runtime.choices import IMAGE_SUFFIXES
from exdd_core.runtime.errors import InputError, ParamError

SPLIT_STREAM = 0xF01D  # mixed into the seed: the normal train/test split never shares a random stream


def _images(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{folder}: {what} folder not found (data.folder.* is relative to data.root)")
    found = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in the {what} folder")
    return found


def _mask_index(mask_dir: Path | None) -> dict[str, Path]:
    """stem -> mask file; `<stem>_mask.*` and `<stem>.*` both name the mask of image `<stem>`."""
    if mask_dir is None:
        return {}
    return {p.stem.removesuffix("_mask"): p for p in _images(mask_dir, "mask")}


def _abnormal(folder: Path, masks: dict[str, Path]) -> list[ImageRecord]:
    """Defective test images: those in `folder` itself, and those in each subfolder, whose name is then their
    defect type (`defective/scratch/*.png` -> type `scratch`, id `defect_scratch_<stem>`)."""
    subs = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    if not subs:
        return [
            ImageRecord(f"defect_{p.stem}", "test", 1, p, masks.get(p.stem))
            for p in _images(folder, "abnormal")
        ]
    loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    out = [ImageRecord(f"defect_{p.stem}", "test", 1, p, masks.get(p.stem)) for p in loose]
    for sub in subs:
        out += [
            ImageRecord(f"defect_{sub.name}_{p.stem}", "test", 1, p, masks.get(p.stem), sub.name)
            for p in _images(sub, f"abnormal ({sub.name})")
        ]
    stems = [Path(r.image_path).stem for r in out]
    shared = sorted({s for s in stems if stems.count(s) > 1 and s in masks})
    if shared:  # masks are matched by stem: two defect images with one stem would share one mask
        raise InputError(
            f"{folder}: defect images in different subfolders share the stems {shared[:5]}, and masks are "
            f"matched by stem; rename them so each mask names one image"
        )
    return out


def read_folder(root: Path, spec: dict[str, Any], seed: int) -> list[ImageRecord]:
    """Records of a folder data set (see module doc); ids are `<role>_<stem>`."""
    root = Path(root)
    frac = float(spec["normal_test_fraction"])
    if not 0.0 < frac < 1.0:
        raise ParamError(f"data.folder.normal_test_fraction must be in (0, 1), got {frac}")
    normal = _images(root / spec["normal_dir"], "normal")
    if len(normal) < 2:
        raise InputError(f"{root / spec['normal_dir']}: needs at least 2 normal images (train and test)")
    masks = _mask_index(root / spec["mask_dir"] if spec.get("mask_dir") else None)
    order = np.random.default_rng([int(seed), SPLIT_STREAM]).permutation(len(normal))
    n_test = min(len(normal) - 1, max(1, round(frac * len(normal))))
    test_idx = set(order[:n_test].tolist())
    records = [
        ImageRecord(f"good_{p.stem}", "test" if k in test_idx else "train", 0, p)
        for k, p in enumerate(normal)
    ]
    records += _abnormal(root / spec["abnormal_dir"], masks)
    if spec.get("known_defects_dir"):
        records += [
            ImageRecord(f"known_{p.stem}", "train", 1, p, masks.get(p.stem))
            for p in _images(root / spec["known_defects_dir"], "known defects")
        ]
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError(f"{root}: image ids are not unique ({dup}): two files share a stem in one folder")
    return records
