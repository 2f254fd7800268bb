#!/usr/bin/env bash
# Set up a development environment: system packages, then a venv in .venv with
# wangge and its test tools installed in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-packages.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
