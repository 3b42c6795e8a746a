"""`exdd score` on a folder against the bare backbone forward, side by side in one run (issue: the fast line).

On the demo's test images (data/prepared/test/images, 632 x 224, after `dvc repro`) and the demo's banks:

* **bare forward**: timm's `features_only` backbone as timm builds it (every block), with the same weights,
  on images already decoded and normalised, batch 1 on `--threads` threads, after a warm-up: the floor
  `exdd score` is held to; also our cut backbone (the blocks the layers need), and the cut backbone with
  `--threads` images at once on one thread each, which is how `exdd score` runs it (serve/score_loop.py);
* **`exdd score`**: the command itself, in a subprocess, on 1 image and on all images, with and without
  overlays (`--no-overlays`). The difference of the two wall times gives the rate with start-up removed;
  start-up = wall(1 image) - one image's share. Everything is measured in `--repeats` rounds and the fastest
  of each kept (a busy moment only ever slows a measurement down);
* the runner cache (features/runner_cache.py): `exdd score` runs with this run's own cache, written by one
  untimed run first (the steady state of a line PC); the same with the cache off (EXDD_CACHE_DIR=off: the
  backbone built from timm every time); and, each round, one run with an empty cache (the first run on a
  machine, which builds from timm and writes the entry): `score_startup_cold_s`;
* with `--onnx`, the same for an ONNX export of the same banks (`exdd export --format onnx`).

Prints seconds per image, images/s, the ratio to the bare forward (target <= 1.5) and the start-up (target
<= 3 s), and ends with `score_rate_ratio_vs_bare_forward`, `score_startup_s` (the default path, with overlays,
as the line runs it, cache warm), `score_startup_cold_s` and `score_startup_cache_off_s` lines. Same thread count
everywhere (`--threads`, default 2: this VM's cores).

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


def bare_forward(paths: list[Path], threads: int) -> tuple[float, float, float]:
    """Seconds per image of timm's uncut features_only model and of our cut one (`create_backbone`), batch 1
    on `threads` threads; and of the cut one with `threads` images at once on one thread each (how
    `exdd score` runs it: the floor at the same concurrency)."""
    from concurrent.futures import ThreadPoolExecutor

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

    def forward(x: torch.Tensor) -> None:
        with torch.inference_mode():
            ours(x)

    torch.set_num_threads(1)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(forward, tensors[:threads]))
        t0 = time.perf_counter()
        list(pool.map(forward, tensors))
        out.append((time.perf_counter() - t0) / len(tensors))
    torch.set_num_threads(threads)
    return out[0], out[1], out[2]


def exdd_score(paths: list[Path], extra: list[str], threads: int, cache: str) -> float:
    """Wall time of one `exdd score` run on `paths`, with the runner cache at `cache` (EXDD_CACHE_DIR)."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "EXDD_NO_PROGRESS": "1",
        "HF_HUB_OFFLINE": "1",
        "EXDD_CACHE_DIR": cache,
    }
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
        return time.perf_counter() - t0


def rate(paths: list[Path], extra: list[str], threads: int, cache: str) -> tuple[float, float]:
    """(seconds per image without start-up, start-up seconds) of `exdd score` with `extra` arguments."""
    one = exdd_score(paths[:1], extra, threads, cache)
    full = exdd_score(paths, extra, threads, cache)
    per_image = (full - one) / (len(paths) - 1)
    return per_image, one - per_image


def cold_startup(paths: list[Path], threads: int, per_image: float, tmp: str, round_: int) -> float:
    """Start-up of `exdd score` (overlays) on one image with an empty runner cache: the first run on a
    machine, which builds the backbone from timm and writes the cache entry every later run loads."""
    return exdd_score(paths[:1], ["--banks", "banks"], threads, f"{tmp}/cold-{round_}") - per_image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--onnx", action="store_true", help="also an ONNX export of the same banks")
    args = ap.parse_args()
    paths = sorted(IMAGES.glob("*.png"))
    if len(paths) < 2:
        sys.exit(f"no demo test images in {IMAGES}: run `dvc repro` first")
    # label -> (arguments, runner cache): the cache is this run's own (warmed before timing) or off
    configs = {
        "exdd score (overlays)": (["--banks", "banks"], "warm"),
        "exdd score --no-overlays": (["--banks", "banks", "--no-overlays"], "warm"),
        "exdd score, runner cache off (EXDD_CACHE_DIR=off)": (["--banks", "banks"], "off"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.onnx:
            subprocess.run(
                [sys.executable, "-m", "exdd_core.serve.cli", "export", "--format", "onnx", "--out", tmp + "/m"],
                check=True, cwd=ROOT, capture_output=True,
            )  # fmt: skip
            configs["ONNX export (overlays)"] = (["--model", tmp + "/m"], "off")
            configs["ONNX export --no-overlays"] = (["--model", tmp + "/m", "--no-overlays"], "off")
        warm = f"{tmp}/warm"
        exdd_score(paths[:1], ["--banks", "banks"], args.threads, warm)  # writes the cache entry
        # rounds of every measurement, the fastest of each kept: a busy moment of this shared VM only ever
        # slows a measurement down, and each round measures the floor and `exdd score` close in time
        bare: list[tuple[float, float, float]] = []
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label in configs}
        cold: list[float] = []
        for r in range(args.repeats):
            bare.append(bare_forward(paths, args.threads))
            for label, (extra, cache) in configs.items():
                runs[label].append(rate(paths, extra, args.threads, warm if cache == "warm" else cache))
            cold.append(cold_startup(paths, args.threads, runs["exdd score (overlays)"][-1][0], tmp, r))
    timm_s, cut_s, conc_s = (min(b[i] for b in bare) for i in range(3))
    best = {label: (min(r[0] for r in rs), min(r[1] for r in rs)) for label, rs in runs.items()}
    print(f"{len(paths)} demo test images, 632 x 224, batch 1, {args.threads} threads")
    print("| path | s / image | images / s | ratio to timm's forward | start-up s |")
    print("|---|---|---|---|---|")
    print(f"| bare forward, timm features_only (all blocks) | {timm_s:.4f} | {1 / timm_s:.1f} | 1.00 | |")
    print(f"| bare forward, our cut backbone | {cut_s:.4f} | {1 / cut_s:.1f} | {cut_s / timm_s:.2f} | |")
    print(
        f"| bare forward, our cut backbone, {args.threads} images at once x 1 thread | {conc_s:.4f} | "
        f"{1 / conc_s:.1f} | {conc_s / timm_s:.2f} | |"
    )
    for label, (per, start) in best.items():
        print(f"| {label} | {per:.4f} | {1 / per:.1f} | {per / timm_s:.2f} | {start:.2f} |")
    per, start = best["exdd score (overlays)"]
    print(f"score_rate_ratio_vs_bare_forward: {per / timm_s:.2f}")
    print(f"score_rate_ratio_vs_same_concurrency_forward: {per / conc_s:.2f}")
    print(f"score_startup_s: {start:.2f}")
    print(f"score_startup_cold_s: {min(cold):.2f}")
    print(f"score_startup_cache_off_s: {best['exdd score, runner cache off (EXDD_CACHE_DIR=off)'][1]:.2f}")


if __name__ == "__main__":
    main()
