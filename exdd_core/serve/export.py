"""`exdd export`: the banks and the scorer as one self-contained folder that scores images on a machine with
only `pip install 'exdd[torch]'` - no DVC, no repo, no Zarr stores (design.md, "Serving").

    <out>/card.json             the deployment card, plus an `export` block (files, digests, dtype)
    <out>/backbone.safetensors  the cut backbone's weights (timm features_only state dict); its timm name,
                                layers and provenance are in the card
    <out>/banks.safetensors     `normal` and `defect` bank rows, in the stores' own precision (float16 by
                                default), so exported scores equal the pipeline's
    <out>/README.md             what the folder is and how to score with it

`exdd score --model <out> images...` opens it with `open_exported`, through the same ExddModel as evaluate.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from exdd_core.features.backbone import PatchFeatureExtractor
from exdd_core.features.embedder import Embedder
from exdd_core.features.store import Store
from exdd_core.runtime.atomic import atomic_dir
from exdd_core.runtime.errors import InputError, MismatchError
from exdd_core.runtime.hashing import file_digest
from exdd_core.scoring.card import Card
from exdd_core.scoring.model import ExddModel, ScoringSettings
from exdd_core.serve.export_card import CARD_FILE, read_export
from exdd_core.serve.inference import Scorer, open_scorer
from exdd_core.serve.inputs import override_fusion

BACKBONE_FILE = "backbone.safetensors"
BANKS_FILE = "banks.safetensors"


def export_model(banks: Path, card_path: Path, out: Path) -> dict:
    """Write the export folder for the banks at `banks` and the card at `card_path` (checked as `exdd score`
    checks them: the backbone must rebuild to the banks' weights). Returns the card's `export` block."""
    scorer = open_scorer(banks, card_path, "cpu")
    with atomic_dir(Path(out)) as tmp:
        from safetensors.numpy import save_file as save_numpy
        from safetensors.torch import save_file as save_torch

        backbone = scorer.model.embedder.extractor.model  # type: ignore[union-attr]
        state = {k: v.detach().cpu().contiguous() for k, v in backbone.state_dict().items()}
        save_torch(state, str(tmp / BACKBONE_FILE))
        rows = {
            name: np.ascontiguousarray(Store(Path(banks) / f"{name}.zarr").features[:])
            for name in ("normal", "defect")
        }
        save_numpy(rows, str(tmp / BANKS_FILE))
        export = {
            "backbone_file": BACKBONE_FILE,
            "backbone_sha256": file_digest(tmp / BACKBONE_FILE),
            "banks_file": BANKS_FILE,
            "banks_sha256": file_digest(tmp / BANKS_FILE),
            "bank_rows": {k: int(v.shape[0]) for k, v in rows.items()},
            "bank_dtype": str(rows["normal"].dtype),
        }
        data = {**scorer.card.to_dict(), "export": export}
        (tmp / CARD_FILE).write_text(json.dumps(data, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(scorer.card, export))
    return export


def _readme(card: Card, export: dict) -> str:
    b, f = card.backbone, card.features
    return (
        "# An exported exdd model\n\n"
        f"ExDD banks (M_N {export['bank_rows']['normal']} rows, M_P {export['bank_rows']['defect']} rows, "
        f"{export['bank_dtype']}) and the {b['name']} backbone they were built with ({f['weights_id']}), for "
        f"{f['image_size'][0]}x{f['image_size'][1]} (H x W) images.\n\n"
        "```bash\npip install 'exdd[torch]'\nexdd score --model <this folder> image.png folder/ --out scored\n```\n\n"
        f"Thresholds (score >= threshold means defective): {card.thresholds}; rule: {card.threshold_rule}.\n"
        "`card.json` holds every setting and the metrics of the run that built it.\n"
    )


def open_exported(folder: Path, device: str = "cpu", fusion: dict | None = None) -> Scorer:
    """A Scorer from an export folder: files checked against the digests in its card."""
    folder = Path(folder)
    card, export = read_export(folder)
    if export.get("format", "torch") != "torch":
        raise InputError(
            f"{folder}: an {export['format']} export; `exdd score --model` opens it without torch"
        )
    card = override_fusion(card, fusion)  # run-time overrides (lam, topk)
    for key in ("backbone", "banks"):
        path = folder / export[f"{key}_file"]
        if not path.is_file():
            raise InputError(f"{path}: missing from the export folder {folder}")
        if file_digest(path) != export[f"{key}_sha256"]:
            raise MismatchError(f"{path}: contents differ from what `exdd export` wrote (sha256 mismatch)")
    from safetensors.numpy import load_file as load_numpy
    from safetensors.torch import load_file as load_torch

    extractor = PatchFeatureExtractor.with_state_dict(
        card.backbone["name"],
        card.backbone["layers"],
        load_torch(str(folder / export["backbone_file"])),
        card.features["patch_size"],
        card.features["aggregation"],
        device,
        state_id=f"export(sha256={export['backbone_sha256']})",  # checked above: the runner cache's key
    )
    card.check_preprocessing(str(folder / CARD_FILE), extractor.stats)
    if list(extractor.channels) != list(card.features["channels"]):
        raise MismatchError(
            f"{folder}: backbone channels {extractor.channels} != card {card.features['channels']}"
        )
    rows = load_numpy(str(folder / export["banks_file"]))
    settings = ScoringSettings.from_params(card.scoring)
    embedder = Embedder.for_stores(extractor, card.features)
    return Scorer(
        card,
        ExddModel(rows["normal"], rows["defect"], settings, card.image_size, card.grid, device, embedder),
    )
