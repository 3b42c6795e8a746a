"""Feature extraction into Zarr stores, streaming image by image.

Three kinds of store, one writer:
* `all`: every patch of every image (normal training images, test images);
* `defect`: only the patches on a defect - positions whose grid cell is covered >= `mask_threshold` by the
  image's mask (ground truth for real defects, diff mask for synthetic ones) - design.md, row D;
* `bbox_crop`: the authors' code: every patch of a bounding-box crop around one defect region, resized to
  128 x 128 (rows D and J; their known bug keeps one region per image: we keep the largest).

A known defective image without a mask (image-level label only) gives all its patches to a `defect` store,
listed in the attribute `unmasked_images`: the bank_defect stage keeps only those far from the normal bank
(pseudo-masks, banks.purify).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from exdd_core.data.imageio import load_mask
from exdd_core.data.records import ImageRecord
from exdd_core.features.backbone import PatchFeatureExtractor
from exdd_core.features.embedder import Embedder
from exdd_core.features.loader import batches
from exdd_core.features.patches import mask_coverage, to_rows
from exdd_core.features.projection import project
from exdd_core.features.sharded_store import ShardedStoreWriter
from exdd_core.runtime.distributed import Ranks, shard_bounds
from exdd_core.runtime.errors import InputError
from exdd_core.runtime.hashing import file_digest

# bank.defect_patches: bbox_crop reproduces the authors' code, which resizes every defect crop to 128 x 128
# (docs/design.md, row J): fixed by what it reproduces, not tunable.
BBOX_CROP_SIZE = (128, 128)


def store_attrs(
    extractor: PatchFeatureExtractor,
    features: dict,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    seed: int,
    manifests: Iterable[Path],
    kind: str,
) -> dict[str, Any]:
    """Provenance written into every store: everything that decides the feature space, plus the inputs."""
    store_dim = features["store_dim"]
    return {
        **extractor.provenance(),
        "kind": kind,
        "image_size": list(image_size),
        "grid": list(grid),
        "feature_dim": extractor.dim,
        "stored_dim": store_dim or extractor.dim,
        "projection_seed": seed if store_dim else None,
        "dtype": features["dtype"],
        "device": extractor.device,
        "autocast": extractor.autocast,  # fp16 activations were used (CUDA only)
        # the input normalisation applied (the card records it without importing timm to look it up again)
        "input_mean": list(extractor.stats[0]),
        "input_std": list(extractor.stats[1]),
        "source_manifests": {str(p): file_digest(p) for p in manifests},
    }


def _largest_region_bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return ndimage.find_objects(labels)[int(np.argmax(sizes))]


# Stores that may hold no image: known defects (the defect bank is then empty) and the verdicts from the line
# (none until the first `exdd feedback add`).
MAY_BE_EMPTY = ("defect", "feedback_defect", "feedback_normal")


def write_store(
    records: list[ImageRecord],
    out: Path,
    embedder: Embedder,
    *,
    image_size: tuple[int, int],
    features: dict,
    seed: int,
    manifests: list[Path],
    kind: str,
    selection: str = "all",
    mask_threshold: float | None = 0.5,
    progress: Callable = lambda it, desc, total: it,
    batch_size: int = 1,
    ranks: Ranks | None = None,
) -> dict[str, Any]:
    """Embed `records` (the embedder's backbone, aggregation and projection) into the store at `out`
    (committed atomically). Returns the image and row counts and the device of every rank.

    One process, or every rank of a torch.distributed group (`ranks`; all call it): each rank extracts a
    contiguous shard of `records` and writes its rows straight into the one store (sharded_store) - the same
    store, byte for byte, as one process writes."""
    if not records and kind not in MAY_BE_EMPTY:
        raise InputError(f"{out}: no images to extract features from ({kind})")
    ranks = ranks or Ranks(0, 1, 0)
    extractor, proj = embedder.extractor, embedder.projection
    grid = extractor.grid_for(image_size)
    store_dim = features["store_dim"]
    attrs = store_attrs(extractor, features, image_size, grid, seed, manifests, kind)
    attrs["selection"] = selection
    attrs["mask_threshold"] = mask_threshold if selection == "mask" else None
    attrs["unmasked_images"] = [r.id for r in records if r.mask_path is None] if selection != "all" else []
    lo, hi = shard_bounds(len(records), ranks.world, ranks.rank)
    mine = records[lo:hi]
    select = RowSelection(extractor, image_size, tuple(grid), selection, mask_threshold)
    counts, devices = _gather((select.planned_rows(mine), extractor.device), ranks)
    offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).tolist()
    per_image = select.rows(mine, batch_size)
    with ShardedStoreWriter(
        out,
        store_dim or extractor.dim,
        features["dtype"],
        attrs,
        [r.id for r in records],
        offsets,
        (lo, hi),
        ranks,
    ) as writer:
        for r, rows, pos in progress(per_image, f"features {kind}", len(mine)):
            if proj is not None:
                rows = project(rows, proj)
            writer.add(r.id, rows.float().cpu().numpy(), pos.numpy())
    return {"images": len(records), "rows": int(offsets[-1]), "devices": devices}


def _gather(mine: tuple[list[int], str], ranks: Ranks) -> tuple[list[int], list[str]]:
    """Every rank's planned row counts (concatenated in rank order) and device."""
    parts: list[Any] = [mine]
    if ranks.world > 1:
        import torch.distributed as dist

        parts = [None] * ranks.world
        dist.all_gather_object(parts, mine)
    return [c for counts, _ in parts for c in counts], [device for _, device in parts]


@dataclass(frozen=True)
class RowSelection:
    """Which patch rows of an image go into a store (`selection`: all, mask, bbox_crop), in one place for
    the two things that must agree: the rows planned before any forward, and the rows extracted."""

    extractor: PatchFeatureExtractor
    image_size: tuple[int, int]
    grid: tuple[int, int]
    selection: str
    mask_threshold: float | None

    def planned_rows(self, records: list[ImageRecord]) -> list[int]:
        """The rows each image will give, known before any forward so that every rank knows where its rows
        go in the store: the whole grid, the grid cells its mask covers (`mask`), or its largest defect's
        crop grid (`bbox_crop`); an image without a mask gives its whole grid (checked on add)."""
        whole = self.grid[0] * self.grid[1]
        if self.selection == "all":
            return [whole] * len(records)
        out = []
        for r in records:
            if r.mask_path is None:
                out.append(whole)
                continue
            mask = load_mask(Path(r.mask_path), self.image_size)
            if self.selection == "mask":
                out.append(int(self._keep(mask).sum()))
            else:
                crop = self.extractor.grid_for(BBOX_CROP_SIZE)
                out.append(0 if _largest_region_bbox(mask) is None else crop[0] * crop[1])
        return out

    def _keep(self, mask: np.ndarray) -> torch.Tensor:
        """bool (h*w,): the grid cells `mask` covers at least `mask_threshold`."""
        return mask_coverage(torch.as_tensor(mask), self.grid).reshape(-1) >= self.mask_threshold

    def rows(
        self, records: list[ImageRecord], batch_size: int
    ) -> Iterator[tuple[ImageRecord, torch.Tensor, torch.Tensor]]:
        """(record, rows (n, C), grid positions (n,)) per image, in order; the backbone runs `batch_size`
        images at a time (bbox crops, each of its own size, one at a time)."""
        by_crop = self.selection == "bbox_crop"
        for batch in batches(records, self.image_size, batch_size, masks=self.selection != "all"):
            whole = [b for b in batch if not (by_crop and b.mask is not None)]
            patches = self.extractor(np.stack([b.image for b in whole])) if whole else None  # (B, C, h, w)
            if patches is not None and tuple(patches.shape[-2:]) != self.grid:
                raise InputError(
                    f"{whole[0].record.image_path}: patch grid {tuple(patches.shape[-2:])} != {self.grid}"
                )
            k = 0
            for b in batch:
                if by_crop and b.mask is not None:
                    yield (b.record, *_bbox_crop_rows(b.image, b.mask, self.extractor))
                    continue
                rows = to_rows(patches[k : k + 1])
                k += 1
                pos = torch.arange(rows.shape[0])
                if self.selection == "mask" and b.mask is not None:
                    keep = self._keep(b.mask)
                    rows, pos = rows[keep.to(rows.device)], pos[keep]
                yield b.record, rows, pos


def _bbox_crop_rows(img: np.ndarray, mask: np.ndarray, extractor: PatchFeatureExtractor):
    box = _largest_region_bbox(mask)
    if box is None:
        return torch.zeros((0, extractor.dim)), torch.zeros(0, dtype=torch.long)
    crop = np.ascontiguousarray(img[box])
    t = torch.as_tensor(crop).permute(2, 0, 1)[None].float()
    t = torch.nn.functional.interpolate(t, size=BBOX_CROP_SIZE, mode="bilinear", align_corners=False)
    crop = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    rows = to_rows(extractor(crop))
    return rows, torch.arange(rows.shape[0])
