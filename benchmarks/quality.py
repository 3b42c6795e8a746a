"""Quality dev suite: does the defect bank help? ExDD scoring variants vs the one-bank PatchCore, per data set.

Why: on held-out real data the paper's ratio score is below its own PatchCore. This suite measures every
scoring/bank variant on several KSDD2-like data sets x 3 data seeds from cached patch features (see
`quality_data.py`; the first run extracts them), calling the library directly: the project's extractor
(EfficientNet-Lite0 with its registry ImageNet weights, stages 2 + 3; `--backbone random`: the seeded random
WRN50 of earlier runs), procedural synthesiser, coreset (1 % normal, min 1000; 10 % defect), defect head and
metrics. Anything fitted (lam, gamma, the head) is fit on training folds only; test splits are only scored.

    python benchmarks/quality.py                     # all data sets and seeds (gravel = unseen, reported apart)
    python benchmarks/quality.py --quick             # 2 data sets, seed 0, main rows only
    python benchmarks/quality.py --backbone random   # the random-weight rows of earlier runs
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core: the machine is shared
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable as `python benchmarks/quality.py`
sys.path.insert(0, str(Path(__file__).resolve().parent))

from quality_data import COUNTS, SPECS, build_all  # noqa: E402
from quality_scoring import CACHE, Ctx, Scorer, run_authors  # noqa: E402

# ---------------------------------------------------------------- variants
# A variant is a dict: kind (patchcore | ratio | authors | fused), bank (real, synth, thr, dilate, purify),
# and for fused: form, lam (a float, or "cv" = cross-fitted on training folds), topk.
BANK = {"real": True, "synth": 12, "thr": 0.5, "dilate": 0, "purify": None}  # the pipeline's defaults
PURE = {**BANK, "purify": 0.5}


def fused(form: str, lam: float | str, topk: int = 1, **bank: object) -> dict:
    """A fused variant (exdd_core.fusion): lam a float or "cv"; bank = PURE updated by `bank`."""
    return {"kind": "fused", "form": form, "lam": lam, "topk": topk, "bank": {**PURE, **bank}}


MAIN: dict[str, dict] = {
    "patchcore": {"kind": "patchcore"},
    "paper": {"kind": "ratio", "mode": "paper", "bank": BANK},
    "same_patch": {"kind": "ratio", "mode": "same_patch", "bank": BANK},
    "max_ratio": {"kind": "ratio", "mode": "max_ratio", "bank": BANK},
    "authors_code": {"kind": "authors"},
    "max_ratio+purify": {"kind": "ratio", "mode": "max_ratio", "bank": PURE},
    "tau l=1 raw": fused("tau", 1.0, purify=None),
    "tau l=1": fused("tau", 1.0),
    "margin l=1": fused("margin", 1.0),
    "tau cv": fused("tau", "cv"),
    "margin cv": fused("margin", "cv"),
    "tau l=1 top3": fused("tau", 1.0, topk=3),
    "tau cv top3": fused("tau", "cv", topk=3),
    "tau l=1 thin": fused("tau", 1.0, thr=0.25, dilate=2),
    "tau l=1 syn100": fused("tau", 1.0, synth=100),
    "margin cv syn100": fused("margin", "cv", synth=100),
    "head l=1": fused("head", 1.0),
    "head cv": fused("head", "cv"),
    "head l=1 thr.25": fused("head", 1.0, thr=0.25),
    "head cv thr.25": fused("head", "cv", thr=0.25),
    "snr g=0.5": {"kind": "snr", "gamma": 0.5, "topk": 1, "bank": BANK},
    "snr cv": {"kind": "snr", "gamma": "cv", "topk": 1, "bank": BANK},
    "patchcore top3 (ref)": fused("tau", 0.0, topk=3, real=False, synth=0),  # no bank: top-k's own effect
}
NEW = [k for k in MAIN if (MAIN[k]["kind"] in ("fused", "snr") or "+" in k) and "(ref)" not in k]
QUICK = ["patchcore", "paper", "max_ratio", "max_ratio+purify", "tau cv", "head cv", "head cv thr.25"]


def ablations(v: dict) -> dict[str, dict]:
    """Defect bank none / real / synthetic / both, and synth.count 0, 12, 50, 100, for variant v."""
    b = v["bank"]
    out = {
        "bank none": {**v, "bank": {**b, "real": False, "synth": 0}},
        "bank real (=count 0)": {**v, "bank": {**b, "real": True, "synth": 0}},
        "bank synth only": {**v, "bank": {**b, "real": False, "synth": max(b["synth"], 12)}},
    }
    for n in (12, 50, 100):
        out[f"both, count {n}"] = {**v, "bank": {**b, "real": True, "synth": n}}
    return out


# ---------------------------------------------------------------- driver
def choose(res: dict, dev: list[str]) -> str:
    """SELECTION RULE (written 20:25 UTC 2026-12-01, before the final run on real features; the rule of
    2026-11-28 picked the best *worst-case* I-AUROC gain, which ties at 0 for every cross-fitted variant and
    then prefers the simplest, so it could never pick a variant that helps on average and falls back to
    PatchCore elsewhere): among the new variants, keep those whose seed-averaged difference to PatchCore is
    >= -0.005 on every dev data set in I-AUROC, P-AUROC and AUPRO (the guard); pick the largest mean (over dev
    sets) I-AUROC gain; within 0.005 of it prefer the simpler one (the earlier in MAIN). If none passes the
    guard, maximise the worst-case over all three metrics of the difference."""

    def worst(v: str, j: int) -> float:
        return min(mean(res, d, v, j) - mean(res, d, "patchcore", j) for d in dev)

    def gain(v: str) -> float:
        return float(np.mean([mean(res, d, v, 0) - mean(res, d, "patchcore", 0) for d in dev]))

    cands = [v for v in NEW if v in res[dev[0]]]
    ok = [v for v in cands if min(worst(v, j) for j in range(3)) >= -0.005]
    if not ok:
        return max(cands, key=lambda v: min(worst(v, j) for j in range(3)))
    best = max(gain(v) for v in ok)
    return next(v for v in ok if gain(v) >= best - 0.005)


def mean(res: dict, d: str, v: str, j: int) -> float:
    return float(np.mean([r[j] for r in res[d][v]]))


def table(res: dict, names: list[str], rows: list[str], title: str) -> None:
    print(f"\n## {title}\n")
    print("| data | method | I-AUROC | P-AUROC | AUPRO | dI vs PC |")
    print("|---|---|---|---|---|---|")
    for d in names:
        for v in rows:
            if v not in res[d]:
                continue
            r = np.array(res[d][v])
            cells = [f"{r[:, j].mean():.3f} ± {r[:, j].std():.3f}" for j in range(3)]
            gain = r[:, 0].mean() - np.mean([x[0] for x in res[d]["patchcore"]])
            print(f"| {d} | {v} | {' | '.join(cells)} | {gain:+.3f} |")


FEATS = {"backbone": "lite0", "layers": "2+3"}  # set from the command line: which cached features to score


def score_sets(
    names: list[str], seeds: list[int], variants: dict, res: dict, info: dict, authors: bool
) -> None:
    for d in names:
        for s in seeds:
            t0 = time.perf_counter()
            sc = Scorer(Ctx(d, s, **FEATS))
            for v, spec in variants.items():
                if spec["kind"] == "authors":
                    if authors:
                        a, b = run_authors(d, s, **FEATS)
                        res[d].setdefault("authors_code", []).append(a)
                        res[d].setdefault("patchcore[authors feats]", []).append(b)
                    continue
                m, extra = sc.run(spec)
                res[d].setdefault(v, []).append(m)
                if extra:
                    info.setdefault((d, v), []).append(extra)
            print(f"# scored {d} s{s} in {time.perf_counter() - t0:.0f} s", flush=True)


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="metal+brick, seed 0, main rows only")
    ap.add_argument("--no-authors", action="store_true", help="skip the authors_code preset rows")
    ap.add_argument(
        "--backbone",
        choices=("lite0", "random"),
        default="lite0",
        help="lite0: EfficientNet-Lite0, registry ImageNet weights (default); random: seeded random WRN50",
    )
    ap.add_argument("--layers", default="2+3", help="lite0 layer set: 2+3 (default), 2+3+4 or 3+4")
    ap.add_argument(
        "--ablate", metavar="VARIANT", help="only the bank ablation of one MAIN variant (dev sets)"
    )
    args = ap.parse_args()
    FEATS.update(backbone=args.backbone, layers=args.layers if args.backbone == "lite0" else "2+3")
    t0 = time.perf_counter()
    if args.ablate:
        dev = [n for n, sp in SPECS.items() if not sp.unseen]
        res = {d: {} for d in dev}
        abl = {"patchcore": MAIN["patchcore"], **ablations(MAIN[args.ablate])}
        score_sets(dev, [0, 1, 2], abl, res, {}, False)
        table(res, dev, list(abl), f"ablation of {args.ablate}")
        print(f"# wall time {time.perf_counter() - t0:.0f} s")
        return
    seeds = [0] if args.quick else [0, 1, 2]
    dev = ["metal", "brick"] if args.quick else [n for n, sp in SPECS.items() if not sp.unseen]
    unseen = [] if args.quick else [n for n, sp in SPECS.items() if sp.unseen]
    ext = build_all(CACHE, seeds, dev + unseen, COUNTS, backbone=FEATS["backbone"])
    print(f"# feature cache ready ({ext:.0f} s spent extracting in this run)")
    variants = {k: MAIN[k] for k in (QUICK if args.quick else MAIN)}
    res: dict = {d: {} for d in dev + unseen}
    info: dict = {}
    score_sets(dev, seeds, variants, res, info, not args.no_authors)
    chosen = choose(res, dev)
    print(f"# chosen by the selection rule: {chosen} = {MAIN[chosen]}")
    abl = ablations(MAIN[chosen])
    score_sets(dev, seeds, abl, res, info, False)
    score_sets(unseen, seeds, {**variants, **abl}, res, info, not args.no_authors)
    out = CACHE / FEATS["backbone"] / ("results_quick.json" if args.quick else "results.json")
    out.write_text(json.dumps({"chosen": chosen, "res": res}, indent=0))
    rows = [*variants, "patchcore[authors feats]"]
    table(res, dev, rows, "dev data sets: mean ± sd over seeds")
    table(res, dev, ["patchcore", chosen, *abl], f"ablation of the chosen variant ({chosen})")
    if unseen:
        table(res, unseen, rows + list(abl), "unseen data set (not used for the choice)")
    for (d, v), xs in sorted(info.items()):
        for k in ("lam", "gamma"):
            if k in xs[0] and "cv" in v:
                print(f"# cross-fitted {k} {d} {v}: {[x[k] for x in xs]}")
    print(
        f"# bank rows (paper bank, dev): {[(d, info.get((d, 'max_ratio'), [{}])[0].get('bank_rows')) for d in dev]}"
    )
    print(f"# features: {FEATS}")
    print(
        f"# wall time {time.perf_counter() - t0:.0f} s (threads {torch.get_num_threads()}, "
        f"OMP {os.environ.get('OMP_NUM_THREADS')})"
    )
    for d in unseen:
        u = [mean(res, d, chosen, j) - mean(res, d, "patchcore", j) for j in range(3)]
        print(f"# unseen {d}: {chosen} minus patchcore (I, P, AUPRO): {u[0]:+.4f} {u[1]:+.4f} {u[2]:+.4f}")
    diffs = [[mean(res, d, chosen, j) - mean(res, d, "patchcore", j) for d in dev] for j in range(3)]
    print(f"# dev AUPRO difference min: {min(diffs[2]):.4f}")
    print(f"exdd_minus_patchcore_image_auroc_min: {min(diffs[0]):.4f}")
    print(f"exdd_minus_patchcore_pixel_auroc_min: {min(diffs[1]):.4f}")
    print(f"exdd_minus_patchcore_image_auroc_mean: {np.mean(diffs[0]):.4f}")
    print(f"exdd_minus_patchcore_pixel_auroc_mean: {np.mean(diffs[1]):.4f}")


if __name__ == "__main__":
    main()
