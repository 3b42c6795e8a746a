"""`exdd score` on a folder against the bare backbone forward, side by side in one run (issue: the fast line).

On the demo's test images (data/prepared/test/images, 632 x 224, after `dvc repro`) and the demo's banks:

* **bare forward**: timm's `features_only` backbone as timm builds it (every block), with the same weights,
  on images already decoded and normalised, batch 1, after a warm-up: the floor `exdd score` is held to;
* **`exdd score`**: the command itself, in a subprocess, on 1 image and on all images, with and without
  overlays (`--no-overlays`). The difference of the two wall times gives the rate with start-up removed;
  start-up = wall(1 image) - one image's share. Each run is repeated and the fastest kept (a busy machine only
  ever slows a run down);
* with `--onnx`, the same for an ONNX export of the same banks (`exdd export --format onnx`).

Prints seconds per image, images/s, the ratio to the bare forward (target <= 1.5) and the start-up (target
<= 3 s), and ends with `score_rate_ratio_vs_bare_forward` and `score_startup_s` lines (the default path, with
overlays, as the line runs it). Same thread count everywhere (`--threads`, default 2: this VM's cores).

    python benchmarks/score_rate.py [--threads 2] [--repeats 2] [--onnx]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
IMAGES = ROOT / "data" / "prepared" / "test" / "images"


def bare_forward(paths: list[Path], threads: int) -> tuple[float, float]:
    """Seconds per image of timm's uncut features_only model and of our cut one (`create_backbone`), batch 1."""
    import timm
    import torch

    from exdd_core.data.imageio import load_image
    from exdd_core.features.backbone import BackboneSpec, create_backbone, to_tensor
    from exdd_core.features.provenance import input_stats
    from exdd_core.features.registry_weights import load_registry_weights
    from exdd_core.scoring.card import load_card

    torch.set_num_threads(threads)
    bb = load_card(ROOT / "eval" / "model.json").backbone  # the backbone the demo's banks were built with
    timm_model = timm.create_model(bb["name"], pretrained=False, features_only=True, out_indices=bb["layers"])
    if bb["weights"] == "imagenet":
        load_registry_weights(bb["name"], timm_model)
    ours = create_backbone(BackboneSpec(bb["name"], bb["weights"], tuple(bb["layers"])))
    stats = input_stats(bb["name"])
    tensors = [to_tensor(load_image(p), "cpu", stats) for p in paths]
    out = []
    with torch.inference_mode():
        for model in (timm_model.eval(), ours):
            model(tensors[0])
            t0 = time.perf_counter()
            for x in tensors:
                model(x)
            out.append((time.perf_counter() - t0) / len(tensors))
    return out[0], out[1]


def exdd_score(paths: list[Path], extra: list[str], threads: int, repeats: int) -> float:
    """Fastest wall time of `exdd score` on `paths` over `repeats` runs."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EXDD_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    best = float("inf")
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                "-m",
                "exdd_core.serve.cli",
                "score",
                *map(str, paths),
                "--out",
                out,
                *extra,
            ]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")
            best = min(best, time.perf_counter() - t0)
    return best


def rate(paths: list[Path], extra: list[str], threads: int, repeats: int) -> tuple[float, float]:
    """(seconds per image without start-up, start-up seconds) of `exdd score` with `extra` arguments."""
    one = exdd_score(paths[:1], extra, threads, repeats)
    full = exdd_score(paths, extra, threads, repeats)
    per_image = (full - one) / (len(paths) - 1)
    return per_image, one - per_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--onnx", action="store_true", help="also an ONNX export of the same banks")
    args = ap.parse_args()
    paths = sorted(IMAGES.glob("*.png"))
    if len(paths) < 2:
        sys.exit(f"no demo test images in {IMAGES}: run `dvc repro` first")
    timm_s, cut_s = bare_forward(paths, args.threads)
    runs = {
        "exdd score (overlays)": rate(paths, ["--banks", "banks"], args.threads, args.repeats),
        "exdd score --no-overlays": rate(
            paths, ["--banks", "banks", "--no-overlays"], args.threads, args.repeats
        ),
    }
    if args.onnx:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(
                [sys.executable, "-m", "exdd_core.serve.cli", "export", "--format", "onnx", "--out", tmp + "/m"],
                check=True, cwd=ROOT, capture_output=True,
            )  # fmt: skip
            for label, extra in (
                ("ONNX export (overlays)", []),
                ("ONNX export --no-overlays", ["--no-overlays"]),
            ):
                runs[label] = rate(paths, ["--model", tmp + "/m", *extra], args.threads, args.repeats)
    print(f"{len(paths)} demo test images, 632 x 224, batch 1, {args.threads} threads")
    print("| path | s / image | images / s | ratio to timm's forward | start-up s |")
    print("|---|---|---|---|---|")
    print(f"| bare forward, timm features_only (all blocks) | {timm_s:.4f} | {1 / timm_s:.1f} | 1.00 | |")
    print(f"| bare forward, our cut backbone | {cut_s:.4f} | {1 / cut_s:.1f} | {cut_s / timm_s:.2f} | |")
    for label, (per, start) in runs.items():
        print(f"| {label} | {per:.4f} | {1 / per:.1f} | {per / timm_s:.2f} | {start:.2f} |")
    per, start = runs["exdd score (overlays)"]
    print(f"score_rate_ratio_vs_bare_forward: {per / timm_s:.2f}")
    print(f"score_rate_ratio_vs_cut_forward: {per / cut_s:.2f}")
    print(f"score_startup_s: {start:.2f}")


if __name__ == "__main__":
    main()
