#!/usr/bin/env bash
# Set up (if needed) and run the demo pipeline: generated KSDD2-like data, CPU synthesiser, random-weight
# backbone. Offline, CPU only. Results: metrics.json, eval/heatmaps.png, eval/scores.csv, `dvc plots show`.
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
dvc metrics show
