"""Scoring an ONNX export with onnxruntime and numpy alone: no torch, no timm (`pip install 'exdd[onnx]'`).

    <out>/embed.onnx     the cut backbone, the input normalisation, the patch aggregation and the stores'
                         projection: float32 (1, H, W, 3) pixel values 0..255 -> (h*w, d) patch rows
    <out>/normal.npy     M_N's rows, in the stores' precision (float16 by default)
    <out>/defect.npy     M_P's rows
    <out>/card.json      the deployment card with an `export` block: the files' SHA-256, the banks' scales
                         tau_N / tau_P, and the parity measured at export

What this re-implements in numpy, and why it is the same method: the exact nearest-neighbour distance (ranked
in float64, the winner's |q - b| exact, as banks.knn), and the fused score (scoring.fusion: d_N / tau_N plus
lam times the defect evidence, top-k mean) and PatchCore's max d_N. It is checked against the torch model at
every export: `exdd export --format onnx` refuses to finish when a score differs by more than 1e-4 relative
(serve.onnx_export). The paper's ratio modes are not offered here (torch export: `exdd export`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from exdd_core.runtime.errors import InputError, MismatchError
from exdd_core.runtime.hashing import file_digest
from exdd_core.scoring.card import Card
from exdd_core.scoring.maps import anomaly_map, upsample
from exdd_core.serve.export_card import read_export
from exdd_core.serve.inputs import LoadedImage, load_for_scoring, override_fusion

FILES = {"graph": "embed.onnx", "normal": "normal.npy", "defect": "defect.npy"}
RANK_BLOCK = 4096  # bank rows per ranking block: bounds the (patches x block) float64 temporary


def nearest(rows: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """(n,) distance of each row to its nearest bank row: ranked by |b|^2 - 2 q.b in float64, the winner's
    distance computed exactly as |q - b| (float32 inputs, float64 arithmetic)."""
    q = rows.astype(np.float64)
    best_val = np.full(len(q), np.inf)
    best_idx = np.zeros(len(q), dtype=np.int64)
    for a in range(0, len(bank), RANK_BLOCK):
        b = bank[a : a + RANK_BLOCK].astype(np.float64)
        d2 = (b * b).sum(1)[None, :] - 2.0 * q @ b.T
        j = d2.argmin(1)
        v = d2[np.arange(len(q)), j]
        better = v < best_val
        best_val[better], best_idx[better] = v[better], j[better] + a
    diff = q - bank[best_idx].astype(np.float64)
    return np.sqrt((diff * diff).sum(1))


@dataclass
class OnnxResult:
    """One image: its scores (the card's mode and `patchcore`), the fused grid map, the image as loaded."""

    scores: dict[str, float]
    grid_map: np.ndarray
    image: np.ndarray | None = None
    resized: bool = False

    @property
    def patchcore(self) -> float:
        return self.scores["patchcore"]


class OnnxScorer:
    """An ONNX export opened for scoring: the graph in onnxruntime, the banks as arrays, the card."""

    def __init__(self, folder: Path, fusion: dict | None = None, threads: int | None = None) -> None:
        """`threads`: onnxruntime's intra-op threads (None: its default, every core)."""
        import onnxruntime as ort

        folder = Path(folder)
        self.card, self.export = read_export(folder)
        self.card = override_fusion(self.card, fusion)  # run-time overrides (lam, topk)
        for key, name in FILES.items():
            path = folder / name
            if not path.is_file():
                raise InputError(f"{path}: missing from the ONNX export {folder}")
            if file_digest(path) != self.export[f"{key}_sha256"]:
                raise MismatchError(
                    f"{path}: contents differ from what `exdd export` wrote (sha256 mismatch)"
                )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(
            str(folder / FILES["graph"]), opts, providers=["CPUExecutionProvider"]
        )
        self.normal = np.load(folder / FILES["normal"]).astype(np.float32)
        self.defect = np.load(folder / FILES["defect"]).astype(np.float32)
        self.dtype = np.dtype(self.export["bank_dtype"])
        self.tau_n, self.tau_p = float(self.export["tau_n"]), float(self.export["tau_p"])
        f = self.card.scoring["fusion"]
        self.form, self.lam, self.topk = str(f["form"]), float(f["lam"]), int(f["topk"])
        head = f.get("head") if self.form == "head" else None
        self.head = None if not head else (np.asarray(head["weight"], np.float32), float(head["bias"]))
        self.model = self  # `exdd score` reads scorer.model.fallback, as of the torch Scorer

    @property
    def fallback(self) -> bool:
        """No defect evidence (empty M_P, lam 0, or a head form without a head): the score is PatchCore's."""
        return len(self.defect) == 0 or self.lam == 0 or (self.form == "head" and self.head is None)

    def rows(self, image: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) -> (h*w, d) float32 rows, rounded to the stores' precision as the pipeline's."""
        x = np.ascontiguousarray(image, dtype=np.float32)[None]
        out = self.session.run(None, {"image": x})[0]
        return out.astype(self.dtype).astype(np.float32)

    def score_image(self, image: np.ndarray) -> OnnxResult:
        """One image of the card's size -> the card's mode score (fused) and PatchCore's, and the fused map."""
        rows = self.rows(image)
        d_n = nearest(rows, self.normal)
        base = d_n / self.tau_n
        grid_map = base
        if not self.fallback:
            grid_map = base + self.lam * self._evidence(rows, d_n)
        flat = np.sort(grid_map)[::-1]
        fused = float(flat[: max(1, min(self.topk, flat.size))].mean())
        mode = self.card.scoring["mode"]
        scores = {mode: fused, "fused": fused, "patchcore": float(d_n.max())}
        return OnnxResult(scores, grid_map.reshape(self.card.grid).astype(np.float32))

    def _evidence(self, rows: np.ndarray, d_n: np.ndarray) -> np.ndarray:
        """The defect evidence g >= 0 of the card's form (scoring.fusion.defect_evidence)."""
        if self.form == "head":
            assert self.head is not None
            w, b = self.head
            return np.maximum(rows @ w + np.float32(b), 0.0).astype(np.float64)
        d_p = nearest(rows, self.defect)
        if self.form == "tau":
            return np.maximum(1.0 - d_p / self.tau_p, 0.0)
        return np.maximum(d_n - d_p, 0.0) / self.tau_n  # margin

    def score_file(
        self, path: Path, *, resize: bool = False, only: tuple[str, ...] | None = None
    ) -> OnnxResult:
        return self.score_loaded(load_for_scoring(path, self.card.image_size, resize), only)

    def score_loaded(self, loaded: LoadedImage, only: tuple[str, ...] | None = None) -> OnnxResult:
        """An image read by `serve.inputs.load_for_scoring` (`only` is accepted for the torch scorer's
        interface: this one computes the fused score and PatchCore's, always)."""
        result = self.score_image(loaded.at_size)
        result.image, result.resized = loaded.original, loaded.resized
        return result

    def map_at_image_size(self, result: OnnxResult) -> np.ndarray:
        """The fused map at the scored size (smoothed as evaluate's), bilinear to the file's size if resized."""
        amap = anomaly_map(result.grid_map, self.card.image_size, float(self.card.scoring["sigma"]))
        if not result.resized or result.image is None:
            return amap
        return upsample(amap, result.image.shape[:2])


def describe(card: Card, export: dict[str, Any]) -> str:
    """The export folder's README."""
    b, f, p = card.backbone, card.features, export["parity"]
    return (
        "# An exdd model exported to ONNX\n\n"
        f"ExDD banks (M_N {export['bank_rows']['normal']} rows, M_P {export['bank_rows']['defect']} rows, "
        f"{export['bank_dtype']}) and the {b['name']} backbone ({f['weights_id']}) with its patch "
        f"aggregation as an ONNX graph, for {f['image_size'][0]}x{f['image_size'][1]} (H x W) images.\n\n"
        "```bash\npip install 'exdd[onnx]'      # onnxruntime and numpy: no torch\n"
        "exdd score --model <this folder> image.png folder/ --out scored\n```\n\n"
        f"Checked at export: {p['images']} images scored through this graph and through the torch model "
        f"differed by at most {p['max_relative_difference']:.2e} (relative; the export refuses > "
        f"{p['tolerance']:.0e}) in the {', '.join(p['scores'])} scores.\n\n"
        f"Thresholds (score >= threshold means defective): {card.thresholds}; rule: {card.threshold_rule}. "
        "`--threshold` overrides them at run time; `card.json` holds every setting.\n"
    )
