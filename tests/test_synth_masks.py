"""Generated inpainting masks for data sets without real defect masks (MVTec AD): seeded, non-empty, of
three distinct kinds, and used by synthesize when no real masks exist (synth.masks: auto)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from exdd_core.data import ImageRecord, load_mask, read_manifest, save_png
from exdd_core.runtime import ParamError
from exdd_core.synth import ProceduralBackend, synthesize
from exdd_core.synth.masks import GENERATED_IDS, generated_mask


@pytest.mark.parametrize("shape", [(632, 224), (96, 64), (256, 256)])
def test_generated_masks_seeded_nonempty_and_distinct_kinds(shape) -> None:
    thickness = {}
    for mask_id in GENERATED_IDS:
        masks = [generated_mask(mask_id, shape, seed) for seed in range(12)]
        assert all(m.shape == shape and m.dtype == bool and m.any() for m in masks)
        assert np.array_equal(masks[3], generated_mask(mask_id, shape, 3))  # the seed alone decides
        assert not np.array_equal(masks[3], masks[4])
        # thickness: the largest distance from a mask pixel to the outside, median over seeds
        thickness[mask_id] = np.median([ndimage.distance_transform_edt(m).max() for m in masks])
    assert thickness["generated:crack"] <= 2 < thickness["generated:blob"]
    assert thickness["generated:stroke"] > thickness["generated:crack"]


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown generated mask"):
        generated_mask("generated:star", (32, 32), 0)


def normals(tmp_path, n=4, size=(64, 48)) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        save_png(tmp_path / f"n{k}.png", rng.integers(60, 120, (*size, 3)).astype(np.uint8))
        out.append(ImageRecord(f"n{k}", "train", 0, tmp_path / f"n{k}.png"))
    return out


def run(tmp_path, masks: str, count: int = 6) -> dict:
    return synthesize(
        normals(tmp_path),
        [ImageRecord("d0", "train", 1, tmp_path / "n0.png")],  # a known defect without a mask
        tmp_path / "out",
        backend=ProceduralBackend(),
        count=count,
        seed=0,
        prompts=["a", "b"],
        jitter=True,
        diff_threshold=0.08,
        image_size=(64, 48),
        masks=masks,
        log=lambda m: None,
    )


def test_synthesize_without_real_masks_uses_generated_ones(tmp_path) -> None:
    summary = run(tmp_path, "auto")
    records = read_manifest(tmp_path / "out" / "manifest.csv")
    assert summary["samples"] == len(records) >= 5
    recipes = json.loads((tmp_path / "out" / "recipes.json").read_text())
    assert {r["mask_id"] for r in recipes} <= set(GENERATED_IDS)
    assert all(load_mask(r.mask_path).any() for r in records)  # each sample has its diff mask


def test_real_masks_required_when_asked(tmp_path) -> None:
    with pytest.raises(ParamError, match=r"synth\.masks: generated"):
        run(tmp_path, "real")
