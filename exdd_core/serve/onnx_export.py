"""`exdd export --format onnx`: the embedder as an ONNX graph, the banks as arrays, the card, checked against
the torch model before the folder is published (layout and scoring: serve.onnx_model).

torch.onnx's TorchScript exporter traces `EmbedGraph` (the backbone, the input normalisation, the patch
aggregation and the stores' projection) at the card's image size; onnxruntime then runs it on the line PC.
Every export scores `check_images` through both paths and refuses to finish (nothing is published) when a
score differs by more than PARITY_TOLERANCE relative."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from exdd_core.data.imageio import load_image
from exdd_core.features.embedder import Embedder
from exdd_core.features.patches import aggregate_patches, to_rows
from exdd_core.features.store import Store
from exdd_core.runtime.atomic import atomic_dir
from exdd_core.runtime.errors import InputError, MismatchError
from exdd_core.runtime.hashing import file_digest
from exdd_core.serve.export_card import CARD_FILE
from exdd_core.serve.inference import Scorer, open_scorer
from exdd_core.serve.onnx_model import FILES, OnnxScorer, describe

PARITY_TOLERANCE = 1e-4  # relative: the bar for "the same scores"
OPSET = 17


class EmbedGraph(torch.nn.Module):
    """float32 (1, H, W, 3) pixel values 0..255 -> (h*w, d) rows, as `Embedder.rows` before its rounding."""

    def __init__(self, embedder: Embedder) -> None:
        super().__init__()
        ex = embedder.extractor
        # the folded module that runs in torch: the same weights, so the same rows to float rounding
        self.model, self.patch_size, self.aggregation = ex.runner, ex.patch_size, ex.aggregation
        self.register_buffer("mean", torch.tensor(ex.stats[0], dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(ex.stats[1], dtype=torch.float32)[None, :, None, None])
        proj = embedder.projection
        self.register_buffer("projection", None if proj is None else proj.detach().float().cpu())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image.permute(0, 3, 1, 2) / 255.0 - self.mean) / self.std
        rows = to_rows(
            aggregate_patches([m.float() for m in self.model(x)], self.patch_size, self.aggregation)
        )
        return rows if self.projection is None else rows @ self.projection


def export_onnx(banks: Path, card_path: Path, out: Path, check_images: list[Path]) -> dict:
    """Write the ONNX export of the banks at `banks` with the card at `card_path`; returns its `export`
    block. Refuses a card whose mode is not `fused` and an export whose scores differ from the torch model's
    by more than PARITY_TOLERANCE on `check_images` (at least one image of the card's size)."""
    scorer = open_scorer(banks, card_path, "cpu")
    card, model = scorer.card, scorer.model
    if card.scoring["mode"] != "fused":
        raise InputError(
            f"{card_path}: scoring.mode {card.scoring['mode']!r}; the ONNX export scores the fused mode and "
            "PatchCore only (the paper's ratio modes: `exdd export` without --format)"
        )
    if not check_images:
        raise InputError("the ONNX export needs images to check its scores against the torch model's")
    images = [load_image(p, card.image_size) for p in check_images]
    with atomic_dir(Path(out)) as tmp:
        graph = EmbedGraph(model.embedder).eval()  # type: ignore[arg-type]
        dummy = torch.zeros((1, *card.image_size, 3), dtype=torch.float32)
        with torch.inference_mode(), warnings.catch_warnings():
            # the trace is taken at the card's one image size: its shape checks are constants, as meant
            warnings.simplefilter("ignore", (torch.jit.TracerWarning, DeprecationWarning, UserWarning))
            torch.onnx.export(
                graph, (dummy,), str(tmp / FILES["graph"]), input_names=["image"], output_names=["rows"],
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        bank_rows = {}
        for name in ("normal", "defect"):  # the stores' own precision: the rows evaluate scored with
            rows = np.ascontiguousarray(Store(Path(banks) / f"{name}.zarr").features[:])
            np.save(tmp / FILES[name], rows)
            bank_rows[name] = len(rows)
        export = {
            "format": "onnx",
            **{f"{k}_sha256": file_digest(tmp / name) for k, name in FILES.items()},
            "bank_rows": bank_rows,
            "bank_dtype": str(model.embedder.dtype),  # type: ignore[union-attr]
            "tau_n": float(model.tau_n),
            "tau_p": float(model.tau_p),
            "opset": OPSET,
        }
        # the card first without `parity`: the ONNX scorer of the check opens the folder as a user would
        (tmp / CARD_FILE).write_text(json.dumps({**card.to_dict(), "export": export}, indent=2) + "\n")
        export["parity"] = check_parity(scorer, OnnxScorer(tmp), images)
        (tmp / CARD_FILE).write_text(json.dumps({**card.to_dict(), "export": export}, indent=2) + "\n")
        (tmp / "README.md").write_text(describe(card, export))
    return export


def check_parity(torch_scorer: Scorer, onnx_scorer: OnnxScorer, images: list[np.ndarray]) -> dict:
    """Score every image through both paths; MismatchError when any score differs by more than
    PARITY_TOLERANCE relative (to the larger of the score and one M_N spacing). Returns what was measured
    (for the card and the folder's README)."""
    worst, seconds = 0.0, {"torch": 0.0, "onnx": 0.0}
    for image in images:
        t0 = time.perf_counter()
        ref = torch_scorer.model.score_image(image)
        t1 = time.perf_counter()
        got = onnx_scorer.score_image(image)
        seconds["torch"] += t1 - t0
        seconds["onnx"] += time.perf_counter() - t1
        # relative, the denominator floored at one spacing of M_N (1 for the fused score, in tau_N units;
        # tau_N for PatchCore's distance): an image the bank holds scores 0 by one path and ~1e-4 by the other
        floors = {"fused": 1.0, "patchcore": float(torch_scorer.model.tau_n)}
        for key, want in (("fused", ref.scores["fused"]), ("patchcore", ref.scores["patchcore"])):
            rel = abs(got.scores[key] - want) / max(abs(want), floors[key])
            worst = max(worst, rel)
            if rel > PARITY_TOLERANCE:
                raise MismatchError(
                    f"ONNX export: the {key} score of a check image is {got.scores[key]!r} through onnxruntime "
                    f"and {want!r} through torch ({rel:.2e} relative > {PARITY_TOLERANCE:.0e}); nothing written"
                )
    n = len(images)
    return {
        "images": n,
        "scores": ["fused", "patchcore"],
        "max_relative_difference": worst,
        "tolerance": PARITY_TOLERANCE,
        "seconds_per_image": {k: round(v / n, 4) for k, v in seconds.items()},
    }
