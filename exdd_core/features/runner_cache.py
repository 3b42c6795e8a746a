"""A TorchScript copy of the folded, cut backbone (`PatchFeatureExtractor.runner`), cached on disk per weights
and code, so `exdd score` starts without importing timm.

Why: importing timm is ~1.25 s of `exdd score`'s ~2.9 s start-up on a 2-core CPU, 0.85 s of it `torch._dynamo`
(timm imports torchvision.ops, which imports dynamo unconditionally). A TorchScript archive loads with torch
alone in ~0.06 s and runs the same kernels: its features are bit-identical to the eager module's, checked on two
probe images, in memory and reloaded from the file, before an entry is published. `torch.export` is torch's modern format, but `torch.export.load`
imports dynamo itself (~1 s). TorchScript is deprecated in torch 2.14 (the project's pin); it is used here only as
a cache, so a torch without it, or an entry that does not load, costs the start-up and nothing else: the runner
is then built from timm as always (docs/design.md, "Fast start").

Key: SHA-256 of the backbone (name, layers, seed), the weights' id (`weights_fingerprint`: the checkpoint's or
file's digest; the seed for random weights; an export's backbone digest), torch's and timm's versions and the
code that builds the runner and its input normalisation (this folder's backbone.py, bn_fold.py,
registry_weights.py, provenance.py, this file). A hit is the module a fresh build gives; anything changed is
another key, so nothing needs invalidating. Weights without a content id (timm's default pretrained tag from the Hugging
Face cache) are not cached. CPU only: on a GPU, CUDA's own start dwarfs the import.

Layout: `<root>/runners/<key>/{runner.pt, meta.json}`, written atomically (a killed writer leaves no entry);
root = $EXDD_CACHE_DIR, else $XDG_CACHE_HOME/exdd, else ~/.cache/exdd. EXDD_CACHE_DIR=off turns it off.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch

from exdd_core.runtime.atomic import atomic_dir
from exdd_core.runtime.hashing import files_digest, json_digest
from exdd_core.runtime.runlog import log

KEY_FORMAT = 1  # bump when the meaning of a key's parts changes, so old entries stop matching
OFF = "off"
# the code whose change changes the runner: its digest is part of every key
_CODE = ("backbone.py", "bn_fold.py", "registry_weights.py", "provenance.py", "runner_cache.py")
# probe images (H, W) a scripted copy must reproduce bit for bit before it is cached: an even and an odd size,
# so TF "same" padding takes both of its branches; each called REPEATS times
PROBES = ((64, 96), (67, 101))
REPEATS = 3


@dataclass(frozen=True)
class CachedRunner:
    """What `PatchFeatureExtractor` needs of timm's model, without timm: the runner (N, 3, H, W) -> feature maps
    of `channels` channels at strides `reductions`, and the input normalisation (mean, std) it expects."""

    runner: torch.nn.Module
    channels: list[int]
    reductions: list[int]
    stats: tuple[tuple[float, ...], tuple[float, ...]]


def cache_root() -> Path | None:
    """Where entries live (see the module docstring); None when EXDD_CACHE_DIR=off."""
    configured = os.environ.get("EXDD_CACHE_DIR")
    if configured == OFF:
        return None
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory to be found (a bare service account): no cache
            return None
    return Path(base) / "exdd"


def runner_key(name: str, layers: tuple[int, ...], seed: int, weights_id: str) -> str | None:
    """The entry's key, or None when the weights have no content id (nothing is then cached)."""
    if weights_id.startswith("imagenet(timm default"):
        return None
    try:
        timm_version = metadata.version("timm")
    except metadata.PackageNotFoundError:
        return None
    here = Path(__file__).parent
    parts = {
        "format": KEY_FORMAT,
        "backbone": name,
        "layers": [int(v) for v in layers],
        "seed": int(seed),
        "weights_id": weights_id,
        "torch": torch.__version__,
        "timm": timm_version,
        "code": files_digest(*(here / f for f in _CODE)),
    }
    return json_digest(parts)


def _entry(key: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / "runners" / key


@contextmanager
def _quiet() -> Iterator[None]:
    """TorchScript's deprecation notices silenced: expected, see the module docstring."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def load_runner(key: str) -> CachedRunner | None:
    """The cached runner (on the CPU, eval mode) under `key`, or None: no entry, cache off, or an entry that does
    not load (then it is rebuilt and rewritten by the caller)."""
    entry = _entry(key)
    if entry is None:
        return None
    try:
        if not (entry / "meta.json").is_file():
            return None
        meta = json.loads((entry / "meta.json").read_text())
        with _quiet():
            runner = torch.jit.load(str(entry / "runner.pt"), map_location="cpu")
        stats = (tuple(meta["mean"]), tuple(meta["std"]))
        return CachedRunner(runner.eval(), list(meta["channels"]), list(meta["reductions"]), stats)
    except Exception as e:  # any unreadable entry or folder (torch raises several types): timm stands in
        log.info(
            "runner cache: entry %s does not load (%s: %s); building from timm", entry, type(e).__name__, e
        )
        return None


class _NotReproduced(Exception):
    """A scripted copy whose features are not the module's, bit for bit."""


def _reproduces(reference: torch.nn.Module, candidate: torch.nn.Module) -> bool:
    """Whether `candidate` gives `reference`'s outputs bit for bit on the PROBES, each called REPEATS times
    (TorchScript profiles its first calls and runs an optimised plan after)."""
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for hw in PROBES:
            x = torch.randn(1, 3, *hw, generator=gen)
            ref = reference(x)
            for _ in range(REPEATS):
                out = candidate(x)
                if len(out) != len(ref) or any(not torch.equal(a, b) for a, b in zip(ref, out, strict=True)):
                    return False
    return True


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return os.access(folder, os.W_OK)
    except OSError:
        return False


def save_runner(key: str, cached: CachedRunner) -> bool:
    """Write `cached` (its runner an eager CPU module) under `key` when its scripted copy, in memory and as
    reloaded from the file, reproduces it bit for bit. Never fails the caller: anything that goes wrong (an
    unwritable cache, a module TorchScript cannot compile or run) is logged and the entry skipped. True when an
    entry was written."""
    entry = _entry(key)
    if entry is None:
        return False
    if not _writable(entry.parent):  # checked first: an unwritable cache costs no scripting
        log.info("runner cache: %s is not writable; set EXDD_CACHE_DIR to a writable folder", entry.parent)
        return False
    meta = {
        "channels": cached.channels,
        "reductions": cached.reductions,
        "mean": list(cached.stats[0]),
        "std": list(cached.stats[1]),
    }
    try:
        with _quiet():
            scripted = torch.jit.script(cached.runner)
        if not _reproduces(cached.runner, scripted):
            raise _NotReproduced
        with atomic_dir(entry) as tmp, _quiet():
            torch.jit.save(scripted, str(tmp / "runner.pt"))
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            if not _reproduces(cached.runner, torch.jit.load(str(tmp / "runner.pt"), map_location="cpu")):
                raise _NotReproduced  # the folder is removed, not published
    except _NotReproduced:
        log.info(
            "runner cache: the scripted copy of %s differs from it; not cached", type(cached.runner).__name__
        )
        return False
    except Exception as e:  # TorchScript's own failures (compile, run, save) or the disk's: scoring goes on
        log.info("runner cache: %s not written (%s: %s)", entry, type(e).__name__, e)
        return False
    return True
