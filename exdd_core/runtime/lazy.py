"""Lazy public surfaces: a package names what it offers, and each name's module is found and imported on first
use. Why: `import exdd_core.serve` must not pay for torch, timm and zarr (the CLI's start-up), and a stage that
imports one leaf module must not import its whole package (the stages' import closures, which
`tests/test_dag_deps.py` checks against dvc.yaml, stay what the code really uses).

The defining module of a name is found by reading the package's sources (top-level `def`, `class` and
assignments; imports do not count), so a package lists its names once and nothing else."""

from __future__ import annotations

import ast
from collections.abc import Callable
from importlib import import_module
from pathlib import Path
from typing import Any


def defining_modules(package_dir: Path) -> dict[str, str]:
    """Top-level name -> the module (file stem) of `package_dir` that defines it (first one, sorted)."""
    found: dict[str, str] = {}
    for path in sorted(package_dir.glob("*.py")):
        if path.stem == "__init__":
            continue
        for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
            targets: list[ast.expr] = []
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                found.setdefault(node.name, path.stem)
            elif isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, ast.AnnAssign):
                targets = [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    found.setdefault(t.id, path.stem)
    return found


def lazy_surface(package: str, names: str) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, a module `__getattr__`) for `package`, offering the space-separated `names`."""
    public = sorted(names.split())
    where: dict[str, str] = {}

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if not where:
            where.update(defining_modules(Path(import_module(package).__file__).parent))  # type: ignore[arg-type]
        if (
            name not in where
        ):  # listed but not defined in the sources (a packaging error): still an AttributeError
            raise AttributeError(f"module {package!r} lists {name!r} but no module of it defines it")
        return getattr(import_module(f"{package}.{where[name]}"), name)

    return public, __getattr__
