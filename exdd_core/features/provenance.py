"""What names a feature space: the provenance keys stores, banks and cards must agree on, and the input
normalisation of a backbone. A leaf module without torch or zarr, so a deployment card can be read where only
numpy and onnxruntime are installed (`exdd score` on an ONNX export)."""

from __future__ import annotations

from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_stats(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone's weights were trained with (timm's pretrained config of `name`), ImageNet's
    for a model timm has no config for. Random weights use the same, so a model's input never depends on them."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in cfg.mean), tuple(float(v) for v in cfg.std)


# Provenance keys that must agree between the banks and the test features before scoring.
COMPAT_KEYS = (
    "backbone",
    "weights_id",
    "layers",
    "patch_size",
    "aggregation",
    "image_size",
    "grid",
    "stored_dim",
    "projection_seed",
    "dtype",
)


# What `exdd info` shows of a store or bank: its kind, the provenance every store shares, and the rest.
INFO_KEYS = (
    "kind",
    *COMPAT_KEYS,
    "weights",
    "feature_dim",
    "selection",
    "mask_threshold",
    "source_images",
    "sources",  # images per source store: the pipeline's and the verdicts from the line (features.store_union)
    "source_rows",
    "coreset_ratio",
    "coreset_min_size",
    "coverage_radius",
    "coverage_space",
    "device",
)


def line_verdicts(bank_attrs: dict[str, Any]) -> int:
    """How many images confirmed on the line (exdd feedback add) a bank was built from."""
    sources = bank_attrs.get("sources") or {}
    return int(sum(n for kind, n in sources.items() if str(kind).startswith("feedback_")))
