"""The paper's synthesis backend (design.md, "The method" 7; paper §3.3): SDXL inpainting with diffusers.

It follows the authors' generation script (DIAG's `generate_augmented_images.py`): the normal image and the
real defect mask are stretched to `synth.resolution`² (1024², "to overcome the SDXL shape bias"), inpainted with
`padding_mask_crop` (the model sees a square crop around the mask, resized to the full resolution, and the
result is pasted back through the mask), then resized back to `data.image_size`. Unlike that script, every
sample gets its own noise generator seeded from its recipe, so sample i never depends on the samples before it
(`synth.count` can grow without changing them), and the crop is done here rather than inside the pipeline so
that `synth.batch_size` > 1 can batch samples with different masks into one call - with the pipeline's own
functions (`get_crop_region`, `resize(..., "fill")`, `apply_overlay`), so the result is the one the pipeline's
`padding_mask_crop` gives (tests/test_synth_sdxl.py checks this).

Weights are looked up locally only, before diffusers (slow to import) is loaded: a hub id must be in the
Hugging Face cache, a path must be a diffusers folder; otherwise the stage stops within seconds with
`MissingResourceError` saying how to get them. The pipeline itself is loaded on the first sample that is not
in the per-sample cache, so a rerun whose samples are all cached never touches the GPU.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from exdd_core.runtime.errors import InputError, MissingResourceError, ParamError
from exdd_core.runtime.hashing import file_fingerprint
from exdd_core.synth.plan import SampleRecipe

DEFAULT_MODEL = "diffusers/stable-diffusion-xl-1.0-inpainting-0.1"
# Bump when how a sample is generated here changes (resizes, crop, overlay): old cached samples stop matching.
GENERATION_VERSION = 1
WEIGHT_COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
WEIGHT_SUFFIXES = (".safetensors",)  # pickled .bin weights are never loaded: they can run code
FULL_HASH_LIMIT = 64 * 2**20  # local weight files up to this size are hashed whole; larger ones head + tail
PARTIAL_HASH_BYTES = 8 * 2**20


@dataclass(frozen=True)
class ModelSource:
    """Where the weights are on this machine. `identity` names their content independently of the folder's
    location: `hub:<repo>@<commit>` for a hub snapshot, `local:<fingerprint>` for a folder."""

    spec: str
    folder: Path
    kind: str  # "hub" or "local"
    identity: str


@dataclass(frozen=True)
class SdxlSettings:
    """The generation parameters of params.yaml's `synth` section that the SDXL backend reads."""

    model: str
    revision: str | None
    negative_prompt: str
    steps: int
    guidance: float
    strength: float
    padding_mask_crop: int | None
    resolution: int
    device: str  # resolved: "cpu" or "cuda"
    batch_size: int

    @classmethod
    def from_params(cls, synth: dict[str, Any]) -> SdxlSettings:
        from exdd_core.runtime.device import resolve_device
        from exdd_core.runtime.distributed import local_device, ranks

        resolution = int(synth["resolution"])
        if resolution % 8:
            raise ParamError(f"synth.resolution must be a multiple of 8 for SDXL, got {resolution}")
        return cls(
            model=str(synth.get("model") or DEFAULT_MODEL),
            revision=synth.get("revision"),
            negative_prompt=str(synth.get("negative_prompt", "")),
            steps=int(synth["steps"]),
            guidance=float(synth["guidance"]),
            strength=float(synth["strength"]),
            padding_mask_crop=synth.get("padding_mask_crop"),
            resolution=resolution,
            # under torchrun, rank r of a node generates on its own GPU, cuda:<local rank>
            device=local_device(resolve_device(synth.get("device", "auto"), "synth.device"), ranks()),
            batch_size=int(synth.get("batch_size", 1)),
        )


# ---------------------------------------------------------------------------------------------- finding weights


def _how_to_get(model: str, revision: str | None, hub_cache: str) -> str:
    """The part of every missing-weights message that says what to do about it."""
    rev = f" --revision {revision}" if revision else ""
    return (
        "How to get them:\n"
        f"  - on a machine with internet: `hf download {model}{rev}` (huggingface_hub's CLI; older versions:"
        f" `huggingface-cli download {model}`), then copy its Hugging Face cache ({hub_cache}) here, or point"
        " HF_HOME (or HF_HUB_CACHE) at a copy;\n"
        f"  - or save the model to a folder (`hf download {model} --local-dir /path/to/sdxl-inpainting`) and set"
        " `synth.model: /path/to/sdxl-inpainting` (e.g. `dvc exp run -S synth.model=/path/to/sdxl-inpainting`);\n"
        "  - or do not generate at all here: DVC shares the generated images (data/synthetic), so a team"
        " generates them once on a GPU box and everyone else runs `dvc pull synthesize` (after that, `dvc"
        " repro` does not rerun this stage);\n"
        "  - for the offline CPU demo, use `synth.backend: procedural` instead."
    )


def _missing(model: str, revision: str | None, why: str) -> MissingResourceError:
    from huggingface_hub import constants

    return MissingResourceError(
        f"SDXL inpainting weights {model!r} are not available on this machine: {why}.\n"
        + _how_to_get(model, revision, str(constants.HF_HUB_CACHE))
    )


def _looks_like_path(model: str) -> bool:
    """A hub id is `org/name`; anything absolute, relative-looking or with more parts is meant as a folder."""
    return model.startswith(("/", ".", "~")) or model.count("/") != 1 or "\\" in model


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(p.name.endswith(WEIGHT_SUFFIXES) for p in folder.iterdir())


def missing_components(folder: Path) -> list[str]:
    """Components named in model_index.json whose folder is absent, and weight-bearing ones without a weight
    file: a half-finished download fails here, in a second, instead of deep inside `from_pretrained`."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, ValueError):
        return ["model_index.json"]
    missing = []
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        part = folder / name
        if not part.is_dir() or (name in WEIGHT_COMPONENTS and not _has_weights(part)):
            missing.append(name)
    return missing


def folder_fingerprint(folder: Path) -> str:
    """Content fingerprint of a local model folder (relative paths + file digests; hidden files ignored), so
    moving or copying the folder keeps the cached samples and replacing its weights invalidates them."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or any(part.startswith(".") for part in rel.parts):
            continue
        h.update(
            rel.as_posix().encode()
            + b"\0"
            + file_fingerprint(p, FULL_HASH_LIMIT, PARTIAL_HASH_BYTES).encode()
            + b"\0"
        )
    return h.hexdigest()


def locate_model(model: str, revision: str | None = None) -> ModelSource:
    """Find the weights locally (never over the network), or raise MissingResourceError with instructions.

    Only the filesystem and huggingface_hub's cache index are read, so this answers within a second even for
    a hub id that was never downloaded (from_pretrained would first retry the network for a long time)."""
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise _missing(model, revision, f"{path} has no model_index.json (not a diffusers model folder)")
        gaps = missing_components(path)
        if gaps:
            raise _missing(model, revision, f"{path} lacks {', '.join(gaps)} (an incomplete copy?)")
        return ModelSource(model, path, "local", "local:" + folder_fingerprint(path))
    if _looks_like_path(model):
        raise _missing(model, revision, f"the folder {path} does not exist")
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(model, "model_index.json", revision=revision)
    except Exception as e:  # an invalid repo id or revision: same advice, with the reason
        raise _missing(
            model, revision, f"cannot look it up in the local cache ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(found, str):
        rev = f" at revision {revision}" if revision else ""
        raise _missing(model, revision, f"{model}{rev} is not in the local Hugging Face cache")
    folder = Path(found).parent
    gaps = missing_components(folder)
    if gaps:
        raise _missing(model, revision, f"the cached snapshot {folder} lacks {', '.join(gaps)}")
    return ModelSource(model, folder, "hub", f"hub:{model}@{folder.name}")


def _fp16_files(folder: Path) -> tuple[bool, bool]:
    """(has fp16-variant weights, has plain weights) in the UNet folder, to choose `variant`."""
    names = [p.name for p in (folder / "unet").iterdir() if p.name.endswith(WEIGHT_SUFFIXES)]
    fp16 = any(".fp16." in n for n in names)
    return fp16, any(".fp16." not in n for n in names)


class _DropVaeUpcastWarning(logging.Filter):
    """Drops diffusers' "modules ... should be kept in float32" warning, which it logs on every VAE encode of a
    `force_upcast` VAE (SDXL's) - four lines per sample that say nothing about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32" not in record.getMessage()


def _quiet_vae_upcast_warning() -> None:
    target = logging.getLogger("diffusers.models.modeling_utils")
    if not any(isinstance(f, _DropVaeUpcastWarning) for f in target.filters):
        target.addFilter(_DropVaeUpcastWarning())


# ------------------------------------------------------------------------------------------------------ backend


class SdxlBackend:
    """`StableDiffusionXLInpaintPipeline` as a synthesis backend: fp16 (and the fp16 weight variant when
    present) on CUDA, fp32 on CPU; one pipeline call per batch of samples."""

    name = "sdxl"

    def __init__(
        self, settings: SdxlSettings, source: ModelSource, log: Callable[[str], None] = print
    ) -> None:
        import torch

        self.settings = settings
        self.source = source
        self.log = log
        self.batch_size = settings.batch_size
        self.dtype = torch.float16 if settings.device == "cuda" else torch.float32
        has_fp16, has_plain = _fp16_files(source.folder)
        self.variant = "fp16" if has_fp16 and (settings.device == "cuda" or not has_plain) else None
        self._pipe = None

    @classmethod
    def from_params(cls, synth: dict[str, Any], log: Callable[[str], None] = print) -> SdxlBackend:
        """Check the weights are here (first, before torch is imported: a missing model fails in about a
        second) and the device exists; the pipeline loads on first use."""
        source = locate_model(str(synth.get("model") or DEFAULT_MODEL), synth.get("revision"))
        settings = SdxlSettings.from_params(synth)
        if settings.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ParamError("synth.device is 'cuda' but torch sees no CUDA GPU; use 'auto' or 'cpu'")
        backend = cls(settings, source, log)
        log(f"sdxl: weights {source.identity} ({source.folder}); will run on {backend.describe_device()}")
        if settings.device == "cpu" and settings.resolution >= 512:
            log(
                f"sdxl: on a CPU at {settings.resolution} px with {settings.steps} steps expect minutes per"
                " image; a CUDA GPU is what this backend is for"
            )
        return backend

    def describe_device(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"{self.settings.device} {dtype}" + (f" (variant {self.variant})" if self.variant else "")

    def describe(self) -> str:
        """One line for the stage log: model, device, dtype."""
        return f"sdxl model={self.source.spec} [{self.source.identity}] device={self.describe_device()}"

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the sample's own inputs that determines a generated image - weights, parameters,
        numeric precision and the library versions - for the per-sample cache key."""
        import torch

        s = self.settings
        return {
            "name": self.name,
            "generation": GENERATION_VERSION,
            "model": self.source.identity,
            "variant": self.variant,
            "device": s.device.split(":")[0],  # the kind of device: every GPU of a node shares the cache
            "dtype": str(self.dtype).removeprefix("torch."),
            "negative_prompt": s.negative_prompt,
            "steps": s.steps,
            "guidance": s.guidance,
            "strength": s.strength,
            "padding_mask_crop": s.padding_mask_crop,
            "resolution": s.resolution,
            "diffusers": importlib.metadata.version("diffusers"),  # without importing it (seconds)
            "torch": torch.__version__,
        }

    # -------------------------------------------------------------------------------------------- loading

    def pipeline(self):
        """The diffusers pipeline, loaded once from the local folder; any loading failure (a corrupt or partial
        file, a mismatched variant) becomes MissingResourceError with the same instructions."""
        if self._pipe is not None:
            return self._pipe
        t0 = time.perf_counter()
        try:
            from diffusers import StableDiffusionXLInpaintPipeline

            pipe = StableDiffusionXLInpaintPipeline.from_pretrained(
                self.source.folder,
                dtype=self.dtype,
                variant=self.variant,
                local_files_only=True,
                use_safetensors=True,  # refuse pickled weights in a user-supplied folder
                add_watermarker=False,  # no invisible pattern painted into training images
            )
        except Exception as e:
            raise _missing(
                self.source.spec,
                self.settings.revision,
                f"loading {self.source.folder} failed ({type(e).__name__}: {e})",
            ) from e
        _quiet_vae_upcast_warning()
        pipe = pipe.to(self.settings.device)
        pipe.set_progress_bar_config(disable=True)  # the stage shows one bar per sample instead
        self._pipe = pipe
        self.log(
            f"sdxl: loaded {self.source.spec} on {self.describe_device()} in {time.perf_counter() - t0:.1f} s"
        )
        return pipe

    # ----------------------------------------------------------------------------------------- generation

    def generate(self, image: np.ndarray, mask: np.ndarray, recipe: SampleRecipe, prompt: str) -> np.ndarray:
        return self.generate_batch([image], [mask], [recipe], [prompt])[0]

    def generate_batch(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        recipes: Sequence[SampleRecipe],
        prompts: Sequence[str],
    ) -> list[np.ndarray]:
        """Inpaint each image inside its mask with one pipeline call; uint8 (H, W, 3) images of the inputs'
        sizes. Each sample's noise comes from a CPU generator seeded by its recipe, so a sample's result does
        not depend on which batch it is in or on the device's random number generator."""
        import torch

        if not (len(images) == len(masks) == len(recipes) == len(prompts)) or not images:
            raise ValueError("generate_batch needs equally many (>= 1) images, masks, recipes and prompts")
        pipe = self.pipeline()
        s = self.settings
        r = s.resolution
        prepared = [self._prepare(pipe, im, m) for im, m in zip(images, masks, strict=True)]
        generators = [torch.Generator("cpu").manual_seed(int(rec.sample_seed)) for rec in recipes]
        with torch.inference_mode():
            out = pipe(
                prompt=list(prompts),
                negative_prompt=[s.negative_prompt] * len(prompts),
                image=[p["image"] for p in prepared],
                mask_image=[p["mask"] for p in prepared],
                height=r,
                width=r,
                num_inference_steps=s.steps,
                guidance_scale=s.guidance,
                strength=s.strength,
                generator=generators,
                original_size=(r, r),
                target_size=(r, r),
                output_type="pil",
            ).images
        results = []
        for gen, p, src in zip(out, prepared, images, strict=True):
            if p["crop"] is not None:
                gen = pipe.image_processor.apply_overlay(p["full_mask"], p["full_image"], gen, p["crop"])
            h, w = src.shape[:2]
            results.append(np.asarray(gen.convert("RGB").resize((w, h), Image.Resampling.BICUBIC), np.uint8))
        return results

    def _prepare(self, pipe, image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        """Stretch image and mask to resolution² (PIL's default bicubic, as the authors' script) and, with
        padding_mask_crop, cut and resize the square around the mask exactly as the pipeline would."""
        mask = np.asarray(mask, dtype=bool)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or mask.shape != image.shape[:2]:
            raise InputError(f"sdxl: need a uint8 (H, W, 3) image and a mask of its size, got {image.shape}")
        if not mask.any():
            raise InputError("sdxl: the defect mask is empty, there is nowhere to paint")
        r = self.settings.resolution
        full_image = Image.fromarray(image).resize((r, r), Image.Resampling.BICUBIC)
        full_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize((r, r), Image.Resampling.BICUBIC)
        pad = self.settings.padding_mask_crop
        if pad is None:
            return {"image": full_image, "mask": full_mask, "crop": None}
        crop = pipe.mask_processor.get_crop_region(full_mask, r, r, pad=pad)
        return {
            "image": pipe.image_processor.resize(full_image.crop(crop), r, r, resize_mode="fill"),
            "mask": pipe.mask_processor.resize(full_mask.crop(crop), r, r, resize_mode="fill"),
            "crop": crop,
            "full_image": full_image,
            "full_mask": full_mask,
        }
