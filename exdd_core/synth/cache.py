"""A content-addressed cache of raw synthesis outputs, one PNG per sample, so that growing `synth.count` from 100
to 150 (or rerunning after a change that does not touch generation, like `synth.diff_threshold`) generates
only what is new. SDXL samples cost seconds to minutes each on a GPU; the cache makes DVC's "rerun the stage"
cheap while the stage's DVC output stays the complete set.

What is cached is the backend's *raw* output for one (input image, inpainting mask, prompt, noise seed) under
one backend configuration - before pasting the original back outside the mask and before the diff mask - so
post-processing parameters can change without regenerating. The key is the SHA-256 of a canonical JSON of
everything that determines that output (see `sample_key`); a hit is therefore bit-identical to what a fresh
generation would give, and nothing ever needs invalidating: a changed input is simply another key.

Layout: `<root>/<key[:2]>/<key>.png` (lossless, so exact) beside `<key>.json` (the key's parts, for humans).
Writes are atomic (temp file + rename), so a killed run leaves no half-written entry, and two runs sharing a
cache (queued DVC experiments pointed at one absolute `synth.cache_dir`) can only race to write equal bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.data.imageio import load_image, save_png
from exdd_core.runtime.atomic import write_text_atomic
from exdd_core.runtime.errors import InputError
from exdd_core.runtime.hashing import array_digest, files_digest, json_digest

KEY_FORMAT = 1  # bump when the meaning of a key's parts changes, so old entries stop matching


def sample_key(
    backend: dict[str, Any], image: np.ndarray, mask: np.ndarray, prompt: str, noise_seed: int
) -> tuple[str, dict[str, Any]]:
    """The key of one raw backend output, and the parts it hashes.

    `backend` is the backend's own identity (its name, model and revision or fingerprint, every generation
    parameter, library versions); the rest is the sample: the exact input image and (jittered) mask as
    arrays - so a changed resize, jitter or source file is a new key - the prompt, and the seed of the
    sample's noise. (seed, i) enter through the recipe they produce: which image, which mask and jitter,
    which prompt and which noise seed."""
    parts = {
        "format": KEY_FORMAT,
        "backend": backend,
        "image": array_digest(image),
        "mask": array_digest(np.asarray(mask, dtype=bool)),
        "prompt": prompt,
        "noise_seed": int(noise_seed),
    }
    return json_digest(parts), parts


class SampleCache:
    """Raw synthesis outputs on disk, addressed by `sample_key`; counts hits and writes for the stage log."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser()
        self.hits = 0
        self.writes = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.png", folder / f"{key}.json"

    def get(self, key: str, shape: tuple[int, int, int]) -> np.ndarray | None:
        """The cached uint8 image of `key`, or None. An unreadable or wrongly sized entry (a disk error, a
        hand-edited file) is deleted and reported as a miss, so it is regenerated instead of used."""
        png, meta = self._paths(key)
        if not png.is_file():
            return None
        try:
            image = load_image(png)
        except InputError:
            image = None
        if image is None or image.shape != tuple(shape):
            png.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return None
        self.hits += 1
        return image

    def put(self, key: str, image: np.ndarray, parts: dict[str, Any]) -> None:
        """Store a raw output (atomically) with its key parts beside it."""
        png, meta = self._paths(key)
        save_png(png, np.asarray(image, dtype=np.uint8))
        write_text_atomic(meta, json.dumps(parts, indent=1, sort_keys=True))
        self.writes += 1


def source_digest(*paths: Path) -> str:
    """SHA-256 of source files' contents: part of a CPU backend's identity, so editing its code invalidates
    its cached outputs (cheap to regenerate, and a stale hit would silently disagree with the code)."""
    return files_digest(*paths)
