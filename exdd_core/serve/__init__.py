"""Serving: scoring new images from the line with the banks and card (`exdd score`, `exdd export`,
`exdd info`)."""

from exdd_core.runtime.lazy import lazy_exports

_WHERE = {
    "Scorer": "inference",
    "export_model": "export",
    "main": "cli",
    "open_exported": "export",
    "open_scorer": "inference",
    "score_file": "inference",
}
__all__ = sorted(_WHERE)
__getattr__ = lazy_exports(__name__, _WHERE)
