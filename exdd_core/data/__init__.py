"""Data: image records and manifests, image/mask IO, data sources, the prepare step, defect painting."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__,
    "ImageRecord load_image load_mask read_manifest read_source save_png write_manifest write_prepared",
)
