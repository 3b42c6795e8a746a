"""Stages features_normal / features_defect / features_test: backbone patch features -> features/<which>.zarr.

Usage: python stages/features.py normal|defect|test
"""

import sys
from pathlib import Path

from exdd_core.data.records import read_manifest
from exdd_core.features.embedder import Embedder
from exdd_core.features.extract import write_store
from exdd_core.runtime import distributed
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import load_params
from exdd_core.runtime.runlog import FALLBACK_NOTE, log, track

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
    embedder = Embedder.from_params(p["backbone"], p["features"], p["seed"], device)
    prov = embedder.extractor.provenance()
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
    summary = write_store(
        records,
        out,
        embedder,
        ranks=ranks,
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
    if not ranks.main:
        return f"rank {ranks.rank}: extracted its shard of {len(records)} images on {device}"
    if ranks.world > 1:
        log.info("%d ranks on %s wrote their shards into %s", ranks.world, ", ".join(summary["devices"]), out)
    if which == "defect" and summary["rows"] == 0:
        log.warning("no defect patches selected. %s", FALLBACK_NOTE)
    return f"{out}: {summary['images']} images, {summary['rows']} rows, device={device}, weights={prov['weights_id']}"


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    distributed.run_stage_sharded(f"features_{which}", lambda: main(which))
