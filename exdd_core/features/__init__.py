"""Features: the backbone and its registry ImageNet weights, locally aware patch aggregation, projection,
the embedder (image -> rows as a store holds them), extraction into Zarr stores."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__,
    "BackboneSpec Embedder PatchFeatureExtractor Store StoreWriter aggregate_patches check_compatible create_backbone load_registry_weights make_extractor project projection_matrix to_rows write_store",
)
