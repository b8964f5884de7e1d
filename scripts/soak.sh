#!/usr/bin/env bash
# The full reliability soak: 1000 reports while the node is SIGKILLed 10 times (the test suite
# runs the same test in a reduced size). Usage: scripts/soak.sh [REPORTS] [KILLS]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
SOAK_REPORTS="${1:-1000}" SOAK_KILLS="${2:-10}" uv run pytest -q tests/reliability/test_crash_soak.py
