#!/usr/bin/env bash
# Documented check (not in CI, it needs Chromium: apt-get install chromium): render `dvc plots show` offline
# with the repo's template (.dvc/plots/offline.html, scripts inlined) and screenshot it headless.
# Usage, after a `dvc repro`: bash scripts/check_plots_offline.sh [out.png]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dvc_plots/screenshot.png}
dvc plots show -o dvc_plots >/dev/null
chromium --headless --no-sandbox --disable-gpu --virtual-time-budget=15000 \
  --screenshot="$out" --window-size=1400,2400 "file://$PWD/dvc_plots/index.html" 2>/dev/null
echo "screenshot of the offline plots page: $out"
