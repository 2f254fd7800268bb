#!/usr/bin/env bash
# Set up a development environment: system packages, then a venv in .venv with
# wangge and its test tools installed in editable mode. Re-running is cheap: the
# Python packages are reinstalled only when pyproject.toml has changed.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-system-packages.sh
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.wangge-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "python packages: installing into .venv"
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -e '.[test]'; } >"$log" 2>&1; then
    cat "$log"
    echo "python packages: install failed" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
else
  echo "python packages: up to date"
fi
