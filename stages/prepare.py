"""Stage prepare: read the data source (demo / ksdd2 / mvtec / folder) into paths.prepared/{train_normal,train_defective,test}."""

import tempfile
from pathlib import Path

from exdd_core.data.prepare import read_source, write_prepared
from exdd_core.runtime.params import load_params
from exdd_core.runtime.paths import load_paths
from exdd_core.runtime.runlog import exit_now, log, run_stage, track


def main() -> str:
    p = load_params()
    data = p["data"]
    out = load_paths().prepared
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="exdd-source-") as scratch:
        records = read_source(data, p["seed"], Path(scratch))
        log.info(
            "source %s: %d images, resizing to %s (H, W)", data["source"], len(records), data["image_size"]
        )
        counts = write_prepared(records, out, tuple(data["image_size"]), progress=track)
    if data["source"] == "demo":
        log.warning("demo data: generated images, numbers are not comparable to the paper")
    return f"source={data['source']} " + " ".join(f"{k}={v}" for k, v in counts.items())


if __name__ == "__main__":
    run_stage("prepare", main)
    exit_now()  # outputs committed: skip the interpreter's ~1 s teardown (runlog.exit_now)
