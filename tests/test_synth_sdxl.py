"""The SDXL inpainting backend, proven offline on a tiny randomly initialised SDXL inpainting pipeline saved to a
folder (tests/tiny_sdxl.py) and loaded through `synth.model: <folder>` by the real backend and stage code:
sizes, pixels outside the masks, bit-identical reruns, count growth that generates only the new samples,
batching, equality with diffusers' own `padding_mask_crop`, and fast, helpful failures without weights."""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from exdd_core.data import ImageRecord, load_image, load_mask, read_manifest, save_png, write_manifest
from exdd_core.runtime import MissingResourceError
from exdd_core.synth import SampleCache, synthesize
from exdd_core.synth.diffmask import dilate_mask
from exdd_core.synth.plan import SampleRecipe, apply_jitter
from exdd_core.synth.sdxl import SdxlBackend, locate_model
from tests.tiny_sdxl import save_tiny_sdxl_inpaint

# diffusers' Euler scheduler calls np.array(tensor, copy=False) under numpy 2: harmless, not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = (48, 32)  # (H, W): tall and narrow like KSDD2, stretched to the square generation resolution
RESOLUTION = 64

DILATE = 2  # synth.dilate (not the default 3, so the test sees it is used)


def synth_params(model: Path | str, **over) -> dict:
    """params.yaml's synth section, shrunk to the tiny pipeline: 64 px, 2 steps (one denoising step at
    strength 0.99), CPU."""
    synth = yaml.safe_load((REPO / "params.yaml").read_text())["synth"]
    synth.update(backend="sdxl", model=str(model), resolution=RESOLUTION, steps=2, device="cpu", count=3)
    synth.update(over)
    return synth


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_sdxl_inpaint(tmp_path_factory.mktemp("models") / "tiny-sdxl-inpaint")


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A smooth grey surface with a little noise, like a KSDD2 strip."""
    h, w = IMAGE_SIZE
    base = 90 + 40 * np.sin(np.linspace(0, 3, h))[:, None] + rng.normal(0, 4, (h, w))
    return np.clip(np.repeat(base[:, :, None], 3, axis=2), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """data/prepared with 3 normal and 2 defective training images (each with a ground-truth mask)."""
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    normal, defective = root / "train_normal", root / "train_defective"
    records = []
    for k in range(3):
        save_png(normal / f"n{k}.png", _texture(rng))
        records.append(ImageRecord(f"n{k}", "train", 0, normal / f"n{k}.png"))
    write_manifest(records, normal / "manifest.csv", normal)
    records = []
    for k, (y, x, hh, ww) in enumerate([(10, 8, 14, 6), (26, 12, 6, 12)]):
        mask = np.zeros(IMAGE_SIZE, bool)
        mask[y : y + hh, x : x + ww] = True
        save_png(defective / f"d{k}.png", _texture(rng))
        save_png(defective / f"d{k}_GT.png", mask)
        records.append(ImageRecord(f"d{k}", "train", 1, defective / f"d{k}.png", defective / f"d{k}_GT.png"))
    write_manifest(records, defective / "manifest.csv", defective)
    return root


def run_synth(
    prepared: Path, out: Path, backend, count: int, cache: Path | None, batch_size: int = 1, log=None
) -> dict:
    return synthesize(
        read_manifest(prepared / "train_normal" / "manifest.csv"),
        read_manifest(prepared / "train_defective" / "manifest.csv"),
        out,
        backend=backend,
        count=count,
        seed=0,
        prompts=["copper metal scratches", "white marks on the wall"],
        jitter=True,
        diff_threshold=0.08,
        image_size=IMAGE_SIZE,
        dilate=DILATE,
        cache=SampleCache(cache) if cache else None,
        batch_size=batch_size,
        log=log or (lambda m: None),
    )


def folder_bytes(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def first_run(tiny_model, prepared, tmp_path_factory) -> tuple[Path, Path, dict]:
    """3 samples generated from scratch with a fresh cache: (output folder, cache folder, summary)."""
    tmp = tmp_path_factory.mktemp("first")
    backend = SdxlBackend.from_params(synth_params(tiny_model), log=lambda m: None)
    summary = run_synth(prepared, tmp / "synthetic", backend, 3, tmp / "cache")
    return tmp / "synthetic", tmp / "cache", summary


# ------------------------------------------------------------------------------------------- missing weights


def test_uncached_hub_model_fails_fast_with_instructions():
    t0 = time.perf_counter()
    with pytest.raises(MissingResourceError) as err:
        SdxlBackend.from_params(synth_params("exdd-tests/no-such-sdxl-inpainting"), log=lambda m: None)
    assert time.perf_counter() - t0 < 5.0
    msg = str(err.value)
    for needle in ("exdd-tests/no-such-sdxl-inpainting", "hf download", "HF_HOME", "synth.model", "dvc pull"):
        assert needle in msg, needle


def test_missing_or_incomplete_local_folder_fails_fast(tiny_model, tmp_path):
    with pytest.raises(MissingResourceError, match="does not exist"):
        locate_model(str(tmp_path / "nowhere" / "sdxl"))
    with pytest.raises(MissingResourceError, match=r"no model_index\.json"):
        locate_model(str(tmp_path))
    partial = tmp_path / "partial"
    shutil.copytree(tiny_model, partial)
    for f in (partial / "unet").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(MissingResourceError, match="lacks unet"):
        locate_model(str(partial))


def test_local_model_identity_is_its_content_not_its_place(tiny_model, tmp_path):
    moved = tmp_path / "elsewhere"
    shutil.copytree(tiny_model, moved)
    assert locate_model(str(moved)).identity == locate_model(str(tiny_model)).identity
    other = save_tiny_sdxl_inpaint(tmp_path / "other", seed=1)
    assert locate_model(str(other)).identity != locate_model(str(tiny_model)).identity


# ---------------------------------------------------------------------------------------------- generation


def _recipe(entry: dict) -> SampleRecipe:
    values = {f.name: entry[f.name] for f in fields(SampleRecipe)}
    values["shift"] = tuple(values["shift"])
    return SampleRecipe(**values)


def test_images_and_diff_masks_sizes_and_untouched_outside(first_run, prepared):
    out, _, summary = first_run
    assert summary["samples"] == 3 and summary["generated"] >= 3 and summary["cached"] == 0
    records = read_manifest(out / "manifest.csv")
    recipes = json.loads((out / "recipes.json").read_text())
    assert [r.id for r in records] == ["syn_00000", "syn_00001", "syn_00002"]
    for rec, entry in zip(records, recipes, strict=True):
        image, dm = load_image(rec.image_path), load_mask(rec.mask_path)
        assert image.shape == (*IMAGE_SIZE, 3) and dm.shape == IMAGE_SIZE
        recipe = _recipe(entry)
        original = load_image(prepared / "train_normal" / f"{recipe.normal_id}.png", IMAGE_SIZE)
        gt = prepared / "train_defective" / f"{recipe.mask_id}_GT.png"
        mask = apply_jitter(load_mask(gt, IMAGE_SIZE), recipe)
        region = dilate_mask(mask, DILATE)
        assert np.array_equal(image[~region], original[~region])  # only the defect region changes
        assert dm.any() and not (dm & ~dilate_mask(mask, DILATE)).any()
        assert entry["prompt"] == ["copper metal scratches", "white marks on the wall"][entry["index"] % 2]


def test_rerun_from_scratch_is_bit_identical(first_run, tiny_model, prepared, tmp_path):
    out, _, _ = first_run
    lines: list[str] = []
    backend = SdxlBackend.from_params(synth_params(tiny_model), log=lines.append)
    summary = run_synth(
        prepared, tmp_path / "synthetic", backend, 3, tmp_path / "fresh-cache", log=lines.append
    )
    assert summary["cached"] == 0
    timing = [line for line in lines if "s/image" in line]  # model, device, dtype and time per image
    assert timing and str(tiny_model) in timing[0] and "cpu float32" in timing[0]
    assert folder_bytes(tmp_path / "synthetic") == folder_bytes(out)


def test_growing_count_generates_only_new_samples(first_run, tiny_model, prepared, tmp_path):
    out, cache, _ = first_run
    grown_cache = tmp_path / "cache"
    shutil.copytree(cache, grown_cache)
    backend = SdxlBackend.from_params(synth_params(tiny_model), log=lambda m: None)
    calls = []
    generate_batch = backend.generate_batch
    backend.generate_batch = lambda ims, ms, recs, ps: (
        calls.extend(r.index for r in recs) or generate_batch(ims, ms, recs, ps)
    )
    summary = run_synth(prepared, tmp_path / "synthetic", backend, 5, grown_cache)
    assert summary["samples"] == 5 and summary["cached"] == 3
    assert set(calls) == {3, 4}
    grown = folder_bytes(tmp_path / "synthetic")
    for name, data in folder_bytes(out).items():
        if name.startswith(("images/", "masks/")):
            assert grown[name] == data, name
    # Everything cached now: a rerun never even loads the pipeline.
    again = SdxlBackend.from_params(synth_params(tiny_model), log=lambda m: None)
    summary = run_synth(prepared, tmp_path / "again", again, 5, grown_cache)
    assert summary["generated"] == 0 and again._pipe is None
    assert folder_bytes(tmp_path / "again") == grown


def test_batched_generation_equals_one_at_a_time(first_run, tiny_model, prepared, tmp_path):
    out, _, _ = first_run
    backend = SdxlBackend.from_params(synth_params(tiny_model, batch_size=2), log=lambda m: None)
    run_synth(prepared, tmp_path / "synthetic", backend, 3, None, batch_size=2)
    ours, theirs = folder_bytes(tmp_path / "synthetic"), folder_bytes(out)
    assert {k: v for k, v in ours.items() if k != "recipes.json"} == {
        k: v for k, v in theirs.items() if k != "recipes.json"
    }


def test_crop_matches_the_pipelines_own_padding_mask_crop(tiny_model):
    """Cropping here (so batches can mix masks) gives what diffusers' `padding_mask_crop` gives, as the
    authors call it: image and mask stretched to resolution², one generator, overlay, resize back."""
    import torch
    from PIL import Image

    synth = synth_params(tiny_model)
    backend = SdxlBackend.from_params(synth, log=lambda m: None)
    rng = np.random.default_rng(3)
    image = _texture(rng)
    mask = np.zeros(IMAGE_SIZE, bool)
    mask[5:20, 4:12] = True
    recipe = SampleRecipe(0, "n", "d", 0, False, False, (0.0, 0.0), 1.0, 1234)
    ours = backend.generate(image, mask, recipe, "copper metal scratches")
    r = RESOLUTION
    theirs = backend.pipeline()(
        prompt="copper metal scratches",
        negative_prompt=synth["negative_prompt"],
        image=Image.fromarray(image).resize((r, r)),
        mask_image=Image.fromarray(mask.astype(np.uint8) * 255).resize((r, r)),
        height=r,
        width=r,
        num_inference_steps=synth["steps"],
        guidance_scale=synth["guidance"],
        strength=synth["strength"],
        padding_mask_crop=synth["padding_mask_crop"],
        generator=torch.Generator().manual_seed(1234),
        original_size=(r, r),
        target_size=(r, r),
    ).images[0]
    theirs = np.asarray(theirs.resize(IMAGE_SIZE[::-1]))
    assert np.array_equal(ours, theirs)


def test_cache_key_covers_generation_parameters(tiny_model):
    base = SdxlBackend.from_params(synth_params(tiny_model), log=lambda m: None).cache_identity()
    for change in (
        {"steps": 3},
        {"guidance": 7.5},
        {"strength": 0.9},
        {"padding_mask_crop": None},
        {"resolution": 128},
        {"negative_prompt": ""},
    ):
        other = SdxlBackend.from_params(synth_params(tiny_model, **change), log=lambda m: None)
        assert other.cache_identity() != base, change
    same = SdxlBackend.from_params(synth_params(tiny_model, batch_size=4, count=99), log=lambda m: None)
    assert same.cache_identity() == base


# --------------------------------------------------------------------------------------------------- stage


def test_stage_runs_on_the_tiny_pipeline_and_grows_incrementally(tiny_model, prepared, tmp_path, monkeypatch):
    """stages/synthesize.py with `synth.model: <folder>`: count 2, then 3 generates one sample."""
    shutil.copytree(prepared, tmp_path / "data" / "prepared")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["image_size"] = list(IMAGE_SIZE)
    params["synth"] = synth_params(tiny_model, count=2, cache_dir=".exdd-cache/synth")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copy2(REPO / "paths.yaml", tmp_path / "paths.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EXDD_NO_PROGRESS", "1")
    spec = importlib.util.spec_from_file_location("stage_synthesize", REPO / "stages" / "synthesize.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    summary = stage.main()
    assert summary.startswith("sdxl model=") and "samples=2" in summary and "cached=0" in summary
    first = folder_bytes(tmp_path / "data" / "synthetic")
    params["synth"]["count"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    summary = stage.main()
    assert "samples=3" in summary and "cached=2" in summary
    grown = folder_bytes(tmp_path / "data" / "synthetic")
    assert all(grown[k] == v for k, v in first.items() if k.startswith(("images/", "masks/")))
    assert len(list((tmp_path / ".exdd-cache" / "synth").rglob("*.png"))) >= 3
