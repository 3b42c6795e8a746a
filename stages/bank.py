"""Stages bank_normal / bank_defect: greedy k-center coreset of a feature store -> paths.banks/<which>.zarr.

Usage: python stages/bank.py normal|defect
"""

import sys

import numpy as np

from exdd_core.banks.build import build_bank
from exdd_core.banks.distributed import sharded_selector
from exdd_core.banks.holdout import calibration_images
from exdd_core.banks.knn import Bank
from exdd_core.banks.purify import defect_row_filter
from exdd_core.features.store import Store
from exdd_core.features.store_union import StoreUnion
from exdd_core.runtime import distributed
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import load_params
from exdd_core.runtime.paths import load_paths
from exdd_core.runtime.runlog import FALLBACK_NOTE, counter, exit_now, log


def main(which: str) -> str:
    if which not in ("normal", "defect"):
        raise ParamError(f"bank stage: expected normal or defect, got {which!r}")
    p, paths = load_params(), load_paths()
    b = p["bank"]
    device = resolve_device(b["device"], "bank.device")
    ranks = distributed.init(device)  # under torchrun: the rows are sharded over the ranks
    device = distributed.local_device(device, ranks)
    out = paths.bank(which)
    out.parent.mkdir(parents=True, exist_ok=True)
    # the pipeline's store and the verdicts from the line (exdd feedback add), read as one
    features = StoreUnion([paths.store(which), paths.store(f"feedback_{which}")])
    keep, note = None, ""
    if which == "normal":  # the calibration images stay out of M_N (evaluation.calibration)
        held_out = calibration_images(features, p["eval"]["calibration_fraction"], p["seed"])
        keep = np.repeat([i not in held_out for i in features.images], np.diff(features.offsets))
        own = len(features.parts[0].images)
        note = f", {len(held_out)} of {own} images held out for threshold calibration"
    if which == "defect":  # M_P is judged against M_N: purification and pseudo-masks (banks.purify)
        normal = Bank(Store(paths.bank("normal")).read_all(), device=device)
        f = defect_row_filter(features, normal, b["purify"], b["pseudo_top"])
        keep = f.keep
        note = (
            f", {f.masked_dropped} masked rows dropped as background (bank.purify {b['purify']}), "
            f"{f.pseudo_kept} of {f.pseudo_candidates} rows of unmasked images kept as pseudo-defects"
        )
    res = build_bank(
        features,
        out,
        ratio=b[f"{which}_ratio"],
        min_size=b["min_size"],
        projection_dim=b["projection_dim"],
        seed=p["seed"],
        method=b["coreset_method"],
        device=device,
        counter=counter,
        keep=keep,
        selector=sharded_selector(ranks.world, ranks.rank, b["projection_dim"], p["seed"])
        if ranks.world > 1
        else None,
    )
    if not ranks.main:
        return f"rank {ranks.rank}: coreset picks of rows shard {ranks.rank + 1}/{ranks.world} on {device}"
    if res["rows"] == 0:
        log.warning(FALLBACK_NOTE if which == "defect" else "normal bank is empty")
    verdicts = len(features.parts[1].images)
    if verdicts:
        note += f", {verdicts} image(s) confirmed {which} on the line (exdd feedback)"
    return (
        f"{out}: {res['rows']} of {res['source_rows']} rows, coverage radius {res['coverage_radius']}, "
        f"device={device}, {ranks.world} rank(s){note}"
    )


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    distributed.run_stage_sharded(f"bank_{which}", lambda: main(which))
    exit_now()  # outputs committed: skip the interpreter's ~1 s teardown (runlog.exit_now)
