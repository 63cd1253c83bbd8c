#!/usr/bin/env bash
# Create .venv with the CPU build of torch and the app's requirements (add --dev for the test tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# CPU build first: a plain `torch` requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The packages themselves (aoti, engines, benchmarks; app.py and panel.py), editable: no sys.path edits.
.venv/bin/python -m pip install -q --no-deps -e .
