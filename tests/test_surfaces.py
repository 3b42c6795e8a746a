"""Each package's public surface: every name in `__all__` is defined by exactly one of the package's modules and
resolves to that object, unknown names are an AttributeError, and importing every package (as `exdd --help`
does) imports no torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from exdd_core.runtime.lazy import defining_modules

PACKAGES = ("runtime", "data", "synth", "features", "banks", "scoring", "evaluation", "serve")


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_public_name_resolves_to_its_one_definition(pkg: str) -> None:
    module = importlib.import_module(f"exdd_core.{pkg}")
    folder = Path(module.__file__).parent
    assert module.__all__ == sorted(module.__all__) and module.__all__
    where = defining_modules(folder)
    for name in module.__all__:
        homes = [
            p.stem for p in folder.glob("*.py") if p.stem != "__init__" and name in defining_modules_of(p)
        ]
        assert homes == [where[name]], (pkg, name, homes)
        assert getattr(module, name) is getattr(importlib.import_module(f"exdd_core.{pkg}.{homes[0]}"), name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = module.no_such_name


def defining_modules_of(path: Path) -> set[str]:
    """Names one file defines at top level (a package of just that file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / path.name).write_text(path.read_text())
        return set(defining_modules(Path(tmp)))


def test_importing_the_packages_is_cheap() -> None:
    code = "import sys, " + ", ".join(f"exdd_core.{p}" for p in PACKAGES) + "; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
