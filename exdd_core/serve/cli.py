"""The `exdd` command: score new images with banks the pipeline built, and see what a bank or store holds.

    exdd score IMAGES... --banks banks [--out scored] [--threshold T] [--resize]
    exdd info banks/normal.zarr | banks | features/test.zarr | eval/model.json
    exdd feedback add --defect IMG... | --normal IMG...; exdd feedback list   (serve/feedback_cli.py)

`score` writes `<out>/scores.csv` (image, ExDD score, PatchCore score, decision, error) and one heatmap overlay
PNG per image in `<out>/overlays/`, the size of the image file. Rows are appended as images are scored
(serve/line_csv.py): an unreadable image gets a row with its error and the exit status is 1; a killed run
keeps its rows in `scores.csv.partial` for `--resume`. Scores equal evaluate's for the same image: the
scoring path is the library's (see exdd_core.serve.inference).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from exdd_core.runtime.choices import DEVICES, SCORE_MODES
from exdd_core.runtime.errors import ExddError, InputError
from exdd_core.runtime.parallel import cpu_threads
from exdd_core.runtime.runlog import FALLBACK_NOTE, exit_now, log, run_stage, setup_logging
from exdd_core.serve import feedback_cli, info_cli

if TYPE_CHECKING:  # the CLI imports torch only when a command needs it
    from exdd_core.scoring.card import Card

DEFAULT_OUT = Path("scored")
TORCH_STACK = ("torch", "torchvision", "timm", "zarr", "safetensors", "sklearn", "onnx")
CHECK_IMAGES = 8  # images an ONNX export is checked on by default


# --------------------------------------------------------------------------------------------------------
# score


def _threshold(args: argparse.Namespace, card: Card, mode: str) -> float | None:
    if args.threshold is not None:
        return float(args.threshold)
    thr = card.thresholds.get(mode)
    if thr is None:
        log.warning(
            "the card has no threshold for mode %s (the test set had one class only): decisions left empty; "
            "pass --threshold",
            mode,
        )
    return thr


def _open(args: argparse.Namespace, paths: list[Path]) -> tuple[Card, Path, Any, str, Path]:
    """The card, its path, the scorer (banks + card, a torch export, or an ONNX export, which imports
    neither torch nor timm), the device and where the banks are; image sizes are refused up front (before
    loading the backbone) unless --resize."""
    from exdd_core.scoring.card import load_card
    from exdd_core.serve.export_card import CARD_FILE, is_export, read_export
    from exdd_core.serve.inputs import check_sizes, find_card

    exported = args.model is not None and is_export(args.model)
    card_path = args.model / CARD_FILE if exported else find_card(args.banks, args.model)
    card, export = read_export(args.model) if exported else (load_card(card_path), {})
    if not args.resize:  # unreadable files get an error row later (or stop the run with --fail-fast)
        check_sizes(paths, card.image_size, skip_unreadable=not args.fail_fast)  # type: ignore[arg-type]
    if (args.lam is not None and args.lam < 0) or (args.topk is not None and args.topk < 1):
        raise InputError(f"--lam {args.lam} / --topk {args.topk}: expected lam >= 0 and topk >= 1")
    fusion = {k: v for k, v in (("lam", args.lam), ("topk", args.topk)) if v is not None}
    if fusion and args.threshold is None:
        log.warning("--lam/--topk change the scores the card's threshold was calibrated on; pass --threshold")
    if export.get("format") == "onnx":
        from exdd_core.serve.onnx_model import OnnxScorer

        if args.device == "cuda":
            raise InputError("--device cuda: an ONNX export runs on onnxruntime's CPU provider here")
        if (args.mode or card.scoring["mode"]) != "fused":
            raise InputError(f"--mode {args.mode}: an ONNX export scores the fused mode (and PatchCore) only")
        threads = max(1, cpu_threads() // _workers(args, "cpu (onnxruntime)"))
        return card, card_path, OnnxScorer(args.model, fusion, threads), "cpu (onnxruntime)", args.model
    from exdd_core.runtime.device import resolve_device
    from exdd_core.serve.export import open_exported
    from exdd_core.serve.inference import open_scorer

    device = resolve_device(args.device, "--device")
    scorer = (
        open_exported(args.model, device, fusion)
        if exported
        else open_scorer(args.banks, card_path, device, fusion, cached=True)
    )
    return card, card_path, scorer, device, (args.model if exported else args.banks)


def _workers(args: argparse.Namespace, device: str) -> int:
    """Images scored at once: --workers, else one per CPU thread (`cpu_threads`), each image's ops then on
    `cpu_threads() // workers` threads (serve/score_loop.py says why); one on a GPU."""
    if args.workers is not None and args.workers < 1:
        raise InputError(f"--workers {args.workers}: expected >= 1")
    if not device.startswith("cpu"):
        return args.workers or 1
    return args.workers or cpu_threads()


def cmd_score(args: argparse.Namespace) -> str:
    """Score every image; refuse size mismatches up front (before loading the backbone) unless --resize."""
    from exdd_core.serve.inputs import expand_inputs
    from exdd_core.serve.score_loop import LineRun, score_folder_rows

    paths = expand_inputs(args.images)
    card, card_path, scorer, device, banks = _open(args, paths)
    size = card.image_size
    mode = args.mode or card.scoring["mode"]
    thr = _threshold(args, card, mode)
    log.info(
        "banks %s, card %s: %s, weights %s, image size %sx%s, ExDD mode %s, threshold %s",
        banks,
        card_path,
        card.backbone["name"],
        card.features["weights_id"],
        *size,
        mode,
        thr,
    )
    if scorer.model.fallback:
        log.warning(FALLBACK_NOTE)
    out: Path = args.out
    overlays, workers = None if args.no_overlays else out / "overlays", _workers(args, device)
    if device == "cpu":  # torch on the CPU (an ONNX session got its threads when it opened)
        import torch

        torch.set_num_threads(max(1, cpu_threads() // workers))
    run = LineRun(mode, thr, card, args.resize, overlays, args.fail_fast, workers)
    rows, resized, failed = score_folder_rows(scorer, paths, args, run)
    flagged = sum(r.get("decision") == "defective" for r in rows)
    note = f", {resized} resized to {size[0]}x{size[1]}" if resized else ""
    if failed:
        raise InputError(
            f"{failed} of {len(paths)} images could not be scored (the `error` column of "
            f"{out / 'scores.csv'} says why); the other {len(paths) - failed} have their scores there"
        )
    return (
        f"scored {len(paths)} images{note} on {device} with {card.backbone['name']} "
        f"({card.features['weights_id']}): {flagged} defective at ExDD ({mode}) threshold "
        f"{'none' if thr is None else f'{thr:.6g}'} -> {out / 'scores.csv'}"
        + ("" if args.no_overlays else f", overlays in {out / 'overlays'}")
    )


def cmd_export(args: argparse.Namespace) -> str:
    from exdd_core.serve.inputs import expand_inputs, find_card

    card_path = find_card(args.banks, args.model)
    if args.format == "onnx":
        from exdd_core.serve.onnx_export import export_onnx

        checks = expand_inputs(args.check_images) if args.check_images else default_check_images(args.banks)
        export = export_onnx(args.banks, card_path, args.out, checks)
        p = export["parity"]
        return (
            f"exported {args.banks} with {card_path} to ONNX -> {args.out}: {p['images']} check images scored "
            f"within {p['max_relative_difference']:.2e} (relative) of the torch model; score with: "
            f"exdd score --model {args.out} <images> (needs only exdd[onnx])"
        )
    from exdd_core.serve.export import export_model

    export = export_model(args.banks, card_path, args.out)
    rows = export["bank_rows"]
    return (
        f"exported {args.banks} ({rows['normal']} + {rows['defect']} rows, {export['bank_dtype']}) with "
        f"{card_path} -> {args.out}; score with: exdd score --model {args.out} <images>"
    )


def default_check_images(banks: Path, n: int = CHECK_IMAGES) -> list[Path]:
    """The project's prepared test images beside the banks (the first `n`), or an error asking for some."""
    folder = Path(banks).resolve().parent / "data" / "prepared" / "test" / "images"
    found = sorted(folder.glob("*.png"))[:n] if folder.is_dir() else []
    if not found:
        raise InputError(
            f"no images to check the ONNX export with ({folder} holds none): pass --check-images IMG..."
        )
    return found


# --------------------------------------------------------------------------------------------------------
# entry point


def _add_score(sub: Any) -> None:
    """The `score` verb's arguments."""
    sc = sub.add_parser(
        "score",
        help="score images or folders; write scores.csv and heatmap overlays",
        description="Score images with the banks and the threshold evaluate chose (eval/model.json).",
    )
    sc.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    sc.add_argument(
        "--banks", type=Path, default=Path("banks"), help="folder with normal.zarr and defect.zarr"
    )
    sc.add_argument(
        "--model",
        type=Path,
        default=None,
        help="deployment card written by evaluate (default: <banks>/../eval/model.json, else eval/model.json), "
        "or a folder written by `exdd export` (then --banks is not used)",
    )
    sc.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default: {DEFAULT_OUT})")
    sc.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold (default: the card's, calibrated on held-out normal training images)",
    )
    sc.add_argument(
        "--mode",
        choices=SCORE_MODES,
        default=None,
        help="ExDD image-score mode (default: the one evaluate reported; its threshold comes along)",
    )
    sc.add_argument("--lam", type=float, default=None, help="override the card's fused-score lam (>= 0)")
    sc.add_argument(
        "--topk", type=int, default=None, help="override the card's top-k of the image score (>= 1)"
    )
    sc.add_argument(
        "--resize",
        action="store_true",
        help="resize images of another size to the banks' size (bilinear, as prepare) instead of refusing",
    )
    sc.add_argument("--device", default="auto", choices=DEVICES, help="where to run (default: auto)")
    sc.add_argument("--no-overlays", action="store_true", help="write scores.csv only")
    sc.add_argument(
        "--workers",
        type=int,
        default=None,
        help="images scored at once (default: one per CPU thread torch uses, each on one thread; 1 on a GPU)",
    )
    sc.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first image that cannot be scored (default: give it a row with the error, go on)",
    )
    sc.add_argument(
        "--resume",
        action="store_true",
        help="keep the scored rows of <out>/scores.csv.partial (a run that was stopped) and score the rest",
    )
    sc.set_defaults(func=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="exdd",
        description="ExDD surface-defect detection: score new images with the banks a pipeline run built.",
    )
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    _add_score(sub)
    ex = sub.add_parser(
        "export",
        help="write banks, backbone and card as one folder that scores without DVC or the repo",
        description="Export the banks and scorer: `exdd score --model <out>` then works with only exdd installed.",
    )
    ex.add_argument(
        "--banks", type=Path, default=Path("banks"), help="folder with normal.zarr and defect.zarr"
    )
    ex.add_argument("--model", type=Path, default=None, help="deployment card (default: as `exdd score`)")
    ex.add_argument(
        "--out", type=Path, required=True, help="the export folder to write (replaced if it exists)"
    )
    ex.add_argument(
        "--format",
        choices=("torch", "onnx"),
        default="torch",
        help="torch: backbone + banks as safetensors (needs exdd); onnx: an ONNX graph + numpy banks that "
        "score with onnxruntime and numpy alone (exdd[onnx]), checked against torch at export",
    )
    ex.add_argument(
        "--check-images",
        nargs="+",
        type=Path,
        default=None,
        help=f"onnx: images (or folders) to check the export on (default: the first {CHECK_IMAGES} "
        "prepared test images beside the banks)",
    )
    ex.set_defaults(func=cmd_export)

    inf = sub.add_parser(
        "info",
        help="what a bank, feature store or deployment card holds",
        description="Provenance, sizes and coverage radius of a store (or every *.zarr in a folder), or a card.",
    )
    inf.add_argument("path", type=Path, help="a *.zarr store, a folder of stores, or eval/model.json")
    inf.add_argument("--json", action="store_true", help="print JSON instead of tables")
    inf.set_defaults(func=info_cli.cmd_info)
    feedback_cli.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    if args.verb in ("info", "feedback"):  # quick verbs: an answer or an error, no stage log
        try:
            if args.verb == "feedback":
                feedback_cli.resolve(args)
            said = args.func(args)
        except ExddError as e:
            log.error("%s failed: %s", args.verb, e)
            return 1
        if args.verb == "feedback":
            log.info(said)
        return 0
    try:
        run_stage(args.verb, lambda: args.func(args))
    except ModuleNotFoundError as e:  # a base install (exdd[onnx]) scoring banks or a torch export
        if e.name and e.name.split(".")[0] in TORCH_STACK:
            log.error(
                "%s needs the torch stack (%s is not installed): pip install 'exdd[torch]'", args.verb, e.name
            )
            return 1
        raise
    return 0


def run(argv: list[str] | None = None) -> NoReturn:
    """The `exdd` console script: `main`, then `runlog.exit_now` (no interpreter teardown: ~0.9 s of a
    one-image `exdd score`). Every file a command writes is closed and published before `main` returns. Tests
    call `main`."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse, run_stage's clean exits
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    exit_now(code)


if __name__ == "__main__":
    run()
