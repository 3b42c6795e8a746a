"""The synthetic folder: each kept sample's image and diff mask, and the index of them all (manifest.csv, and
recipes.json: how each sample was made), written by one process or merged from every rank's shard."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exdd_core.data.imageio import save_png
from exdd_core.data.records import SYNTHETIC_PREFIX, ImageRecord, write_manifest
from exdd_core.runtime.atomic import atomic_dir
from exdd_core.runtime.distributed import Ranks

if TYPE_CHECKING:
    from exdd_core.synth.run import _Job, _Stats


def write_index(folder: Path, samples: list[tuple[ImageRecord, dict]]) -> None:
    """manifest.csv and recipes.json of the samples (in index order) whose files are in `folder`."""
    write_manifest([rec for rec, _ in samples], folder / "manifest.csv", folder)
    recipes = [recipe for _, recipe in samples]
    (folder / "recipes.json").write_text(json.dumps(recipes, indent=1, default=_jsonable))


def merge_shards(out: Path, shard: Path, done: dict, stats: _Stats, ranks: Ranks) -> None:
    """Every rank's samples, moved by rank 0 into one output folder, indexed in sample order: the folder one
    process writes. The counts of every rank are summed into `stats` on rank 0."""
    import torch.distributed as dist

    mine = {
        i: (rec.id, _rel(rec.image_path, shard), _rel(rec.mask_path, shard), recipe)
        for i, (rec, recipe) in done.items()
    }
    gathered: list[Any] = [None] * ranks.world
    counts = (stats.replaced, stats.dropped, stats.generated, stats.cached)
    dist.all_gather_object(gathered, (str(shard), mine, counts))
    if ranks.main:
        with atomic_dir(out) as final:
            samples = {}
            for shard_dir, items, _ in gathered:
                for i, (sid, image, mask, recipe) in items.items():
                    for name in (image, mask):
                        (final / name).parent.mkdir(parents=True, exist_ok=True)
                        os.replace(Path(shard_dir) / name, final / name)
                    samples[i] = (ImageRecord(sid, "train", 1, final / image, final / mask), recipe)
            write_index(final, [samples[i] for i in sorted(samples)])
        sums = [sum(c[k] for _, _, c in gathered) for k in range(4)]
        stats.replaced, stats.dropped, stats.generated, stats.cached = sums
        stats.samples = sum(len(items) for _, items, _ in gathered)
    dist.barrier()


def _rel(path: Path | None, root: Path) -> str:
    return Path(path).relative_to(root).as_posix() if path is not None else ""


def write_sample(tmp: Path, job: _Job, final: np.ndarray, dm: np.ndarray) -> tuple[ImageRecord, dict]:
    """Save image and diff mask of a kept sample; return its manifest record and its recipe entry."""
    sid = f"{SYNTHETIC_PREFIX}{job.index:05d}"
    img_path, mask_path = tmp / "images" / f"{sid}.png", tmp / "masks" / f"{sid}.png"
    save_png(img_path, final)
    save_png(mask_path, dm.astype(np.uint8) * 255)
    recipe = {
        "id": sid,
        **asdict(job.recipe),
        "prompt": job.prompt,
        "attempt": job.attempt,
        "diff_pixels": int(dm.sum()),
    }
    if job.key is not None:
        recipe["cache_key"] = job.key
    return ImageRecord(sid, "train", 1, img_path, mask_path), recipe


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))
