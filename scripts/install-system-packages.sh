#!/usr/bin/env bash
# Debian packages wangge needs and a fresh machine may lack: PostgreSQL + PostGIS
# (for the tests' throwaway server and production), SpatiaLite (the embedded
# store) and Chromium (browser tests of the maps). Installs only what is missing.
set -euo pipefail

packages=(postgresql-15-postgis-3 postgresql-client-15 libsqlite3-mod-spatialite)
if [ "${WANGGE_SKIP_CHROMIUM:-0}" != "1" ]; then
  packages+=(chromium chromium-driver fonts-noto-cjk)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "system packages: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
