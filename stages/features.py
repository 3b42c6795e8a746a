"""Stages features_normal / features_defect / features_test / features_feedback_{normal,defect}: backbone patch
features -> paths.features/<which>.zarr.

Usage: python stages/features.py normal|defect|test|feedback_normal|feedback_defect
"""

import sys

from exdd_core.data.records import read_manifest
from exdd_core.features.embedder import Embedder
from exdd_core.features.extract import write_store
from exdd_core.runtime import distributed
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import load_params
from exdd_core.runtime.paths import load_paths
from exdd_core.runtime.runlog import FALLBACK_NOTE, log, track


def main(which: str) -> str:
    p, paths = load_params(), load_paths()
    if which == "normal":
        manifests = [paths.manifest("train_normal")]
    elif which == "defect":
        manifests = [paths.manifest("train_defective"), paths.synthetic / "manifest.csv"]
    elif which == "test":
        manifests = [paths.manifest("test")]
    elif which in ("feedback_normal", "feedback_defect"):  # verdicts from the line (exdd feedback add)
        manifests = [paths.verdicts(which.split("_")[1]) / "manifest.csv"]
    else:
        raise ParamError(
            f"features stage: expected normal, defect, test, feedback_normal or feedback_defect, got {which!r}"
        )
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
    defects = which in ("defect", "feedback_defect")
    selection = p["bank"]["defect_patches"] if defects else "all"
    out = paths.store(which)
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
        kind=which,
        selection=selection,
        mask_threshold=p["bank"]["mask_threshold"] if defects else None,
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
