"""Synthetic defects: sample plans, the procedural and SDXL backends, diff masks, the per-sample cache."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "Backend": "run",
    "ProceduralBackend": "run",
    "SampleCache": "cache",
    "SdxlBackend": "sdxl",
    "diff_mask": "diffmask",
    "synthesize": "run",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
