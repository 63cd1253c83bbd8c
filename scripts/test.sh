#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
# What a fresh Debian lacks: Chromium (the browser test), a C++ compiler (AOTInductor builds),
# python3-venv (Debian's Python has no ensurepip without it).
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v g++ >/dev/null 2>&1 || need+=(g++)
python3 -c "import ensurepip" >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
bash scripts/setup.sh --dev
.venv/bin/python -m ruff check aoti engines app.py panel.py tests benchmarks assets
.venv/bin/lint-imports  # the layers in pyproject.toml
exec .venv/bin/python -m pytest "$@"
