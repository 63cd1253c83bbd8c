#!/usr/bin/env bash
# Create .venv with the CPU build of torch and the app's requirements (add --dev for the test tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first. Without an NVIDIA GPU, the CPU build from PyTorch's CPU index (a plain `torch` from PyPI
# is the multi-GB CUDA build); where that index is not reachable, the configured index (a local mirror).
TORCH="torch==${TORCH_VERSION:-2.13.0}"
CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q "$TORCH"
elif ! .venv/bin/python -m pip install -q --retries 0 --timeout 15 --index-url "$CPU_INDEX" "$TORCH" 2>/dev/null; then
  echo "setup: PyTorch's CPU index ($CPU_INDEX) is not reachable; $TORCH from the configured index" >&2
  .venv/bin/python -m pip install -q "$TORCH"
fi
.venv/bin/python -c "import torch; print('setup: torch', torch.__version__, '(CUDA ' + torch.version.cuda + ')' if torch.version.cuda else '(CPU build)')"
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q -r requirements-dev.txt
else
  .venv/bin/python -m pip install -q -r requirements.txt
fi
# The packages themselves (aoti, engines, benchmarks; app.py and panel.py), editable: no sys.path edits.
.venv/bin/python -m pip install -q --no-deps -e .
