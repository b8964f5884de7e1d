#!/usr/bin/env bash
# The test command: sets up what is missing, then lint, types and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. scripts/env.sh
echo "==> ruff"
uv run ruff check src tests bench fuzz
uv run ruff format --check src tests bench fuzz
echo "==> mypy"
uv run mypy src
echo "==> pytest"
uv run pytest "$@"
