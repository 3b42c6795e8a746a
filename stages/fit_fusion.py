"""Stage fit_fusion: the fused score's weight lam (fixed, or cross-fitted on training images only) and, for
the `head` form, the defect head fit on every training image (scoring.fit) -> fusion/fusion.json."""

import json
from pathlib import Path

from exdd_core.runtime.atomic import write_text_atomic
from exdd_core.runtime.device import resolve_device
from exdd_core.runtime.params import load_params
from exdd_core.runtime.runlog import log, run_stage, track
from exdd_core.scoring.fit import FusionInputs, fit_fusion

OUT = Path("fusion/fusion.json")


def main() -> str:
    p = load_params()
    fusion = p["scoring"]["fusion"]
    fit = fit_fusion(p, FusionInputs(), resolve_device(p["bank"]["device"], "bank.device"), track)
    if fit.note:  # a cross-fit whose candidates all tied is worth a warning: the defect bank never helped
        (log.warning if fit.criterion else log.info)(fit.note)
    write_text_atomic(OUT, json.dumps(fit.as_dict(), indent=2) + "\n")
    tried = ", ".join(f"{k}: {v:.4f}" for k, v in fit.criterion.items()) or "none"
    return f"lam {fit.lam} ({fusion['form']}, top-{fusion['topk']}); cross-fitted criterion {tried} -> {OUT}"


if __name__ == "__main__":
    run_stage("fit_fusion", main)
