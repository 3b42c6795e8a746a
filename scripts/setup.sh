#!/usr/bin/env bash
# Create .venv (once) and install exdd with its pinned stack; reinstalls only when pyproject.toml changes.
# torch 2.14.1 / torchvision 0.29.1 are pinned in pyproject.toml: pip takes them from this machine's disk.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
stamp=.venv/.exdd-installed
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  echo "installing exdd and its dependencies into .venv (a few minutes the first time)..."
  python -m pip install -q --upgrade pip
  python -m pip install -q -e ".[pipeline,test]"
  echo "$want" > "$stamp"
fi
