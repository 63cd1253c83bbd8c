#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi
bash scripts/setup.sh --dev
.venv/bin/python -m ruff check aoti engines app.py panel.py tests benchmarks assets
.venv/bin/lint-imports  # the layers in pyproject.toml
exec .venv/bin/python -m pytest "$@"
