#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for DRIMbox: system packages (as root), then the Python
# environment from the lock file. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

# Everything the demo and the tests run, including what a minimal Debian 12 lacks: python3-venv
# (uv's tool venv), nodejs/npm (the OHIF package), systemd (systemd-analyze verify of the unit),
# procps (pgrep), ca-certificates (HTTPS to PyPI and npm), git (the fresh-install check's clone),
# haproxy (the load balancer of the two-node tests), iproute2 (the shaped-link benchmark).
DEBIAN_PACKAGES=(orthanc orthanc-dicomweb dcmtk dicom3tools postgresql xmlsec1 chromium
  python3 python3-venv systemd procps ca-certificates git haproxy iproute2)

missing=()
for package in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" || missing+=("$package")
done
# npm by command: another nodejs build (NodeSource's) ships npm without Debian's npm package.
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "Paquets Debian manquants : ${missing[*]} — relancez en root ou : sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  # policy-rc.d keeps the packages' own services (a system Orthanc, a system PostgreSQL) from
  # starting: the demo and the tests start their own instances on loopback.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  . scripts/env.sh  # the CA bundle may have just been installed
fi

ensure_uv
echo "==> uv sync (versions from uv.lock)"
uv sync --frozen --quiet

echo "==> OHIF viewer (npm @ohif/app, prebuilt)"
./scripts/install-ohif.sh var/ohif
