#!/usr/bin/env bash
# Build the demo district into the embedded SpatiaLite store and serve it.
set -euo pipefail
cd "$(dirname "$0")/.."
WANGGE_SKIP_CHROMIUM=1 bash scripts/setup.sh
exec .venv/bin/wangge demo "$@"
