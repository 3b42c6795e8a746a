"""Evaluation: image and pixel metrics, the evaluate report (one metrics builder), calibration, heatmaps."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(
    __name__,
    "EvalInputs EvalResult build_metrics evaluate pixel_report threshold_at_fpr write_heatmaps",
)
