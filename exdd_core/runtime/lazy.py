"""Lazy public surfaces: a package names what it offers (`__all__`) and where each name lives, and the module
is imported on first use. Why: `import exdd_core.serve` must not pay for torch, timm and zarr (the CLI's start-up),
and a stage importing one leaf module must not import its whole package (the stages' import closures, which
`tests/test_dag_deps.py` checks against dvc.yaml, stay what the code really uses)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `package`: name -> its value from `package.<where[name]>`, imported once."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{where[name]}"), name)

    return __getattr__
