"""The per-sample synthesis cache (any backend) and the synthesize job around it: keys change with every input
that determines a sample, hits are bit-identical to fresh generation, growing the count generates only new
samples, corrupt entries are regenerated, and samples without a visible defect are reported and replaced."""

from __future__ import annotations

import numpy as np
import pytest

from exdd_core.data import ImageRecord, read_manifest, save_png
from exdd_core.runtime.hashing import array_digest
from exdd_core.synth.cache import SampleCache, sample_key
from exdd_core.synth.run import MAX_ATTEMPTS, ProceduralBackend, synthesize

IMAGE_SIZE = (64, 32)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[list[ImageRecord], list[ImageRecord]]:
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    normal, defective = [], []
    for k in range(4):
        save_png(root / f"n{k}.png", rng.integers(60, 120, (*IMAGE_SIZE, 3)).astype(np.uint8))
        normal.append(ImageRecord(f"n{k}", "train", 0, root / f"n{k}.png"))
    for k in range(2):
        mask = np.zeros(IMAGE_SIZE, bool)
        mask[20 + 10 * k : 34 + 10 * k, 8:22] = True
        save_png(root / f"d{k}.png", rng.integers(60, 120, (*IMAGE_SIZE, 3)).astype(np.uint8))
        save_png(root / f"d{k}_GT.png", mask)
        defective.append(ImageRecord(f"d{k}", "train", 1, root / f"d{k}.png", root / f"d{k}_GT.png"))
    return normal, defective


class Counting:
    """Wraps a backend and records which sample indices it was asked to generate."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.calls = inner, inner.name, []

    def generate(self, image, mask, recipe, prompt):
        self.calls.append(recipe.index)
        return self.inner.generate(image, mask, recipe, prompt)

    def cache_identity(self):
        return self.inner.cache_identity()


def run(data, out, backend, count, cache=None, **kw) -> dict:
    normal, defective = data
    args = dict(seed=0, prompts=["copper metal scratches", "white marks on the wall"], jitter=True)
    args |= dict(diff_threshold=0.08, image_size=IMAGE_SIZE, log=lambda m: None) | kw
    return synthesize(normal, defective, out, backend=backend, count=count, cache=cache, **args)


def files(out) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_key_changes_with_every_part():
    image = np.zeros((4, 4, 3), np.uint8)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = True
    base, parts = sample_key({"name": "x", "steps": 30}, image, mask, "p", 1)
    assert base == sample_key({"steps": 30, "name": "x"}, image, mask, "p", 1)[0]  # order-free
    image2 = image.copy()
    image2[0, 0, 0] = 1
    mask2 = mask.copy()
    mask2[2, 2] = True
    for other in (
        sample_key({"name": "x", "steps": 31}, image, mask, "p", 1),
        sample_key({"name": "y", "steps": 30}, image, mask, "p", 1),
        sample_key({"name": "x", "steps": 30}, image2, mask, "p", 1),
        sample_key({"name": "x", "steps": 30}, image, mask2, "p", 1),
        sample_key({"name": "x", "steps": 30}, image, mask, "q", 1),
        sample_key({"name": "x", "steps": 30}, image, mask, "p", 2),
    ):
        assert other[0] != base
    assert parts["image"] == array_digest(image) and parts["noise_seed"] == 1
    assert array_digest(np.zeros((2, 8))) != array_digest(np.zeros((4, 4)))  # shape is part of the digest


def test_cache_round_trip_and_corrupt_entry(tmp_path):
    cache = SampleCache(tmp_path)
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    assert cache.get("ab" * 32, image.shape) is None
    cache.put("ab" * 32, image, {"k": 1})
    assert np.array_equal(cache.get("ab" * 32, image.shape), image)
    assert cache.get("ab" * 32, (4, 7, 3)) is None  # wrong size: dropped, regenerated
    cache.put("cd" * 32, image, {"k": 2})
    (tmp_path / "cd" / ("cd" * 32 + ".png")).write_bytes(b"not a png")
    assert cache.get("cd" * 32, image.shape) is None
    assert not (tmp_path / "cd" / ("cd" * 32 + ".png")).exists()


def test_procedural_growth_generates_only_new_and_hits_are_identical(data, tmp_path):
    cache = SampleCache(tmp_path / "cache")
    fresh = run(data, tmp_path / "plain", ProceduralBackend(), 4)  # no cache at all
    first = Counting(ProceduralBackend())
    s1 = run(data, tmp_path / "a", first, 4, cache)
    assert s1["cached"] == 0 and sorted(set(first.calls)) == [0, 1, 2, 3]
    grown = Counting(ProceduralBackend())
    s2 = run(data, tmp_path / "b", grown, 6, SampleCache(tmp_path / "cache"))
    assert s2["samples"] == 6 and s2["cached"] >= 4 and set(grown.calls) == {4, 5}
    a, b, plain = files(tmp_path / "a"), files(tmp_path / "b"), files(tmp_path / "plain")
    images = [k for k in a if k.startswith(("images/", "masks/"))]
    assert all(a[k] == b[k] == plain[k] for k in images)
    assert fresh["samples"] == 4


def test_changing_diff_threshold_reuses_the_cached_raw_outputs(data, tmp_path):
    cache = tmp_path / "cache"
    run(data, tmp_path / "a", ProceduralBackend(), 3, SampleCache(cache))
    backend = Counting(ProceduralBackend())
    summary = run(data, tmp_path / "b", backend, 3, SampleCache(cache), diff_threshold=0.2)
    assert backend.calls == [] and summary["generated"] == 0


class Unchanged:
    """A backend that paints nothing for the first `fail` attempts of every sample."""

    name = "unchanged"

    def __init__(self, fail: int) -> None:
        self.fail, self.seen = fail, {}

    def generate(self, image, mask, recipe, prompt):
        n = self.seen[recipe.index] = self.seen.get(recipe.index, 0) + 1
        if n <= self.fail:
            return image.copy()
        out = image.copy()
        out[mask] = 255 - out[mask]
        return out


def test_empty_diff_samples_are_reported_and_replaced(data, tmp_path):
    warnings = []
    summary = run(data, tmp_path / "out", Unchanged(fail=1), 3, warn=warnings.append)
    assert summary == {"samples": 3, "replaced": 3, "dropped": 0, "generated": 6, "cached": 0}
    assert len(warnings) == 3 and all("replaced" in w for w in warnings)
    assert len(read_manifest(tmp_path / "out" / "manifest.csv")) == 3


def test_samples_that_never_show_a_defect_are_dropped_loudly(data, tmp_path):
    warnings = []
    summary = run(data, tmp_path / "out", Unchanged(fail=MAX_ATTEMPTS), 2, warn=warnings.append)
    assert summary["samples"] == 0 and summary["dropped"] == 2
    assert sum("dropped" in w for w in warnings) == 2


def test_batch_size_must_be_positive(data, tmp_path):
    from exdd_core.runtime.errors import ParamError

    with pytest.raises(ParamError, match="batch_size"):
        run(data, tmp_path / "out", ProceduralBackend(), 1, batch_size=0)


def test_synthesize_stage_declares_every_synth_param_but_the_cache_dir():
    """dvc.yaml lists synth keys one by one (so moving the cache reruns nothing); a new synth param must be
    added there too, or changing it would not rerun the stage."""
    from pathlib import Path

    import yaml

    from exdd_core.runtime.params import SCHEMA

    dvc = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())
    declared = {p for p in dvc["stages"]["synthesize"]["params"] if isinstance(p, str)}
    assert {f"synth.{k}" for k in SCHEMA["synth"] if k != "cache_dir"} <= declared
    assert "synth.cache_dir" not in declared and "synth" not in declared
