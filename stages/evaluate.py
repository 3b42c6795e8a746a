"""Stage evaluate: ExDD (every image-score mode) and one-bank PatchCore on the test set -> paths.metrics, paths.eval/."""

import json
from pathlib import Path

from exdd_core.banks.health import mostly_background
from exdd_core.evaluation.report import EvalInputs, describe_run, evaluate
from exdd_core.runtime import distributed
from exdd_core.runtime.atomic import staging_dir
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.params import load_params
from exdd_core.runtime.paths import PipelinePaths, load_paths
from exdd_core.runtime.runlog import exit_now, log, track
from exdd_core.scoring.card import build_card, write_card
from exdd_core.scoring.model import FALLBACK_NOTE


def main() -> str:
    """Everything is written to a staging folder and published at the very end, so an evaluate that fails
    leaves the previous results (the outputs are `persist` in dvc.yaml: DVC does not delete them first)."""
    p = load_params()
    device = resolve_device(p["scoring"]["device"], "scoring.device")
    # under torchrun: each rank scores a shard of the test images, or (EXDD_SHARD_BANKS=1) every image with
    # its shard of each bank
    ranks = distributed.init(device)
    device = distributed.local_device(device, ranks)
    if not ranks.main:
        run(p, device, ranks, None)
        what = (
            "every test image with its shard of the banks"
            if distributed.shard_banks()
            else "its shard of the test images"
        )
        return f"rank {ranks.rank}: scored {what} on {device}"
    paths = load_paths()
    with staging_dir(paths.eval, {"metrics.json": paths.metrics}) as staged:
        summary = run(p, device, ranks, staged)
    return summary


def inputs(paths: PipelinePaths) -> EvalInputs:
    return EvalInputs(
        normal_bank=paths.bank("normal"),
        defect_bank=paths.bank("defect"),
        test_features=paths.store("test"),
        test_manifest=paths.manifest("test"),
        normal_features=paths.store("normal"),  # its held-out calibration images set the threshold
    )


def run(p: dict, device: str, ranks: distributed.Ranks, staged: Path | None) -> str:
    paths = load_paths()
    fit = json.loads(paths.fusion_file.read_text())  # lam (and head), fitted by fit_fusion
    fitted = {"lam": fit["lam"], "head": fit.get("head")}
    scoring = {**p["scoring"], "fusion": {**p["scoring"]["fusion"], **fitted}}
    res = evaluate(
        inputs(paths), scoring, p["eval"], device, staged, describe_run(p, fit, device),
        progress=track, seed=p["seed"], ranks=ranks, shard_banks=distributed.shard_banks(),
    )  # fmt: skip
    if res is None or staged is None:
        return ""
    m = res.metrics
    log_notes(m)
    (staged / "metrics.json").write_text(json.dumps(m, indent=2) + "\n")
    write_card(staged / "model.json", build_card(m, res, scoring, p["seed"], m["comparable_to_paper"]))
    e, pc = m["exdd"], m["patchcore"]
    return (
        f"{len(res.ids)} test images on {device}{sharding(ranks)}, {p['backbone']['name']} weights "
        f"{res.test_attrs.get('weights_id', p['backbone']['weights'])}: "
        f"ExDD ({e['mode']}) I-AUROC {e['image_auroc']} P-AUROC {e['pixel_auroc']} AUPRO {e['aupro']} | "
        f"PatchCore I-AUROC {pc['image_auroc']} P-AUROC {pc['pixel_auroc']} | defect bank {describe_health(m['defect_bank'])} "
        f"-> {paths.metrics}, {paths.eval}/ ({calibrated(m['calibration'])})"
    )


def log_notes(m: dict) -> None:
    """Every note of metrics.json a user should see in the log, once."""
    if m["fusion"].get("note"):
        log.info("fusion: %s", m["fusion"]["note"])
    for note in (m.get("note"), FALLBACK_NOTE if m["fallback"] else None, m.get("pixel_note")):
        if note:
            log.warning(note)
    if mostly_background(m["defect_bank"]["background_share"]):
        log.warning("defect bank is mostly background: %s", describe_health(m["defect_bank"]))
    if "note" in m["calibration"]:
        log.warning(m["calibration"]["note"])


def sharding(ranks: distributed.Ranks) -> str:
    if ranks.world == 1:
        return ""
    what = "each bank sharded over them" if distributed.shard_banks() else "each a shard of the test images"
    return f" ({ranks.world} ranks, {what})"


def calibrated(c: dict) -> str:
    """The deployment threshold and what the test set says of it, for the log line."""
    if not c["images"]:
        return "oracle threshold: no calibration images"
    e = c["exdd"]
    return (
        f"threshold {e['threshold']} at target FPR {c['target_fpr']} from {c['images']} held-out normals "
        f"(false alarms on new normals <= {e['false_alarm_upper_95']} at 95 % confidence): "
        f"test false alarms {e['false_alarm_rate']}, misses {e['miss_rate']}"
    )


def describe_health(h: dict) -> str:
    """One phrase for the log: rows, and the background shares (all rows, synthetic rows)."""

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.0f} %"

    return (
        f"{h['defect_rows']} rows ({h['synthetic_rows']} synthetic), {pct(h['background_share'])} closer to "
        f"M_N than its own NN scale {h['normal_nn_scale']} (synthetic rows: {pct(h['synthetic_background_share'])})"
    )


if __name__ == "__main__":
    distributed.run_stage_sharded("evaluate", main)
    exit_now()  # outputs committed: skip the interpreter's ~1 s teardown (runlog.exit_now)
