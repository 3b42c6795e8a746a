"""Data: image records and manifests, image/mask IO, data sources, the prepare step, defect painting."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "ImageRecord": "records",
    "load_image": "imageio",
    "load_mask": "imageio",
    "read_manifest": "records",
    "read_source": "prepare",
    "save_png": "imageio",
    "write_manifest": "records",
    "write_prepared": "prepare",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
