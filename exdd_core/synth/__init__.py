"""Synthetic defects: sample plans, the procedural and SDXL backends, diff masks, the per-sample cache."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__, "Backend ProceduralBackend SampleCache SdxlBackend diff_mask synthesize"
)
