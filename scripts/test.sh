#!/usr/bin/env bash
# Run the whole test suite: sets up what is missing, then pytest. The tests start
# their own throwaway PostGIS server; a skipped test fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
