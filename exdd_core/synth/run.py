"""The synthesize step: paint `count` defects into normal training images inside real defect masks, and keep
where each defect really is (the diff mask). Sample i depends only on (seed, i) - never on `count` - so growing
the count keeps every existing sample and adds new ones.

Backends share one interface, `generate(image, mask, recipe, prompt) -> image` (plus, optionally,
`generate_batch` for several samples per call and `cache_identity()` for the per-sample cache); the procedural
one runs on a CPU, the SDXL one (diffusers inpainting, `exdd_core.synth.sdxl`) is the paper's.

With a `SampleCache`, each raw backend output is stored under a key of everything that determines it, so a
rerun - after growing `synth.count`, changing `synth.diff_threshold`, or a `dvc checkout` of another
experiment - generates only the samples it has never generated. The output folder is always rewritten whole
(DVC tracks the complete set), atomically.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exdd_core.data.imageio import load_image, load_mask, save_png
from exdd_core.data.records import SYNTHETIC_PREFIX, ImageRecord, write_manifest
from exdd_core.runtime.atomic import PendingPath, atomic_dir, partial_path
from exdd_core.runtime.choices import SYNTH_MASKS
from exdd_core.runtime.distributed import Ranks, shard_bounds
from exdd_core.runtime.errors import ParamError
from exdd_core.synth.cache import SampleCache, sample_key, source_digest
from exdd_core.synth.diffmask import diff_mask, paste_outside
from exdd_core.synth.masks import GENERATED_IDS, generated_mask, is_generated
from exdd_core.synth.plan import SampleRecipe, apply_jitter, plan_sample

# Attempts per sample whose diff mask comes out empty, before it is dropped (reported). Fixed: a retry only
# replaces a sample that would carry no defect, so the number changes which samples fail, never a result.
MAX_ATTEMPTS = 5
FLUSH_EVERY = 64  # cached samples are finished in groups of this many, so memory stays bounded


class Backend(Protocol):
    """What synthesize needs from a backend. Optional extras, looked up with getattr: `generate_batch(images,
    masks, recipes, prompts) -> list of images` (several samples per call), `cache_identity() -> dict` (plain
    JSON of everything besides the sample's inputs that determines its output; without it nothing is cached)
    and `describe() -> str` (model, device, dtype for the log)."""

    name: str

    def generate(
        self, image: np.ndarray, mask: np.ndarray, recipe: SampleRecipe, prompt: str
    ) -> np.ndarray: ...


class ProceduralBackend:
    """CPU painter: scratches and marks drawn inside the mask (no model, for the demo profile and tests)."""

    name = "procedural"

    def generate(self, image: np.ndarray, mask: np.ndarray, recipe: SampleRecipe, prompt: str) -> np.ndarray:
        from exdd_core.synth.procedural import paint_defect

        rng = np.random.default_rng([recipe.sample_seed, 1])
        return paint_defect(image, mask, rng, recipe.prompt_index)

    def cache_identity(self) -> dict[str, Any]:
        """The painter's identity is its code: an edit to it must not be answered from the cache."""
        import exdd_core.data.defects as defects
        import exdd_core.synth.procedural as procedural

        files = [Path(m.__file__) for m in (procedural, defects)] + [Path(__file__)]
        return {"name": self.name, "code": source_digest(*files)}

    def describe(self) -> str:
        return "procedural (CPU painter)"


def attempt_seed(seed: int, attempt: int) -> int:
    """The plan seed of a replacement attempt: attempt 0 is the run's seed itself."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, 104729, attempt]).generate_state(1)[0])


@dataclass
class _Job:
    """One attempt at sample `index`: its recipe and inputs, its cache key, and (once known) the raw output."""

    index: int
    attempt: int
    recipe: SampleRecipe
    prompt: str
    image: np.ndarray
    mask: np.ndarray
    key: str | None = None
    key_parts: dict[str, Any] | None = None
    generated: np.ndarray | None = None


@dataclass
class _Stats:
    replaced: int = 0
    dropped: int = 0
    generated: int = 0
    cached: int = 0
    seconds: float = 0.0
    samples: int = 0  # kept samples of every rank (set by rank 0 when sharded)


def _generate(backend: Backend, jobs: list[_Job]) -> list[np.ndarray]:
    """One batched call when the backend has `generate_batch`, else one call per job."""
    batch = getattr(backend, "generate_batch", None)
    if batch is not None:
        return list(
            batch(
                [j.image for j in jobs],
                [j.mask for j in jobs],
                [j.recipe for j in jobs],
                [j.prompt for j in jobs],
            )
        )
    return [backend.generate(j.image, j.mask, j.recipe, j.prompt) for j in jobs]


def _check_output(backend: Backend, job: _Job, out: np.ndarray) -> np.ndarray:
    """A backend must return a uint8 image of its input's shape; anything else is a bug worth naming."""
    out = np.asarray(out)
    if out.shape != job.image.shape or out.dtype != np.uint8:
        raise ValueError(
            f"backend {backend.name} returned {out.dtype} {out.shape} for sample {job.index}, "
            f"expected uint8 {job.image.shape}"
        )
    return out


def synthesize(
    normal: list[ImageRecord],
    defective: list[ImageRecord],
    out: Path,
    *,
    backend: Backend | None,
    count: int,
    seed: int,
    prompts: list[str],
    jitter: bool,
    diff_threshold: float,
    image_size: tuple[int, int],
    dilate: int = 3,
    min_area: int = 4,
    cache: SampleCache | None = None,
    batch_size: int = 1,
    masks: str = "auto",
    ranks: Ranks | None = None,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
    progress: Callable = lambda it, desc, total: it,
) -> dict:
    """Write `count` synthetic defect images, their diff masks, a manifest and the recipes to `out`.

    Samples whose diff mask is empty (the backend changed nothing visible) are reported through `warn` and
    replaced by a fresh recipe for the same index, up to MAX_ATTEMPTS, then dropped (also reported). Pixels
    outside the mask grown by `dilate` px are pasted back from the original; the diff mask keeps changes
    inside that region, without specks under `min_area` px. Up to
    `batch_size` samples that are not in `cache` go to the backend in one call. `masks`: where inpainting
    masks come from: `real` defect masks, `generated` ones (synth.masks), or `auto` (real when there are any)."""
    if count and backend is None:
        raise ParamError("synth.count > 0 needs a synth.backend (procedural or sdxl)")
    if batch_size < 1:
        raise ParamError(f"synth.batch_size must be >= 1, got {batch_size}")
    warn = warn or log
    normal_ids = [r.id for r in normal]
    masks_src = [r for r in defective if r.mask_path is not None]
    mask_ids = [r.id for r in masks_src]
    if masks not in SYNTH_MASKS:
        raise ParamError(f"synth.masks = {masks!r}; expected one of {SYNTH_MASKS}")
    if masks == "generated" or (masks == "auto" and not mask_ids):
        if count and masks == "auto":
            log(f"no real defect masks: {count} samples get generated masks ({', '.join(GENERATED_IDS)})")
        mask_ids = list(GENERATED_IDS)
    by_id = {r.id: r for r in normal} | {r.id: r for r in masks_src}
    identity = None
    if cache is not None and count:
        ident = getattr(backend, "cache_identity", None)
        identity = ident() if ident is not None else None
        if identity is None:
            log(f"backend {backend.name} has no cache identity: its samples are not cached")
    stats = _Stats()
    done: dict[int, tuple[ImageRecord, dict]] = {}

    def make_job(i: int, attempt: int) -> _Job:
        recipe = plan_sample(attempt_seed(seed, attempt), i, normal_ids, mask_ids, len(prompts), jitter)
        image = load_image(by_id[recipe.normal_id].image_path, image_size)
        if is_generated(recipe.mask_id):
            mask = generated_mask(recipe.mask_id, image_size, recipe.sample_seed)
        else:
            mask = apply_jitter(load_mask(by_id[recipe.mask_id].mask_path, image_size), recipe)
        job = _Job(i, attempt, recipe, prompts[recipe.prompt_index], image, mask)
        if identity is not None:
            job.key, job.key_parts = sample_key(identity, image, mask, job.prompt, recipe.sample_seed)
            job.generated = cache.get(job.key, image.shape)
            stats.cached += job.generated is not None
        return job

    def run(jobs: list[_Job]) -> None:
        todo = [j for j in jobs if j.generated is None]
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            t0 = time.perf_counter()
            outs = _generate(backend, chunk)
            stats.seconds += time.perf_counter() - t0
            stats.generated += len(chunk)
            for job, raw in zip(chunk, outs, strict=True):
                job.generated = _check_output(backend, job, raw)
                if job.key is not None:
                    cache.put(job.key, job.generated, job.key_parts)

    def finish(jobs: list[_Job]) -> None:
        """Generate what is missing, keep samples with a defect, retry the others with their next attempt."""
        while jobs:
            run(jobs)
            retry = []
            for job in jobs:
                final = paste_outside(job.image, job.generated, job.mask, dilate)
                dm = diff_mask(job.image, final, job.mask, diff_threshold, dilate, min_area)
                if dm.any():
                    done[job.index] = _write_sample(tmp, job, final, dm)
                    continue
                stats.replaced += 1
                if job.attempt + 1 < MAX_ATTEMPTS:
                    warn(
                        f"synthetic sample {job.index} (attempt {job.attempt}) changed no pixel above the "
                        "threshold: replaced"
                    )
                    retry.append(make_job(job.index, job.attempt + 1))
                else:
                    stats.dropped += 1
                    warn(
                        f"synthetic sample {job.index}: {MAX_ATTEMPTS} attempts gave an empty diff mask; "
                        "sample dropped"
                    )
            jobs = retry

    # One process: every sample, straight into the output. Under torchrun (`ranks`): each rank generates a
    # contiguous shard of the indices into a folder of its own; rank 0 then moves them all into the output.
    world = 1 if ranks is None else ranks.world
    lo, hi = shard_bounds(count, world, 0 if ranks is None else ranks.rank)
    pending_dir = PendingPath(out if world == 1 else partial_path(out), directory=True)
    tmp = pending_dir.tmp
    try:
        pending: list[_Job] = []
        desc = f"synthesize ({backend.name if backend else 'none'})"
        for i in progress(range(lo, hi), desc, hi - lo):
            pending.append(make_job(i, 0))
            if sum(j.generated is None for j in pending) >= batch_size or len(pending) >= FLUSH_EVERY:
                finish(pending)
                pending = []
        finish(pending)
        if world == 1:
            _write_index(tmp, [done[i] for i in sorted(done)])
            pending_dir.commit()
        else:
            _merge_shards(out, tmp, done, stats, ranks)
    finally:
        if world > 1 or tmp.exists():
            pending_dir.abort()
    if count and (ranks is None or ranks.main):
        _log_timing(log, backend, stats, cache)
    return {
        "samples": stats.samples if world > 1 else len(done),
        "replaced": stats.replaced,
        "dropped": stats.dropped,
        "generated": stats.generated,
        "cached": stats.cached,
    }


def _write_index(folder: Path, samples: list[tuple[ImageRecord, dict]]) -> None:
    """manifest.csv and recipes.json of the samples (in index order) whose files are in `folder`."""
    write_manifest([rec for rec, _ in samples], folder / "manifest.csv", folder)
    recipes = [recipe for _, recipe in samples]
    (folder / "recipes.json").write_text(json.dumps(recipes, indent=1, default=_jsonable))


def _merge_shards(out: Path, shard: Path, done: dict, stats: _Stats, ranks: Ranks) -> None:
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
            _write_index(final, [samples[i] for i in sorted(samples)])
        sums = [sum(c[k] for _, _, c in gathered) for k in range(4)]
        stats.replaced, stats.dropped, stats.generated, stats.cached = sums
        stats.samples = sum(len(items) for _, items, _ in gathered)
    dist.barrier()


def _rel(path: Path | None, root: Path) -> str:
    return Path(path).relative_to(root).as_posix() if path is not None else ""


def _write_sample(tmp: Path, job: _Job, final: np.ndarray, dm: np.ndarray) -> tuple[ImageRecord, dict]:
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


def _log_timing(
    log: Callable[[str], None], backend: Backend, stats: _Stats, cache: SampleCache | None
) -> None:
    """One line: which backend (model, device, dtype), how many images were generated and how fast."""
    what = getattr(backend, "describe", lambda: backend.name)()
    per = f" ({stats.seconds / stats.generated:.2f} s/image)" if stats.generated else ""
    where = f" from the cache at {cache.root}" if cache is not None else ""
    log(
        f"{what}: generated {stats.generated} image(s) in {stats.seconds:.1f} s{per}; {stats.cached} taken"
        f"{where}"
    )


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))
