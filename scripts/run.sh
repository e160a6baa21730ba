#!/usr/bin/env bash
# The main job. Until the kernel lands this runs the engine demo on the embedded
# DuckDB demo data: decisions, masks, row filters, holds and denials.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/warden demo "$@"
