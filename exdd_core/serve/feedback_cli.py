"""`exdd feedback`: record verdicts from the line where the pipeline learns from them (data.feedback).

    exdd feedback add --defect IMG... [--mask M...] [--type T] [--note N]   confirmed defects -> M_P
    exdd feedback add --normal IMG... [--note N]                            false alarms, good parts -> M_N
    exdd feedback list [--json]

Then `dvc repro` embeds only the new images and rebuilds what depends on them (dvc.yaml)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from exdd_core.runtime.errors import InputError
from exdd_core.runtime.runlog import log


def default_folder() -> Path:
    """Where verdicts go: paths.feedback of the project in the current folder, else data/feedback."""
    from exdd_core.runtime.paths import PATHS_FILE, load_paths

    return load_paths().feedback if PATHS_FILE.is_file() else Path("data/feedback")


def cmd_add(args: argparse.Namespace) -> str:
    from exdd_core.data.feedback import add_verdicts
    from exdd_core.scoring.card import load_card
    from exdd_core.serve.inputs import expand_inputs, find_card

    verdict = "defect" if args.defect else "normal"
    images = expand_inputs(args.defect or args.normal)
    card = load_card(find_card(args.banks, args.model))  # the size every verdict must have
    added = add_verdicts(
        args.to,
        verdict,
        images,
        card.image_size,
        masks=args.mask,
        note=args.note or "",
        defect_type=args.type or "",
    )
    for path, why in added.skipped:
        log.warning("%s: skipped, %s", path, why)
    if not added.ids:
        return f"no new {verdict} verdict ({len(added.skipped)} already recorded)"
    span = added.ids[0] if len(added.ids) == 1 else f"{added.ids[0]} .. {added.ids[-1]}"
    return (
        f"recorded {len(added.ids)} {verdict} verdict(s) in {args.to / verdict} ({span}); "
        f"`dvc repro` teaches them to the banks"
    )


def learned(banks: Path) -> dict[str, int] | None:
    """Verdicts each bank was built from (None where the banks are not built)."""
    from exdd_core.features.provenance import line_verdicts

    if not all((banks / f"{k}.zarr" / "zarr.json").is_file() for k in ("normal", "defect")):
        return None
    try:
        from exdd_core.features.store import Store
    except ModuleNotFoundError:  # a line PC with exdd[onnx] only: no Zarr to read banks with
        return None
    return {k: line_verdicts(Store(banks / f"{k}.zarr").attrs) for k in ("normal", "defect")}


def cmd_list(args: argparse.Namespace) -> str:
    from exdd_core.data.feedback import read_verdicts

    rows = read_verdicts(args.to)
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("defect", "normal")}
    in_banks = learned(args.banks)
    if args.json:
        doc: dict[str, Any] = {"recorded": counts, "in_banks": in_banks, "verdicts": rows}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print(rows)
    banks = (
        "the banks are not built (or not readable here)"
        if in_banks is None
        else f"the banks learned {in_banks['defect']} defect and {in_banks['normal']} normal"
    )
    behind = in_banks is not None and in_banks != counts
    return f"{counts['defect']} defect and {counts['normal']} normal verdict(s) in {args.to}; {banks}" + (
        " (run `dvc repro` to learn the rest)" if behind else ""
    )


def _print(rows: list[dict[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="verdicts from the line", title_justify="left")
    for col in ("id", "verdict", "defect_type", "mask", "time", "note", "source"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(r[c] for c in ("id", "verdict", "defect_type", "mask", "time", "note", "source")))
    Console(width=160).print(table)


def add_parser(sub: Any) -> None:
    """The `feedback` verb and its two actions."""
    fb = sub.add_parser(
        "feedback",
        help="record verdicts from the line (confirmed defects, false alarms) for the banks to learn",
        description="Verdicts go to data/feedback/ (a pipeline dependency); `dvc repro` then learns them.",
    )
    actions = fb.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="record confirmed defects or good parts")
    which = add.add_mutually_exclusive_group(required=True)
    which.add_argument("--defect", nargs="+", type=Path, metavar="IMG", help="confirmed defective images")
    which.add_argument("--normal", nargs="+", type=Path, metavar="IMG", help="good parts (false alarms)")
    add.add_argument(
        "--mask", nargs="+", type=Path, metavar="M", help="one mask per --defect image, in order"
    )
    add.add_argument("--type", default=None, help="the defect type, for per-type figures (defects only)")
    add.add_argument("--note", default=None, help="a note kept with each verdict")
    add.set_defaults(func=cmd_add)
    lst = actions.add_parser("list", help="the verdicts recorded, and how many the banks have learned")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    lst.set_defaults(func=cmd_list)
    for p in (add, lst):
        p.add_argument("--to", type=Path, default=None, help="the feedback folder (default: paths.feedback)")
        p.add_argument("--banks", type=Path, default=Path("banks"), help="folder with the banks")
        p.add_argument("--model", type=Path, default=None, help="deployment card (default: as exdd score)")


def resolve(args: argparse.Namespace) -> None:
    """Fill the defaults that need the working folder; refuse --type on a good part."""
    if args.to is None:
        args.to = default_folder()
    if getattr(args, "type", None) and getattr(args, "normal", None):
        raise InputError("--type names a defect type: it goes with --defect only")
