"""Features: the backbone and its registry ImageNet weights, locally aware patch aggregation, projection,
the embedder (image -> rows as a store holds them), extraction into Zarr stores."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "BackboneSpec": "backbone",
    "Embedder": "embedder",
    "PatchFeatureExtractor": "backbone",
    "Store": "store",
    "StoreWriter": "store",
    "aggregate_patches": "patches",
    "check_compatible": "store",
    "create_backbone": "backbone",
    "load_registry_weights": "registry_weights",
    "make_extractor": "embedder",
    "project": "projection",
    "projection_matrix": "projection",
    "to_rows": "patches",
    "write_store": "extract",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
