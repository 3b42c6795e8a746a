"""Stages bank_normal / bank_defect: greedy k-center coreset of a feature store -> banks/<which>.zarr.

Usage: python stages/bank.py normal|defect
"""

import sys
from pathlib import Path

from exdd_core.banks.build import build_bank
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.errors import ParamError
from exdd_core.runtime.params import load_params
from exdd_core.runtime.runlog import FALLBACK_NOTE, counter, log, run_stage


def main(which: str) -> str:
    if which not in ("normal", "defect"):
        raise ParamError(f"bank stage: expected normal or defect, got {which!r}")
    p = load_params()
    b = p["bank"]
    device = resolve_device(b["device"], "bank.device")
    Path("banks").mkdir(exist_ok=True)
    out = Path("banks") / f"{which}.zarr"
    res = build_bank(
        Path("features") / f"{which}.zarr",
        out,
        ratio=b[f"{which}_ratio"],
        min_size=b["min_size"],
        projection_dim=b["projection_dim"],
        seed=p["seed"],
        method=b["coreset_method"],
        device=device,
        counter=counter,
    )
    if res["rows"] == 0:
        log.warning(FALLBACK_NOTE if which == "defect" else "normal bank is empty")
    return (
        f"{out}: {res['rows']} of {res['source_rows']} rows, coverage radius {res['coverage_radius']}, "
        f"device={device}"
    )


if __name__ == "__main__":
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    run_stage(f"bank_{which}", lambda: main(which))
