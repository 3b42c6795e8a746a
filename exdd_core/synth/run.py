"""The synthesize step: paint `count` defects into normal training images inside real defect masks, and keep
where each defect really is (the diff mask). Sample i depends only on (seed, i) - never on `count` - so growing
the count keeps every existing sample and adds new ones.

Backends share one interface, `generate(image, mask, recipe, prompt) -> image`; the procedural one runs on a CPU,
the SDXL one (diffusers inpainting) is the paper's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

import numpy as np

from exdd_core.errors import ParamError
from exdd_core.imageio import load_image, load_mask, save_png
from exdd_core.records import ImageRecord, write_manifest
from exdd_core.synth.diffmask import diff_mask, paste_outside
from exdd_core.synth.plan import SampleRecipe, apply_jitter, plan_sample

MAX_ATTEMPTS = 5
PASTE_DILATE = 3


class Backend(Protocol):
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


def attempt_seed(seed: int, attempt: int) -> int:
    """The plan seed of a replacement attempt: attempt 0 is the run's seed itself."""
    if attempt == 0:
        return seed
    return int(np.random.SeedSequence([seed, 104729, attempt]).generate_state(1)[0])


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
    log: Callable[[str], None] = print,
    progress: Callable = lambda it, desc, total: it,
) -> dict:
    """Write `count` synthetic defect images, their diff masks, a manifest and the recipes to `out`."""
    if count and backend is None:
        raise ParamError("synth.count > 0 needs a synth.backend (procedural or sdxl)")
    normal_ids = [r.id for r in normal]
    masks_src = [r for r in defective if r.mask_path is not None]
    by_id = {r.id: r for r in normal} | {r.id: r for r in masks_src}
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    replaced, dropped = 0, 0
    records: list[ImageRecord] = []
    recipes: list[dict] = []
    try:
        for i in progress(range(count), f"synthesize ({backend.name if backend else 'none'})", count):
            for attempt in range(MAX_ATTEMPTS):
                recipe = plan_sample(
                    attempt_seed(seed, attempt),
                    i,
                    normal_ids,
                    [r.id for r in masks_src],
                    len(prompts),
                    jitter,
                )
                image = load_image(by_id[recipe.normal_id].image_path, image_size)
                mask = apply_jitter(load_mask(by_id[recipe.mask_id].mask_path, image_size), recipe)
                prompt = prompts[recipe.prompt_index]
                generated = backend.generate(image, mask, recipe, prompt)
                generated = paste_outside(image, generated, mask, PASTE_DILATE)
                dm = diff_mask(image, generated, mask, diff_threshold)
                if dm.any():
                    break
                replaced += 1
                log(
                    f"synthetic sample {i} (attempt {attempt}) changed no pixel above the threshold: replaced"
                )
            else:
                dropped += 1
                log(f"synthetic sample {i}: {MAX_ATTEMPTS} attempts gave an empty diff mask; sample dropped")
                continue
            sid = f"syn_{i:05d}"
            img_path, mask_path = tmp / "images" / f"{sid}.png", tmp / "masks" / f"{sid}.png"
            save_png(img_path, generated)
            save_png(mask_path, dm.astype(np.uint8) * 255)
            records.append(ImageRecord(sid, "train", 1, img_path, mask_path))
            recipes.append(
                {
                    "id": sid,
                    **asdict(recipe),
                    "prompt": prompt,
                    "attempt": attempt,
                    "diff_pixels": int(dm.sum()),
                }
            )
        write_manifest(records, tmp / "manifest.csv", tmp)
        (tmp / "recipes.json").write_text(json.dumps(recipes, indent=1, default=_jsonable))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"samples": len(records), "replaced": replaced, "dropped": dropped}


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(type(x))
