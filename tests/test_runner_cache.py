"""The runner cache (features/runner_cache.py): a hit gives the fresh build's features bit for bit, loads without
importing timm, and every failure (unloadable entry, unwritable or disabled cache, a copy that differs) falls
back to the timm build without failing the caller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from exdd_core.features import runner_cache
from exdd_core.features.backbone import BackboneSpec, PatchFeatureExtractor
from exdd_core.runtime.errors import MissingResourceError

REPO = Path(__file__).resolve().parents[1]
LITE0 = BackboneSpec("tf_efficientnet_lite0", "imagenet", (2, 3))  # registry weights: installed with exdd


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EXDD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)  # an even and an odd size: TF "same" padding takes both branches
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 64), (53, 75))]


def _entries(cache: Path) -> list[Path]:
    return sorted((cache / "runners").glob("*")) if (cache / "runners").is_dir() else []


def test_a_hit_gives_the_fresh_build_s_features_bit_for_bit(cache: Path) -> None:
    fresh = PatchFeatureExtractor(LITE0)
    miss = PatchFeatureExtractor(LITE0, cached=True)  # builds from timm and writes the entry
    assert len(_entries(cache)) == 1 and miss._model is not None
    hit = PatchFeatureExtractor(LITE0, cached=True)
    assert isinstance(hit.runner, torch.jit.ScriptModule) and hit._model is None  # no timm model built
    for image in _images():
        ref = fresh(image)
        assert torch.equal(miss(image), ref) and torch.equal(hit(image), ref)
    assert hit.provenance() == fresh.provenance() and hit.stats == fresh.stats
    assert (hit.channels, hit.reductions) == (fresh.channels, fresh.reductions)
    # timm's module is still there for exports, built on first use
    assert hit.model.state_dict().keys() == fresh.model.state_dict().keys()


def test_the_key_names_backbone_weights_and_layers(cache: Path) -> None:
    key = runner_cache.runner_key
    base = key("tf_efficientnet_lite0", (2, 3), 0, "random(seed=0)")
    assert base is not None and len(base) == 64
    assert base == key("tf_efficientnet_lite0", (2, 3), 0, "random(seed=0)")
    others = {
        key("tf_efficientnet_lite1", (2, 3), 0, "random(seed=0)"),
        key("tf_efficientnet_lite0", (2,), 0, "random(seed=0)"),
        key("tf_efficientnet_lite0", (2, 3), 1, "random(seed=0)"),
        key("tf_efficientnet_lite0", (2, 3), 0, "file(w.pth, sha256=0123)"),
    }
    assert base not in others and len(others) == 4
    # weights without a content id are never cached: another file could hide behind the same tag
    assert key("resnet18", (2, 3), 0, "imagenet(timm default pretrained tag)") is None


@pytest.mark.parametrize("part", ["torch", "timm", "code"])
def test_the_key_changes_with_torch_timm_and_our_code(part: str, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ("tf_efficientnet_lite0", (2, 3), 0, "random(seed=0)")
    before = runner_cache.runner_key(*args)
    if part == "torch":
        monkeypatch.setattr(torch, "__version__", "9.9.9")
    elif part == "timm":
        monkeypatch.setattr(runner_cache.metadata, "version", lambda name: "9.9.9")
    else:  # an edit to any file the runner is built from
        monkeypatch.setattr(runner_cache, "files_digest", lambda *paths: "another")
    assert runner_cache.runner_key(*args) != before


def test_random_weights_of_another_seed_are_another_entry(cache: Path) -> None:
    a = PatchFeatureExtractor(BackboneSpec("resnet18", "random", (2, 3), seed=0), cached=True)
    b = PatchFeatureExtractor(BackboneSpec("resnet18", "random", (2, 3), seed=1), cached=True)
    assert len(_entries(cache)) == 2
    image = _images()[0]
    hit_b = PatchFeatureExtractor(BackboneSpec("resnet18", "random", (2, 3), seed=1), cached=True)
    assert isinstance(hit_b.runner, torch.jit.ScriptModule)
    assert torch.equal(hit_b(image), b(image)) and not torch.equal(hit_b(image), a(image))


def test_an_entry_that_does_not_load_is_rebuilt_and_rewritten(cache: Path) -> None:
    spec = BackboneSpec("resnet18", "random", (2, 3))
    ref = PatchFeatureExtractor(spec, cached=True)(_images()[0])
    (entry,) = _entries(cache)
    (entry / "runner.pt").write_bytes(b"not a TorchScript archive")
    rebuilt = PatchFeatureExtractor(spec, cached=True)
    assert rebuilt._model is not None and torch.equal(rebuilt(_images()[0]), ref)
    again = PatchFeatureExtractor(spec, cached=True)  # the rewritten entry loads
    assert isinstance(again.runner, torch.jit.ScriptModule) and torch.equal(again(_images()[0]), ref)
    json.loads((entry / "meta.json").read_text())  # and its metadata is whole


def test_off_or_unwritable_cache_scores_as_always(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BackboneSpec("resnet18", "random", (2, 3))
    ref = PatchFeatureExtractor(spec)(_images()[0])
    monkeypatch.setenv("EXDD_CACHE_DIR", runner_cache.OFF)
    assert runner_cache.cache_root() is None
    assert torch.equal(PatchFeatureExtractor(spec, cached=True)(_images()[0]), ref)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("EXDD_CACHE_DIR", str(blocker))  # mkdir under a file fails: logged, not raised
    assert torch.equal(PatchFeatureExtractor(spec, cached=True)(_images()[0]), ref)
    assert blocker.is_file()


def test_default_root_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EXDD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert runner_cache.cache_root() == tmp_path / "exdd"


class _ScriptsDifferently(torch.nn.Module):
    """A module whose TorchScript copy computes something else: such a copy must never be cached."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if torch.jit.is_scripting():
            return [x + 1.0]
        return [x]


class _FailsAtProbeSizes(torch.nn.Module):
    """Scripts, but raises on any input other than 128 x 128: a failure at run time, not at compile time."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[-1] != 128:
            raise RuntimeError("only 128 x 128")
        return [x]


def test_a_copy_that_fails_to_run_is_not_cached_and_does_not_raise(cache: Path) -> None:
    stats = ((0.5,) * 3, (0.5,) * 3)
    failing = runner_cache.CachedRunner(_FailsAtProbeSizes(), [3], [1], stats)
    assert runner_cache.save_runner("f" * 64, failing) is False
    assert not _entries(cache)


def test_a_missing_weights_file_is_the_usual_clear_error(cache: Path, tmp_path: Path) -> None:
    spec = BackboneSpec("resnet18", str(tmp_path / "absent.safetensors"), (2, 3))
    with pytest.raises(MissingResourceError, match="not found"):
        PatchFeatureExtractor(spec, cached=True)


class _ListOut(torch.nn.Module):
    """A module returning a list of maps, as a backbone runner does."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.inner(x)]


def test_a_copy_that_differs_is_not_cached(cache: Path) -> None:
    cached = runner_cache.CachedRunner(_ScriptsDifferently(), [3], [1], ((0.5,) * 3, (0.5,) * 3))
    assert runner_cache.save_runner("k" * 64, cached) is False
    assert not _entries(cache)
    same = runner_cache.CachedRunner(_ListOut(torch.nn.Conv2d(3, 3, 1)), [3], [1], cached.stats)
    assert runner_cache.save_runner("k" * 64, same) is True
    loaded = runner_cache.load_runner("k" * 64)
    assert loaded is not None and loaded.channels == [3] and loaded.stats == cached.stats


def test_a_hit_does_not_import_timm(cache: Path) -> None:
    PatchFeatureExtractor(LITE0, cached=True)  # writes the entry
    code = (
        "import sys, numpy as np\n"
        "from exdd_core.features.embedder import make_extractor\n"
        "b = {'name': 'tf_efficientnet_lite0', 'weights': 'imagenet', 'layers': [2, 3]}\n"
        "ex = make_extractor(b, {'patch_size': 3, 'aggregation': 'padded_bilinear'}, 0, 'cpu', cached=True)\n"
        "ex(np.zeros((48, 64, 3), np.uint8))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('timm', 'torchvision')))\n"
    )
    env = {**os.environ, "EXDD_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_exported_weights_are_their_own_entry_and_reload_lazily(cache: Path) -> None:
    """An export's state dict (`with_state_dict`) is keyed by its digest, never by the placeholder spec; a hit's
    timm module, built on demand for an export, carries the state's weights, not random ones."""
    spec = BackboneSpec("resnet18", "random", (2, 3), seed=3)
    source = PatchFeatureExtractor(spec)
    state = {k: v.clone() for k, v in source.model.state_dict().items()}
    image = _images()[1]
    ref = source(image)
    PatchFeatureExtractor(
        BackboneSpec("resnet18", "random", (2, 3), seed=0), cached=True
    )  # the placeholder's
    miss = PatchFeatureExtractor.with_state_dict(
        "resnet18", [2, 3], state, 3, "padded_bilinear", state_id="e1"
    )
    assert len(_entries(cache)) == 2 and torch.equal(miss(image), ref)
    hit = PatchFeatureExtractor.with_state_dict(
        "resnet18", [2, 3], state, 3, "padded_bilinear", state_id="e1"
    )
    assert isinstance(hit.runner, torch.jit.ScriptModule) and torch.equal(hit(image), ref)
    rebuilt = hit.model.state_dict()
    assert all(torch.equal(rebuilt[k], state[k]) for k in rebuilt)
    uncached = PatchFeatureExtractor.with_state_dict("resnet18", [2, 3], state, 3, "padded_bilinear")
    assert uncached._model is not None and len(_entries(cache)) == 2
