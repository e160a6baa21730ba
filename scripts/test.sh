#!/usr/bin/env bash
# The test command: installs what it needs, then lint, types and the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
bash scripts/bootstrap.sh
echo "== ruff"
.venv/bin/ruff check kernel tests benchmarks
echo "== mypy (strict on warden)"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
