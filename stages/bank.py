"""Stages bank_normal / bank_defect: greedy k-center coreset of a feature store -> banks/<which>.zarr.

Usage: python stages/bank.py normal|defect
"""

import sys
from pathlib import Path

import numpy as np

from exdd_core.banks.build import build_bank
from exdd_core.banks.distributed import sharded_selector
from exdd_core.banks.holdout import calibration_ids
from exdd_core.banks.knn import Bank
from exdd_core.banks.purify import defect_row_filter
from exdd_core.features.store import Store
from exdd_core.runtime import distributed
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import load_params
from exdd_core.runtime.runlog import FALLBACK_NOTE, counter, log


def main(which: str) -> str:
    if which not in ("normal", "defect"):
        raise ParamError(f"bank stage: expected normal or defect, got {which!r}")
    p = load_params()
    b = p["bank"]
    device = resolve_device(b["device"], "bank.device")
    ranks = distributed.init(device)  # under torchrun: the rows are sharded over the ranks
    device = distributed.local_device(device, ranks)
    Path("banks").mkdir(exist_ok=True)
    out = Path("banks") / f"{which}.zarr"
    features = Path("features") / f"{which}.zarr"
    keep, note = None, ""
    if which == "normal":  # the calibration images stay out of M_N (evaluation.calibration)
        store = Store(features)
        held_out = calibration_ids(store.images, p["eval"]["calibration_fraction"], p["seed"])
        keep = np.repeat([i not in held_out for i in store.images], np.diff(store.offsets))
        note = f", {len(held_out)} of {len(store.images)} images held out for threshold calibration"
    if which == "defect":  # M_P is judged against M_N: purification and pseudo-masks (banks.purify)
        normal = Bank(Store(Path("banks") / "normal.zarr").read_all(), device=device)
        f = defect_row_filter(Store(features), normal, b["purify"], b["pseudo_top"])
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
    return (
        f"{out}: {res['rows']} of {res['source_rows']} rows, coverage radius {res['coverage_radius']}, "
        f"device={device}, {ranks.world} rank(s){note}"
    )


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    distributed.run_stage_sharded(f"bank_{which}", lambda: main(which))
