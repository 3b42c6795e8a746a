#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite (unit tests and the DVC end-to-end tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export DVC_NO_ANALYTICS=1 HF_HUB_OFFLINE=1 EXDD_NO_PROGRESS=1
ruff check .
ruff format --check .
python -m pytest "$@"
