"""Which torch device a stage runs on, checked up front: a missing GPU is a clear error, not a driver
traceback halfway through a stage."""

from __future__ import annotations

from exdd_core.runtime.choices import DEVICES
from exdd_core.runtime.errors import ParamError


def resolve_device(device: str, what: str = "device") -> str:
    """`auto` -> `cuda` when a GPU is present, else `cpu`; `cpu` as is; `cuda` only where a GPU is visible.
    `what` names the setting in errors (e.g. `scoring.device`, `--device`)."""
    import torch  # here, not at module level: the CLI and prepare never need torch for this

    if device not in DEVICES:
        raise ParamError(f"{what} = {device!r} is not allowed; expected one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ParamError(
            f"{what} = 'cuda', but torch sees no CUDA GPU on this machine (torch.cuda.is_available() is "
            f"False, torch {torch.__version__}); use 'auto' (GPU when present) or 'cpu'"
        )
    return device
