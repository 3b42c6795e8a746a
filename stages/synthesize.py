"""Stage synthesize: paint synth.count defects into normal training images -> paths.synthetic/.

Generated samples are also kept in a per-sample cache (synth.cache_dir), so growing synth.count or changing
post-processing (synth.diff_threshold) generates only what was never generated; data/synthetic itself is
always the complete set, for DVC to track and share."""

from exdd_core.data.records import read_manifest
from exdd_core.runtime import distributed
from exdd_core.runtime.params import load_params
from exdd_core.runtime.paths import load_paths
from exdd_core.runtime.runlog import exit_now, log, track
from exdd_core.synth.cache import SampleCache
from exdd_core.synth.run import ProceduralBackend, synthesize


def make_backend(synth: dict):
    if synth["backend"] == "procedural":
        return ProceduralBackend()
    if synth["backend"] == "sdxl":
        from exdd_core.synth.sdxl import SdxlBackend

        return SdxlBackend.from_params(synth, log=log.info)
    return None


def main() -> str:
    p, paths = load_params(), load_paths()
    s = p["synth"]
    normal = read_manifest(paths.manifest("train_normal"))
    defective = read_manifest(paths.manifest("train_defective"))
    backend = make_backend(s) if s["count"] else None
    cache = SampleCache(s["cache_dir"]) if s["cache_dir"] else None
    paths.synthetic.parent.mkdir(parents=True, exist_ok=True)
    device = getattr(getattr(backend, "settings", None), "device", "cpu")
    ranks = distributed.init(device)  # under torchrun: each rank generates a shard of the sample indices
    summary = synthesize(
        normal,
        defective,
        paths.synthetic,
        backend=backend,
        count=s["count"],
        seed=p["seed"],
        prompts=s["prompts"],
        jitter=s["jitter"],
        diff_threshold=s["diff_threshold"],
        dilate=s["dilate"],
        min_area=s["min_area"],
        image_size=tuple(p["data"]["image_size"]),
        cache=cache,
        batch_size=s["batch_size"],
        masks=s["masks"],
        ranks=ranks,
        log=log.info,
        warn=log.warning,
        progress=track,
    )
    what = backend.describe() if backend is not None else "no backend (synth.count 0)"
    if not ranks.main:
        return f"rank {ranks.rank}: generated its shard of {s['count']} samples with {what}"
    ran = f" on {ranks.world} ranks" if ranks.world > 1 else ""
    return f"{what}{ran}: " + " ".join(f"{k}={v}" for k, v in summary.items())


if __name__ == "__main__":
    distributed.run_stage_sharded("synthesize", main)
    exit_now()  # outputs committed: skip the interpreter's ~1 s teardown (runlog.exit_now)
