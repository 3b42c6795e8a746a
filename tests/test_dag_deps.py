"""dvc.yaml's deps cover each stage's real import closure, so editing any code a stage runs reruns it."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from tests.dag_deps import REPO, import_closure, undeclared_code, undeclared_params

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_stage_declares_its_import_closure() -> None:
    assert undeclared_code(DVC) == {}


def test_the_check_catches_a_removed_dep() -> None:
    for name, stage in DVC["stages"].items():
        for dep in [d for d in stage["deps"] if str(d).startswith(("exdd_core", "stages"))]:
            broken = copy.deepcopy(DVC)
            broken["stages"][name]["deps"].remove(dep)
            assert name in undeclared_code(broken), f"removing {dep} from {name} went unnoticed"


def test_closure_sees_lazy_and_package_imports() -> None:
    closure = import_closure(REPO / "stages" / "synthesize.py")
    assert Path("exdd_core/synth/sdxl.py") in closure  # imported inside a function
    assert Path("exdd_core/__init__.py") in closure and Path("exdd_core/synth/__init__.py") in closure
    assert not any(p.parts[1] in ("evaluation", "serve", "banks") for p in closure)


def test_params_check_catches_an_undeclared_read() -> None:
    reads = {"evaluate": ["scoring.mode", "data.image_size"], "bank_normal": ["bank.normal_ratio"]}
    assert undeclared_params(DVC, reads, set()) == {}
    broken = copy.deepcopy(DVC)
    broken["stages"]["evaluate"]["params"].remove("data.image_size")
    assert undeclared_params(broken, reads, set()) == {"evaluate": ["data.image_size"]}
