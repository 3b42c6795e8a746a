"""Stages features_normal / features_defect / features_test / features_feedback: backbone patch features ->
paths.features/<which>.zarr. features_feedback embeds both kinds of verdicts from the line (feedback_normal.zarr,
feedback_defect.zarr) with one backbone: a handful of images, not worth a process (and its ~3 s of imports)
each.

Usage: python stages/features.py normal|defect|test|feedback
"""

import sys
from pathlib import Path

from exdd_core.data.records import read_manifest
from exdd_core.features.embedder import Embedder
from exdd_core.features.extract import write_store
from exdd_core.runtime import distributed
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.distributed import Ranks
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import TrackedParams, load_params
from exdd_core.runtime.paths import PipelinePaths, load_paths
from exdd_core.runtime.runlog import FALLBACK_NOTE, exit_now, log, track

KINDS = ("normal", "defect", "test", "feedback")


def manifests_of(which: str, paths: PipelinePaths) -> list[Path]:
    if which == "normal":
        return [paths.manifest("train_normal")]
    if which == "defect":
        return [paths.manifest("train_defective"), paths.synthetic / "manifest.csv"]
    if which == "test":
        return [paths.manifest("test")]
    # verdicts from the line (exdd feedback add)
    return [paths.verdicts(which.split("_")[1]) / "manifest.csv"]


def main(which: str) -> str:
    if which not in KINDS:
        raise ParamError(f"features stage: expected one of {', '.join(KINDS)}, got {which!r}")
    p, paths = load_params(), load_paths()
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
    stores = ("feedback_normal", "feedback_defect") if which == "feedback" else (which,)
    said = [extract(kind, embedder, p, paths, ranks, device) for kind in stores]
    return "; ".join(said) + f", device={device}, weights={prov['weights_id']}"


def extract(
    kind: str, embedder: Embedder, p: TrackedParams, paths: PipelinePaths, ranks: Ranks, device: str
) -> str:
    """One store: `kind`'s images through the embedder into paths.store(kind)."""
    manifests = manifests_of(kind, paths)
    records = [r for m in manifests for r in read_manifest(m)]
    defects = kind in ("defect", "feedback_defect")
    selection = p["bank"]["defect_patches"] if defects else "all"
    out = paths.store(kind)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = write_store(
        records,
        out,
        embedder,
        ranks=ranks,
        image_size=tuple(p["data"]["image_size"]),
        features=p["features"],
        seed=p["seed"],
        manifests=manifests,
        kind=kind,
        selection=selection,
        mask_threshold=p["bank"]["mask_threshold"] if defects else None,
        progress=track,
        batch_size=p["features"]["batch_size"],
    )
    if not ranks.main:
        return f"rank {ranks.rank}: extracted its shard of {len(records)} images on {device}"
    if ranks.world > 1:
        log.info("%d ranks on %s wrote their shards into %s", ranks.world, ", ".join(summary["devices"]), out)
    if kind == "defect" and summary["rows"] == 0:
        log.warning("no defect patches selected. %s", FALLBACK_NOTE)
    return f"{out}: {summary['images']} images, {summary['rows']} rows"


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    distributed.run_stage_sharded(f"features_{which}", lambda: main(which))
    exit_now()  # outputs committed: skip the interpreter's ~1 s teardown (runlog.exit_now)
