"""Each package's public surface: every name in `__all__` resolves to the object of the module it lives in, and
importing a package (as `exdd --help` does) does not import torch."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = ("runtime", "data", "synth", "features", "banks", "scoring", "evaluation", "serve")


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_public_name_resolves(pkg: str) -> None:
    module = importlib.import_module(f"exdd_core.{pkg}")
    assert module.__all__ == sorted(module.__all__) and module.__all__
    for name in module.__all__:
        value = getattr(module, name)
        home = importlib.import_module(f"exdd_core.{pkg}.{module._WHERE[name]}")
        assert value is getattr(home, name), (pkg, name)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        _ = module.no_such_name


def test_importing_the_packages_is_cheap() -> None:
    code = "import sys, " + ", ".join(f"exdd_core.{p}" for p in PACKAGES) + "; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
