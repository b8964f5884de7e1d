#!/usr/bin/env bash
# The demo command: sets up what is missing, then starts the local DRIM-M demo network.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
exec uv run drimbox demo "$@"
