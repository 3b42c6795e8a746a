"""`exdd info`: what a bank, a feature store or a deployment card holds (sizes, provenance, coverage radius,
what the banks learned from the line)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from exdd_core.runtime.errors import InputError


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def store_info(path: Path) -> dict[str, Any]:
    """What a feature store or bank holds: size, provenance, and for a bank the coverage radius."""
    from exdd_core.features.store import INFO_KEYS, Store

    st = Store(path)
    info: dict[str, Any] = {"path": str(path), "rows": len(st), "dim": st.dim}
    is_bank = str(st.attrs.get("kind", "")).startswith("bank:")
    if not is_bank:
        info["images"] = len(st.images)
    info["disk_mb"] = round(_disk_bytes(Path(path)) / 2**20, 2)
    info.update({k: st.attrs[k] for k in INFO_KEYS if k in st.attrs})
    return info


def _targets(path: Path) -> list[tuple[str, Path]]:
    """(kind, path) of what `path` names: a store, a folder of stores, a card, or a folder with a card."""
    if (path / "zarr.json").is_file():
        return [("store", path)]
    if path.is_file():
        return [("card", path)]
    if path.is_dir():
        found = [("store", p) for p in sorted(path.glob("*.zarr")) if (p / "zarr.json").is_file()]
        if (path / "model.json").is_file():
            found.append(("card", path / "model.json"))
        if found:
            return found
        raise InputError(f"{path}: holds no feature store (*.zarr) and no deployment card (model.json)")
    raise InputError(f"{path}: no such file or folder")


def _print_table(title: str, info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("key", style="bold")
    table.add_column("value")
    for k, v in info.items():
        table.add_row(k, json.dumps(v) if isinstance(v, (list, dict)) else str(v))
    Console(width=120).print(table)  # stdout: the answer, where logs and progress go to stderr


def cmd_info(args: argparse.Namespace) -> str:
    from exdd_core.scoring.card import load_card

    result: dict[str, Any] = {}
    for kind, p in _targets(args.path):
        result[str(p)] = store_info(p) if kind == "store" else load_card(p).to_dict()
    if args.json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        for p, info in result.items():
            _print_table(p, info)
    return f"{len(result)} item(s) under {args.path}"
