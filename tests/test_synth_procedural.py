"""CPU synthesis pieces: diff masks, pasting the original back outside the mask, the per-sample plan and the
procedural painter (which must never touch a pixel outside the defect mask)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exdd_core.data.defects import random_defect, scratch, smudge, spot
from exdd_core.runtime import InputError, ParamError
from exdd_core.synth.diffmask import diff_mask, paste_outside
from exdd_core.synth.plan import SampleRecipe, apply_jitter, plan_sample
from exdd_core.synth.procedural import paint_defect


def _surface(h: int = 40, w: int = 30, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 180, (h, w, 3), dtype=np.uint8)


def test_diff_mask_hand_made_pair() -> None:
    original = np.full((20, 20, 3), 100, np.uint8)
    generated = original.copy()
    generated[5:9, 5:9, 1] = 160  # a real change (60 levels) inside the inpaint mask
    generated[6, 15] = 200  # a big change, but far outside the (dilated) inpaint mask
    generated[12, 7] = 110  # inside, but below the threshold
    generated[14, 4] = 200  # inside, above threshold, but a 1-px speck (min_area removes it)
    inpaint = np.zeros((20, 20), bool)
    inpaint[4:16, 3:11] = True
    out = diff_mask(original, generated, inpaint, threshold=0.1, dilate=1, min_area=4)
    expected = np.zeros((20, 20), bool)
    expected[5:9, 5:9] = True
    assert (out == expected).all()


def test_diff_mask_dilation_reaches_just_outside() -> None:
    original = np.zeros((10, 10, 3), np.uint8)
    generated = original.copy()
    generated[2:6, 2:6] = 255
    inpaint = np.zeros((10, 10), bool)
    inpaint[3:5, 3:5] = True
    assert diff_mask(original, generated, inpaint, 0.1, dilate=0, min_area=1).sum() == 4
    assert diff_mask(original, generated, inpaint, 0.1, dilate=1, min_area=1).sum() == 16


def test_diff_mask_rejects_bad_input() -> None:
    img = _surface()
    with pytest.raises(ParamError):
        diff_mask(img, img, np.zeros(img.shape[:2], bool), threshold=1.5)
    with pytest.raises(InputError):
        diff_mask(img, img[:10], np.zeros(img.shape[:2], bool), threshold=0.1)


def test_paste_outside_keeps_original_outside_dilated_mask() -> None:
    original, generated = _surface(seed=1), _surface(seed=2)
    mask = np.zeros(original.shape[:2], bool)
    mask[10:20, 8:14] = True
    out = paste_outside(original, generated, mask, dilate=2)
    region = np.zeros_like(mask)
    region[8:22, 6:16] = True
    assert (out[~region] == original[~region]).all()
    assert (out[region] == generated[region]).all()


def test_plan_sample_independent_of_count_and_prompts_even() -> None:
    normals, masks = [f"n{i}" for i in range(7)], [f"m{i}" for i in range(5)]
    short = [plan_sample(42, i, normals, masks, 2, jitter=True) for i in range(50)]
    long = [plan_sample(42, i, normals, masks, 2, jitter=True) for i in range(150)]
    assert short == long[:50]
    for count in (1, 50, 100, 150, 7):
        prompts = [plan_sample(42, i, normals, masks, 2, True).prompt_index for i in range(count)]
        assert abs(prompts.count(0) - prompts.count(1)) <= 1
    assert len({r.normal_id for r in long}) > 1 and len({r.mask_id for r in long}) > 1
    assert plan_sample(43, 0, normals, masks, 2, True) != short[0]


def test_plan_sample_jitter_off_keeps_choices() -> None:
    on = plan_sample(1, 3, ["a", "b", "c"], ["x", "y"], 2, jitter=True)
    off = plan_sample(1, 3, ["a", "b", "c"], ["x", "y"], 2, jitter=False)
    assert (on.normal_id, on.mask_id, on.sample_seed) == (off.normal_id, off.mask_id, off.sample_seed)
    assert (off.flip_h, off.flip_v, off.shift, off.scale) == (False, False, (0.0, 0.0), 1.0)


def test_plan_sample_needs_images_and_masks() -> None:
    with pytest.raises(ParamError, match="normal training images"):
        plan_sample(0, 0, [], ["m"], 2, True)
    with pytest.raises(ParamError, match="real defect masks"):
        plan_sample(0, 0, ["n"], [], 2, True)


def _recipe(**kw: object) -> SampleRecipe:
    base = {
        "index": 0,
        "normal_id": "n",
        "mask_id": "m",
        "prompt_index": 0,
        "flip_h": False,
        "flip_v": False,
        "shift": (0.0, 0.0),
        "scale": 1.0,
        "sample_seed": 0,
    }
    base.update(kw)
    return SampleRecipe(**base)  # type: ignore[arg-type]


def test_apply_jitter_flip_shift_scale_and_fallback() -> None:
    mask = np.zeros((50, 40), bool)
    mask[10:20, 5:15] = True
    assert (apply_jitter(mask, _recipe()) == mask).all()
    assert (apply_jitter(mask, _recipe(flip_h=True)) == mask[:, ::-1]).all()
    shifted = apply_jitter(mask, _recipe(shift=(0.1, -0.1)))
    assert (shifted == np.roll(np.roll(mask, 5, 0), -4, 1)).all()
    grown = apply_jitter(mask, _recipe(scale=1.2))
    assert grown.shape == mask.shape and 100 < grown.sum() <= 144
    edge = np.zeros((50, 40), bool)
    edge[0:2, 0:2] = True
    pushed_off = apply_jitter(edge, _recipe(shift=(-0.1, -0.1), scale=0.8))
    assert (pushed_off == edge).all()  # empty result → the unjittered mask


@pytest.mark.parametrize("make", [scratch, spot, smudge])
def test_primitives_mask_is_footprint(make: object) -> None:
    for seed in range(5):
        d = make(np.random.default_rng(seed), (64, 48))  # type: ignore[operator]
        assert d.delta.dtype == np.float32 and d.mask.dtype == bool
        assert d.mask.any()
        assert ((d.delta != 0) == d.mask).all()
        assert (np.abs(d.delta[d.mask]) > 1.0).all()


def test_scratch_width_and_sign() -> None:
    d = scratch(
        np.random.default_rng(0), (80, 80), width=1.0, length=40, angle=0.0, bright=False, contrast=50
    )
    assert (d.delta <= 0).all() and d.mask.sum() < 40 * 4
    assert random_defect(np.random.default_rng(0), (30, 30), "spot").mask.any()


@pytest.mark.parametrize("prompt", [0, 1, 2])
def test_paint_defect_only_inside_mask_and_visible(prompt: int) -> None:
    image = _surface(80, 60, seed=3)
    mask = np.zeros((80, 60), bool)
    mask[20:50, 25:32] = True
    out = paint_defect(image, mask, np.random.default_rng(0), prompt)
    assert out.dtype == np.uint8 and out.shape == image.shape
    assert (out[~mask] == image[~mask]).all()
    found = diff_mask(image, out, mask, threshold=0.1)
    assert found.sum() > 0.5 * mask.sum()


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    prompt=st.integers(0, 1),
    y=st.integers(0, 30),
    x=st.integers(0, 20),
    hh=st.integers(1, 10),
    ww=st.integers(1, 10),
)
def test_paint_defect_never_outside_mask(seed: int, prompt: int, y: int, x: int, hh: int, ww: int) -> None:
    image = _surface(40, 30, seed=seed % 7)
    mask = np.zeros((40, 30), bool)
    mask[y : y + hh, x : x + ww] = True
    out = paint_defect(image, mask, np.random.default_rng(seed), prompt)
    assert (out[~mask] == image[~mask]).all()
    assert (out[mask] != image[mask]).any()


def test_paint_defect_is_deterministic_and_rejects_empty_mask() -> None:
    image = _surface()
    mask = np.zeros(image.shape[:2], bool)
    mask[5:15, 5:10] = True
    a = paint_defect(image, mask, np.random.default_rng(9), 0)
    b = paint_defect(image, mask, np.random.default_rng(9), 0)
    assert (a == b).all()
    with pytest.raises(InputError, match="empty"):
        paint_defect(image, np.zeros_like(mask), np.random.default_rng(0), 0)
