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

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from exdd_core.data.imageio import load_image, load_mask
from exdd_core.data.records import ImageRecord
from exdd_core.runtime.atomic import PendingPath, partial_path
from exdd_core.runtime.choices import SYNTH_MASKS
from exdd_core.runtime.distributed import Ranks, shard_bounds
from exdd_core.runtime.errors import ParamError
from exdd_core.synth.cache import SampleCache, sample_key, source_digest
from exdd_core.synth.diffmask import diff_mask, paste_outside
from exdd_core.synth.masks import GENERATED_IDS, generated_mask, is_generated
from exdd_core.synth.output import merge_shards, write_index, write_sample
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

    def summary(self, samples: int) -> dict[str, int]:
        return {
            "samples": samples,
            "replaced": self.replaced,
            "dropped": self.dropped,
            "generated": self.generated,
            "cached": self.cached,
        }


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


@dataclass
class SynthSettings:
    """What decides every sample besides its index: the source images, the prompts and the painting rules."""

    normal_ids: list[str]
    mask_ids: list[str]  # real defect masks, or the generated mask families
    by_id: dict[str, ImageRecord]
    seed: int
    prompts: list[str]
    jitter: bool
    diff_threshold: float
    image_size: tuple[int, int]
    dilate: int
    min_area: int


class _Synthesis:
    """One synthesize run: makes each sample's job (from the cache when it can), generates the rest in
    batches, keeps the samples with a defect and retries the others (module doc)."""

    def __init__(
        self,
        settings: SynthSettings,
        backend: Backend | None,
        cache: SampleCache | None,
        batch_size: int,
        tmp: Path,
        log: Callable[[str], None],
        warn: Callable[[str], None],
    ) -> None:
        self.s, self.backend, self.cache, self.batch_size, self.tmp, self.warn = (
            settings, backend, cache, batch_size, tmp, warn
        )  # fmt: skip
        self.identity = None
        if cache is not None and backend is not None:
            ident = getattr(backend, "cache_identity", None)
            self.identity = ident() if ident is not None else None
            if self.identity is None:
                log(f"backend {backend.name} has no cache identity: its samples are not cached")
        self.stats = _Stats()
        self.done: dict[int, tuple[ImageRecord, dict]] = {}

    def job(self, i: int, attempt: int) -> _Job:
        s = self.s
        recipe = plan_sample(
            attempt_seed(s.seed, attempt), i, s.normal_ids, s.mask_ids, len(s.prompts), s.jitter
        )
        image = load_image(s.by_id[recipe.normal_id].image_path, s.image_size)
        if is_generated(recipe.mask_id):
            mask = generated_mask(recipe.mask_id, s.image_size, recipe.sample_seed)
        else:
            mask = apply_jitter(load_mask(s.by_id[recipe.mask_id].mask_path, s.image_size), recipe)
        job = _Job(i, attempt, recipe, s.prompts[recipe.prompt_index], image, mask)
        if self.identity is not None and self.cache is not None:
            job.key, job.key_parts = sample_key(self.identity, image, mask, job.prompt, recipe.sample_seed)
            job.generated = self.cache.get(job.key, image.shape)
            self.stats.cached += job.generated is not None
        return job

    def generate(self, jobs: list[_Job]) -> None:
        """The backend's outputs for the jobs the cache could not answer, `batch_size` per call."""
        todo = [j for j in jobs if j.generated is None]
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            t0 = time.perf_counter()
            outs = _generate(self.backend, chunk)  # type: ignore[arg-type]
            self.stats.seconds += time.perf_counter() - t0
            self.stats.generated += len(chunk)
            for job, raw in zip(chunk, outs, strict=True):
                job.generated = _check_output(self.backend, job, raw)  # type: ignore[arg-type]
                if job.key is not None and self.cache is not None:
                    self.cache.put(job.key, job.generated, job.key_parts)

    def finish(self, jobs: list[_Job]) -> None:
        """Generate what is missing, keep samples with a defect, retry the others with their next attempt."""
        s = self.s
        while jobs:
            self.generate(jobs)
            retry = []
            for job in jobs:
                final = paste_outside(job.image, job.generated, job.mask, s.dilate)
                dm = diff_mask(job.image, final, job.mask, s.diff_threshold, s.dilate, s.min_area)
                if dm.any():
                    self.done[job.index] = write_sample(self.tmp, job, final, dm)
                    continue
                self.stats.replaced += 1
                if job.attempt + 1 < MAX_ATTEMPTS:
                    self.warn(
                        f"synthetic sample {job.index} (attempt {job.attempt}) changed no pixel above the "
                        "threshold: replaced"
                    )
                    retry.append(self.job(job.index, job.attempt + 1))
                else:
                    self.stats.dropped += 1
                    self.warn(
                        f"synthetic sample {job.index}: {MAX_ATTEMPTS} attempts gave an empty diff mask; "
                        "sample dropped"
                    )
            jobs = retry

    def run(self, indices: range, progress: Callable) -> None:
        """Every index, flushed in groups so memory stays bounded."""
        pending: list[_Job] = []
        desc = f"synthesize ({self.backend.name if self.backend else 'none'})"
        for i in progress(indices, desc, len(indices)):
            pending.append(self.job(i, 0))
            if sum(j.generated is None for j in pending) >= self.batch_size or len(pending) >= FLUSH_EVERY:
                self.finish(pending)
                pending = []
        self.finish(pending)


def mask_sources(
    defective: list[ImageRecord], masks: str, count: int, log: Callable[[str], None]
) -> tuple[list[ImageRecord], list[str]]:
    """The defective records with a mask, and the mask ids samples draw from: theirs, or the generated
    families (`synth.masks` generated, or auto without any real mask)."""
    if masks not in SYNTH_MASKS:
        raise ParamError(f"synth.masks = {masks!r}; expected one of {SYNTH_MASKS}")
    masks_src = [r for r in defective if r.mask_path is not None]
    mask_ids = [r.id for r in masks_src]
    if masks == "generated" or (masks == "auto" and not mask_ids):
        if count and masks == "auto":
            log(f"no real defect masks: {count} samples get generated masks ({', '.join(GENERATED_IDS)})")
        mask_ids = list(GENERATED_IDS)
    return masks_src, mask_ids


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
    inside that region, without specks under `min_area` px. Up to `batch_size` samples that are not in
    `cache` go to the backend in one call. `masks`: where inpainting masks come from: `real` defect masks,
    `generated` ones (synth.masks), or `auto` (real when there are any)."""
    if count and backend is None:
        raise ParamError("synth.count > 0 needs a synth.backend (procedural or sdxl)")
    if batch_size < 1:
        raise ParamError(f"synth.batch_size must be >= 1, got {batch_size}")
    masks_src, mask_ids = mask_sources(defective, masks, count, log)
    by_id = {r.id: r for r in normal} | {r.id: r for r in masks_src}
    settings = SynthSettings(
        [r.id for r in normal], mask_ids, by_id, seed, prompts, jitter, diff_threshold, image_size, dilate, min_area
    )  # fmt: skip
    # One process: every sample, straight into the output. Under torchrun (`ranks`): each rank generates a
    # contiguous shard of the indices into a folder of its own; rank 0 then moves them all into the output.
    world = 1 if ranks is None else ranks.world
    lo, hi = shard_bounds(count, world, 0 if ranks is None else ranks.rank)
    pending_dir = PendingPath(out if world == 1 else partial_path(out), directory=True)
    job = _Synthesis(
        settings, backend if count else None, cache, batch_size, pending_dir.tmp, log, warn or log
    )
    try:
        job.run(range(lo, hi), progress)
        if world == 1:
            write_index(pending_dir.tmp, [job.done[i] for i in sorted(job.done)])
            pending_dir.commit()
        else:
            merge_shards(out, pending_dir.tmp, job.done, job.stats, ranks)  # type: ignore[arg-type]
    finally:
        if world > 1 or pending_dir.tmp.exists():
            pending_dir.abort()
    if count and (ranks is None or ranks.main):
        _log_timing(log, backend, job.stats, cache)  # type: ignore[arg-type]
    return job.stats.summary(job.stats.samples if world > 1 else len(job.done))


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
