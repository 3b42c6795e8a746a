"""Stages features_normal / features_defect / features_test: backbone patch features -> features/<which>.zarr.

Usage: python stages/features.py normal|defect|test
"""

import shutil
import sys
from pathlib import Path

from exdd_core.data.records import read_manifest
from exdd_core.features.extract import make_extractor, write_store
from exdd_core.features.store import merge_stores
from exdd_core.runtime import distributed
from exdd_core.runtime.atomic import partial_path
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import load_params
from exdd_core.runtime.runlog import FALLBACK_NOTE, log, run_stage, track

PREPARED = Path("data/prepared")
SYNTHETIC = Path("data/synthetic")
OUT = Path("features")


def main(which: str) -> str:
    p = load_params()
    if which == "normal":
        manifests = [PREPARED / "train_normal" / "manifest.csv"]
    elif which == "defect":
        manifests = [PREPARED / "train_defective" / "manifest.csv", SYNTHETIC / "manifest.csv"]
    elif which == "test":
        manifests = [PREPARED / "test" / "manifest.csv"]
    else:
        raise ParamError(f"features stage: expected normal, defect or test, got {which!r}")
    records = [r for m in manifests for r in read_manifest(m)]
    device = resolve_device(p["backbone"]["device"], "backbone.device")
    ranks = distributed.init(device)
    device = distributed.local_device(device, ranks)
    extractor = make_extractor(p["backbone"], p["features"], p["seed"], device)
    prov = extractor.provenance()
    log.info(
        "backbone %s, weights %s, layers %s, device %s",
        prov["backbone"],
        prov["weights_id"],
        prov["layers"],
        device,
    )
    if p["backbone"]["weights"] == "random":
        log.warning("random backbone weights: numbers are not comparable to the paper")
    selection = p["bank"]["defect_patches"] if which == "defect" else "all"
    OUT.mkdir(exist_ok=True)
    out = OUT / f"{which}.zarr"
    # Under torchrun each rank extracts a contiguous shard into a store of its own; rank 0 then merges the
    # shards in order into the output: the same store as one process writes (runtime.distributed).
    a, b = distributed.shard_bounds(len(records), ranks.world, ranks.rank)
    target = out if ranks.world == 1 else partial_path(out)
    summary = write_store(
        records[a:b],
        target,
        extractor,
        image_size=tuple(p["data"]["image_size"]),
        features=p["features"],
        seed=p["seed"],
        manifests=manifests,
        kind=which,
        selection=selection,
        mask_threshold=p["bank"]["mask_threshold"] if which == "defect" else None,
        progress=track,
        batch_size=p["features"]["batch_size"],
    )
    if ranks.world > 1:
        summary = merge_shards(target, out, records, selection, ranks, device)
        if not ranks.main:
            return f"rank {ranks.rank}: extracted images {a}-{b} into the shared store"
    if which == "defect" and summary["rows"] == 0:
        log.warning("no defect patches selected. %s", FALLBACK_NOTE)
    return f"{out}: {summary['images']} images, {summary['rows']} rows, device={device}, weights={prov['weights_id']}"


def merge_shards(shard: Path, out: Path, records: list, selection: str, ranks, device: str) -> dict:
    """Rank 0 merges every rank's shard store into `out`; each rank then removes its own shard."""
    import torch.distributed as dist

    shards: list = [None] * ranks.world
    dist.all_gather_object(shards, (str(shard), device))
    if ranks.main:
        unmasked = [r.id for r in records if r.mask_path is None] if selection != "all" else []
        rows = merge_stores([Path(s) for s, _ in shards], out, {"unmasked_images": unmasked})
        log.info("%d ranks on %s merged into %s", ranks.world, ", ".join(d for _, d in shards), out)
    distributed.barrier()
    shutil.rmtree(shard, ignore_errors=True)
    return {"images": len(records), "rows": rows if ranks.main else 0}


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    code = distributed.relaunch_if_requested()  # EXDD_NPROC > 1: this command again, under torchrun
    if code is not None:
        sys.exit(code)
    try:
        run_stage(f"features_{which}", lambda: main(which))
    finally:
        distributed.finish()
