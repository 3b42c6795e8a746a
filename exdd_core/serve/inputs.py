"""What `exdd score` is given, checked before any model is loaded: the card to use, the image files, their
sizes. Torch-free, so the ONNX path (`serve.onnx_model`) shares it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from exdd_core.data.imageio import image_size_of, load_image, resize_image
from exdd_core.runtime.choices import IMAGE_SUFFIXES
from exdd_core.runtime.errors import InputError
from exdd_core.scoring.card import CARD_NAME, Card


def find_card(banks: Path, model: Path | None) -> Path:
    """--model if given, else `<banks>/../eval/model.json` (a project checkout), else `eval/model.json`."""
    if model is not None:
        return Path(model)
    beside = Path(banks).resolve().parent / "eval" / CARD_NAME
    return beside if beside.is_file() else Path("eval") / CARD_NAME


def expand_inputs(items: list[Path]) -> list[Path]:
    """Files as given, folders as their image files (sorted, not recursive). KSDD2-style `<id>_GT.*` masks in
    a folder are skipped: scoring a ground-truth mask as a surface is never what was meant."""
    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(
                p
                for p in item.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.stem.endswith("_GT")
            )
            if not found:
                raise InputError(f"{item}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            out.extend(found)
        elif item.is_file():
            out.append(item)
        else:
            raise InputError(f"{item}: no such file or folder")
    return out


def check_sizes(paths: list[Path], expected: tuple[int, int], skip_unreadable: bool = False) -> None:
    """Refuse, before any work, images whose size differs from the banks' (they would be scored at another
    scale than every bank patch was seen at). Lists the offenders with their sizes. `skip_unreadable`: a file
    whose header cannot be read is left to the scoring loop (it gets a row saying why) instead of stopping."""
    bad = []
    for p in paths:
        try:
            bad.append((p, image_size_of(p)))
        except InputError:
            if not skip_unreadable:
                raise
    bad = [(p, hw) for p, hw in bad if tuple(hw) != tuple(expected)]
    if not bad:
        return
    eh, ew = expected
    shown = "; ".join(f"{p} is {h}x{w}" for p, (h, w) in bad[:5])
    more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
    raise InputError(
        f"{shown}{more} (H x W), but the banks were built from {eh}x{ew} images: refusing "
        f"{len(bad)} image(s) that would be scored at another scale. Pass --resize to resize them to "
        f"{eh}x{ew} as the prepare stage does (bilinear)"
    )


def override_fusion(card: Card, fusion: dict | None) -> Card:
    """The card with run-time overrides of its fused score's settings (`exdd score --lam / --topk`): the
    thresholds stay the card's, calibrated for its own settings."""
    if fusion:
        card.scoring = {**card.scoring, "fusion": {**card.scoring["fusion"], **fusion}}
    return card


@dataclass(frozen=True)
class LoadedImage:
    """An image file read for scoring: as in the file (overlays are drawn on it), and at the banks' size."""

    original: np.ndarray  # uint8 (H, W, 3) as in the file
    at_size: np.ndarray  # uint8 (h, w, 3) at the banks' image size
    resized: bool


def load_for_scoring(path: Path, size: tuple[int, int], resize: bool) -> LoadedImage:
    """Decode once; refuse another size unless `resize` (then bilinear, as prepare resizes). Both scorers
    (torch and ONNX) read files through this, on `exdd score`'s worker threads."""
    original = load_image(path)
    resized = original.shape[:2] != tuple(size)
    if resized and not resize:
        check_sizes([Path(path)], size)
    return LoadedImage(original, resize_image(original, size) if resized else original, resized)
