"""Time per image of the two ways to score on a line PC, side by side in one run: the torch model
(`exdd score --model <torch export>` / the banks) and the ONNX export on onnxruntime and numpy.

Both score the same demo test images (data/prepared/test/images, after `dvc repro`) one at a time, as
`exdd score` does, after one warm-up image each; the ONNX export is written to a temporary folder by
`serve.onnx_export` (which also checks that the scores agree). Prints seconds per image and their ratio.

    python benchmarks/onnx_speed.py [--images 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exdd_core.data.imageio import load_image
from exdd_core.serve.inference import open_scorer
from exdd_core.serve.onnx_export import export_onnx
from exdd_core.serve.onnx_model import OnnxScorer


def per_image(score, images) -> float:
    score(images[0])  # warm-up: first-call allocations, onnxruntime's graph optimisation
    t0 = time.perf_counter()
    for img in images:
        score(img)
    return (time.perf_counter() - t0) / len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    args = ap.parse_args()
    import onnxruntime as ort
    import torch

    torch.set_num_threads(args.threads)
    paths = sorted(Path("data/prepared/test/images").glob("*.png"))[: args.images]
    if not paths:
        sys.exit("no demo test images: run `dvc repro` first")
    torch_scorer = open_scorer(Path("banks"), Path("eval/model.json"))
    images = [load_image(p, torch_scorer.card.image_size) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        export = export_onnx(Path("banks"), Path("eval/model.json"), Path(tmp) / "onnx", paths[:4])
        onnx = OnnxScorer(Path(tmp) / "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.log_severity_level = 3
        onnx.session = ort.InferenceSession(
            str(Path(tmp) / "onnx" / "embed.onnx"), opts, providers=["CPUExecutionProvider"]
        )
        t_torch = per_image(torch_scorer.model.score_image, images)
        t_onnx = per_image(onnx.score_image, images)
    print(f"{len(images)} demo images {torch_scorer.card.image_size}, {args.threads} thread(s)")
    print("| path | s / image |\n|---|---|")
    print(f"| torch (ExddModel.score_image) | {t_torch:.4f} |\n| ONNX (onnxruntime + numpy) | {t_onnx:.4f} |")
    print(
        f"onnx_speedup_vs_torch: {t_torch / t_onnx:.2f}  parity_max_relative_difference: "
        f"{export['parity']['max_relative_difference']:.2e}"
    )


if __name__ == "__main__":
    main()
