"""The project's own error types: every failure a user can cause is one of these, with a message that names
the file or parameter and what was expected."""

from __future__ import annotations


class ExddError(Exception):
    """Base class: anything raised on purpose by exdd (bad input, missing weights, mismatched artifacts)."""


class InputError(ExddError):
    """A file (image, mask, archive, store) is missing, unreadable or not what was expected."""


class ParamError(ExddError):
    """A parameter in params.yaml is unknown, of the wrong type or out of range."""


class MissingResourceError(ExddError):
    """Weights or a dataset are not on this machine; the message says how to get them."""


class MismatchError(ExddError):
    """Artifacts built with different settings (backbone, image size, projection...) are combined."""


class RankStopped(ExddError):
    """A rank of a sharded stage stopped because another rank failed (that rank's error says why)."""
