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

import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from exdd_core.data.records import ImageRecord
from exdd_core.features.backbone import BackboneSpec, PatchFeatureExtractor
from exdd_core.features.loader import batches
from exdd_core.features.patches import mask_coverage, to_rows
from exdd_core.features.projection import project, projection_matrix
from exdd_core.features.store import StoreWriter, merge_stores
from exdd_core.runtime.atomic import partial_path
from exdd_core.runtime.distributed import Ranks, shard_bounds
from exdd_core.runtime.errors import InputError
from exdd_core.runtime.hashing import file_digest

# bank.defect_patches: bbox_crop reproduces the authors' code, which resizes every defect crop to 128 x 128
# (docs/design.md, row J): fixed by what it reproduces, not tunable.
BBOX_CROP_SIZE = (128, 128)


def make_extractor(backbone: dict, features: dict, seed: int, device: str) -> PatchFeatureExtractor:
    spec = BackboneSpec(
        name=backbone["name"], weights=backbone["weights"], layers=tuple(backbone["layers"]), seed=seed
    )
    autocast = bool(features.get("autocast", False))
    return PatchFeatureExtractor(spec, features["patch_size"], features["aggregation"], device, autocast)


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
        "source_manifests": {str(p): file_digest(p) for p in manifests},
    }


def _largest_region_bbox(mask: np.ndarray) -> tuple[slice, slice] | None:
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
    return ndimage.find_objects(labels)[int(np.argmax(sizes))]


def write_store(
    records: list[ImageRecord],
    out: Path,
    extractor: PatchFeatureExtractor,
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
) -> dict[str, int]:
    """Extract features of `records` into the store at `out` (committed atomically). Returns row counts."""
    if not records and kind != "defect":  # an empty defect store is legal: the defect bank is then empty
        raise InputError(f"{out}: no images to extract features from ({kind})")
    grid = extractor.grid_for(image_size)
    store_dim = features["store_dim"]
    proj = None
    if store_dim:
        proj = torch.as_tensor(projection_matrix(extractor.dim, store_dim, seed), device=extractor.device)
    attrs = store_attrs(extractor, features, image_size, grid, seed, manifests, kind)
    attrs["selection"] = selection
    attrs["mask_threshold"] = mask_threshold if selection == "mask" else None
    unmasked = [r.id for r in records if r.mask_path is None] if selection != "all" else []
    attrs["unmasked_images"] = unmasked
    dim = store_dim or extractor.dim
    n_rows = 0
    per_image = _image_rows(
        records, extractor, image_size, tuple(grid), selection, mask_threshold, batch_size
    )
    with StoreWriter(out, dim, features["dtype"], attrs) as writer:
        for r, rows, pos in progress(per_image, f"features {kind}", len(records)):
            if proj is not None:
                rows = project(rows, proj)
            writer.add(r.id, rows.float().cpu().numpy(), pos.numpy())
            n_rows += int(rows.shape[0])
    return {"images": len(records), "rows": n_rows}


def _image_rows(
    records: list[ImageRecord],
    extractor: PatchFeatureExtractor,
    image_size: tuple[int, int],
    grid: tuple[int, int],
    selection: str,
    mask_threshold: float | None,
    batch_size: int,
) -> Iterator[tuple[ImageRecord, torch.Tensor, torch.Tensor]]:
    """(record, rows (n, C), grid positions (n,)) per image, in order; the backbone runs `batch_size` images
    at a time (bbox crops, each of its own size, one at a time)."""
    for batch in batches(records, image_size, batch_size, masks=selection != "all"):
        whole = [b for b in batch if not (selection == "bbox_crop" and b.mask is not None)]
        patches = extractor(np.stack([b.image for b in whole])) if whole else None  # (B, C, h, w)
        if patches is not None and tuple(patches.shape[-2:]) != grid:
            raise InputError(
                f"{whole[0].record.image_path}: patch grid {tuple(patches.shape[-2:])} != {grid}"
            )
        k = 0
        for b in batch:
            if selection == "bbox_crop" and b.mask is not None:
                yield (b.record, *_bbox_crop_rows(b.image, b.mask, extractor))
                continue
            rows = to_rows(patches[k : k + 1])
            k += 1
            pos = torch.arange(rows.shape[0])
            if selection == "mask" and b.mask is not None:
                keep = (
                    mask_coverage(torch.as_tensor(b.mask), grid).reshape(-1).to(rows.device) >= mask_threshold
                )
                rows, pos = rows[keep], pos[keep.cpu()]
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


def write_store_sharded(
    records: list[ImageRecord], out: Path, extractor: PatchFeatureExtractor, ranks: Ranks, **kwargs: Any
) -> dict[str, Any]:
    """`write_store` on one process, or on every rank of a torch.distributed group (all call it): each rank
    extracts a contiguous shard of `records` into a store of its own, rank 0 merges the shards in rank order
    into `out` - the same store one process writes - and every rank removes its shard. Rank 0's summary
    adds the device of every rank."""
    if ranks.world == 1:
        return {**write_store(records, out, extractor, **kwargs), "devices": [extractor.device]}
    import torch.distributed as dist

    a, b = shard_bounds(len(records), ranks.world, ranks.rank)
    shard = partial_path(Path(out))  # names this process: cleaned by the next stage start if it dies
    write_store(records[a:b], shard, extractor, **kwargs)
    shards: list[Any] = [None] * ranks.world
    dist.all_gather_object(shards, (str(shard), extractor.device))
    rows = 0
    if ranks.main:
        selection = kwargs.get("selection", "all")
        unmasked = [r.id for r in records if r.mask_path is None] if selection != "all" else []
        rows = merge_stores([Path(s) for s, _ in shards], Path(out), {"unmasked_images": unmasked})
    dist.barrier()
    shutil.rmtree(shard, ignore_errors=True)
    return {"images": len(records), "rows": rows, "devices": [d for _, d in shards]}


def rows_as_stored(
    extractor: PatchFeatureExtractor, image: np.ndarray, projection: torch.Tensor | None, dtype: np.dtype
) -> np.ndarray:
    """Patch rows (h*w, d) of one image exactly as a feature store holds them: the extractor's row order,
    projected when the stores hold projections, rounded to the store's precision (float16 by default)."""
    rows = to_rows(extractor(image))
    if projection is not None:
        rows = project(rows, projection)
    return rows.float().cpu().numpy().astype(dtype).astype(np.float32)
