"""An export folder's card, read without torch: `exdd score --model <folder>` decides from it whether the
folder holds a torch export (serve.export) or an ONNX one (serve.onnx_model) before importing either."""

from __future__ import annotations

import json
from pathlib import Path

from exdd_core.runtime.errors import InputError
from exdd_core.scoring.card import Card

CARD_FILE = "card.json"


def is_export(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CARD_FILE).is_file()


def read_export(folder: Path) -> tuple[Card, dict]:
    card_path = Path(folder) / CARD_FILE
    try:
        data = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{card_path}: cannot read the export's card ({e})") from e
    export = data.pop("export", None) if isinstance(data, dict) else None
    if not isinstance(export, dict):
        raise InputError(
            f"{card_path}: not an exdd export (no `export` block); use `exdd export` to make one"
        )
    return Card.from_dict(data, str(card_path)), export
