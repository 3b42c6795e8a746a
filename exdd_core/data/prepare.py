"""The prepare step: read any data source and write one normalised layout that every later stage reads.

    <out>/train_normal/     images/<id>.png + manifest.csv
    <out>/train_defective/  images/, masks/ (0/255) + manifest.csv
    <out>/test/             images/, masks/ + manifest.csv

Every image is resized to `image_size` (H, W) and converted to 8-bit RGB here, once; masks are resized with
nearest neighbour. Each folder is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from exdd_core.data.imageio import image_size_of, load_image, load_mask, save_png
from exdd_core.data.records import ImageRecord, write_manifest
from exdd_core.runtime.atomic import atomic_dir
from exdd_core.runtime.errors import InputError
from exdd_core.runtime.parallel import ordered_map

GROUPS = ("train_normal", "train_defective", "test")
# Where a KSDD2 archive found in data.root is extracted: scratch (gitignored), outside data.root, so the
# raw-data dependency of prepare (dvc.yaml: ${data.root}) is the archive itself, not its extraction.
KSDD2_EXTRACTED = Path("data/downloads/KolektorSDD2")


def group_of(r: ImageRecord) -> str:
    if r.split == "test":
        return "test"
    return "train_defective" if r.label else "train_normal"


def read_source(data: dict, seed: int, scratch: Path) -> list[ImageRecord]:
    """Records of the configured source (`data.source`), generating the demo set into `scratch` if needed."""
    source = data["source"]
    size = tuple(data["image_size"])
    if source == "demo":
        from exdd_core.data.sources.demo import generate_demo

        d = data["demo"]
        return generate_demo(
            scratch,
            seed=seed,
            image_size=size,
            train_normal=d["train_normal"],
            train_defective=d["train_defective"],
            test_normal=d["test_normal"],
            test_defective=d["test_defective"],
        )
    if source == "ksdd2":
        from exdd_core.data.sources.ksdd2 import ksdd2_folder, read_ksdd2

        root = ksdd2_folder(Path(data["root"]), KSDD2_EXTRACTED)
        return read_ksdd2(root, "train") + read_ksdd2(root, "test")
    if source == "folder":
        from exdd_core.data.sources.folder import read_folder

        return read_folder(Path(data["root"]), data["folder"], seed)
    if source == "mvtec":
        from exdd_core.data.sources.mvtec import read_mvtec

        root = Path(data["root"])
        return read_mvtec(root, "train") + read_mvtec(root, "test")
    raise InputError(f"data.source: unknown source {source!r}")


def write_prepared(
    records: list[ImageRecord],
    out: Path,
    image_size: tuple[int, int],
    progress: Callable = lambda it, desc, total: it,
) -> dict[str, int]:
    """Normalise `records` into the three prepared folders under `out`; returns the count per group.

    Train normal and test must be non-empty. Train defective may be empty (MVTec AD has no defective training
    images): the defect bank then holds only synthetic defects, and without real masks to paint into there are
    none, so ExDD falls back to PatchCore (design.md, "Empty defect bank") and says so."""
    counts: dict[str, int] = {}
    for group in GROUPS:
        recs = [r for r in records if group_of(r) == group]
        if not recs and group != "train_defective":
            raise InputError(
                f"the data source has no {group.replace('_', ' ')} images; expected at least one"
            )
        with atomic_dir(out / group) as tmp:

            def normalise(r: ImageRecord, tmp: Path = tmp, group: str = group) -> ImageRecord:
                img = load_image(r.image_path, image_size)
                img_path = tmp / "images" / f"{r.id}.png"
                save_png(img_path, img)
                mask_path = None
                if r.mask_path is not None and group != "train_normal":
                    mask = load_mask(
                        r.mask_path, image_size, image_size_of_source=image_size_of(r.image_path)
                    )
                    if r.label and not mask.any():
                        raise InputError(f"{r.mask_path}: defective image {r.id} has an empty mask")
                    mask_path = tmp / "masks" / f"{r.id}.png"
                    save_png(mask_path, mask.astype(np.uint8) * 255)
                return ImageRecord(r.id, r.split, r.label, img_path, mask_path, r.defect_type)

            done = ordered_map(normalise, recs)  # decode, resize, encode: on every core, in order
            prepared = list(progress(done, f"prepare {group}", len(recs)))
            write_manifest(prepared, tmp / "manifest.csv", tmp)
        counts[group] = len(recs)
    return counts
