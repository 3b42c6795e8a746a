"""Stage fit_fusion: the fused score's weight lam (fixed, or cross-fitted on training images only) and, for
the `head` form, the defect head fit on every training image (scoring.fit) -> paths.fusion/fusion.json."""

import json

from exdd_core.runtime.atomic import write_text_atomic
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.params import load_params
from exdd_core.runtime.paths import load_paths
from exdd_core.runtime.runlog import exit_now, log, run_stage, track
from exdd_core.scoring.fit import FusionInputs, fit_fusion


def main() -> str:
    p, paths = load_params(), load_paths()
    fusion = p["scoring"]["fusion"]
    inputs = FusionInputs(  # the pipeline's images, then the verdicts from the line (exdd feedback add)
        normal_features=(paths.store("normal"), paths.store("feedback_normal")),
        defect_features=(paths.store("defect"), paths.store("feedback_defect")),
        normal_bank=paths.bank("normal"),
        known_defects=(paths.manifest("train_defective"), paths.verdicts("defect") / "manifest.csv"),
        recipes=paths.synthetic / "recipes.json",
    )
    fit = fit_fusion(p, inputs, resolve_device(p["bank"]["device"], "bank.device"), track)
    if fit.note:  # a cross-fit whose candidates all tied is worth a warning: the defect bank never helped
        (log.warning if fit.criterion else log.info)(fit.note)
    write_text_atomic(paths.fusion_file, json.dumps(fit.as_dict(), indent=2) + "\n")
    tried = ", ".join(f"{k}: {v:.4f}" for k, v in fit.criterion.items()) or "none"
    return f"lam {fit.lam} ({fusion['form']}, top-{fusion['topk']}); cross-fitted criterion {tried} -> {paths.fusion_file}"


if __name__ == "__main__":
    run_stage("fit_fusion", main)
    exit_now()  # outputs committed: skip the interpreter's ~1 s teardown (runlog.exit_now)
