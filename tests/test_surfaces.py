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
def test_every_public_name_resolves_to_its_one_definition(pkg: str, tmp_path: Path) -> None:
    module = importlib.import_module(f"exdd_core.{pkg}")
    folder = Path(module.__file__).parent
    assert module.__all__ == sorted(module.__all__) and module.__all__
    per_file = {
        p.stem: set(defining_modules(_alone(p, tmp_path)))
        for p in folder.glob("*.py")
        if p.stem != "__init__"
    }
    where = defining_modules(folder)
    for name in module.__all__:
        homes = [stem for stem, names in per_file.items() if name in names]
        assert homes == [where[name]], (pkg, name, homes)
        assert getattr(module, name) is getattr(importlib.import_module(f"exdd_core.{pkg}.{homes[0]}"), name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = module.no_such_name


def _alone(path: Path, tmp: Path) -> Path:
    """A folder holding only a copy of `path`, so `defining_modules` reads that one file."""
    folder = tmp / path.stem
    folder.mkdir()
    (folder / path.name).write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    return folder


def test_importing_the_packages_is_cheap() -> None:
    code = "import sys, " + ", ".join(f"exdd_core.{p}" for p in PACKAGES) + "; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
