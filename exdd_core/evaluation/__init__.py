"""Evaluation: image and pixel metrics, the evaluate report (one metrics builder), calibration, heatmaps."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "EvalInputs": "report",
    "EvalResult": "report",
    "build_metrics": "report",
    "calibration_ids": "calibration",
    "evaluate": "report",
    "pixel_report": "pixel_metrics",
    "threshold_at_fpr": "calibration",
    "write_heatmaps": "heatmaps",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
