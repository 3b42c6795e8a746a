"""What each DVC stage really depends on, computed from the code, to check dvc.yaml against: the import
closure of its script inside exdd_core, and (from a recorded run) the params keys it read."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "exdd_core"


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> set[str]:
    """Every exdd_core module a file imports, at top level or inside functions (lazy imports count)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


@functools.cache
def import_closure(script: Path, root: Path = REPO) -> frozenset[Path]:
    """Files of exdd_core (relative to `root`) that running `script` can import, package __init__s included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        path = todo.pop()
        for module in _imports(path):
            parts = module.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                f = _module_file(".".join(parts[:i]), root)
                if f is not None and f not in seen:
                    seen.add(f)
                    todo.append(f)
    return frozenset(f.relative_to(root) for f in seen)


def _covered(path: str, declared: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in declared)


def stage_scripts(dvc: dict) -> dict[str, Path]:
    """stage name -> the script its cmd runs (`python stages/x.py ...`)."""
    out = {}
    for name, stage in dvc["stages"].items():
        m = re.search(r"python\s+(stages/\S+\.py)", stage["cmd"])
        assert m, f"stage {name}: cmd {stage['cmd']!r} does not run a stages/*.py script"
        out[name] = Path(m.group(1))
    return out


def undeclared_code(dvc: dict, root: Path = REPO) -> dict[str, list[str]]:
    """stage -> files its script imports (and the script itself) that its `deps:` do not cover."""
    missing: dict[str, list[str]] = {}
    for name, script in stage_scripts(dvc).items():
        deps = [str(d) for d in dvc["stages"][name].get("deps", [])]
        needed = {script, *import_closure(root / script, root)}
        bad = sorted(p.as_posix() for p in needed if not _covered(p.as_posix(), deps))
        if bad:
            missing[name] = bad
    return missing


def undeclared_params(dvc: dict, reads: dict[str, list[str]], exempt: set[str]) -> dict[str, list[str]]:
    """stage -> params keys it read (recorded) that its `params:` do not cover (a section covers its keys)."""
    missing: dict[str, list[str]] = {}
    for name, keys in reads.items():
        declared = []
        for entry in dvc["stages"][name].get("params", []):
            if isinstance(entry, str):
                declared.append(entry)
            else:  # {params_file: [keys]}
                declared.extend(k for keys_ in entry.values() for k in keys_)
        bad = [
            k for k in keys if k not in exempt and not any(k == d or k.startswith(d + ".") for d in declared)
        ]
        if bad:
            missing[name] = bad
    return missing
