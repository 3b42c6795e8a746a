"""Serving: scoring new images from the line with the banks and card (`exdd score`, `exdd export`,
`exdd info`)."""

from exdd_core.runtime.lazy import lazy_surface

__all__, __getattr__ = lazy_surface(__name__, "Scorer export_model main open_exported open_scorer")
