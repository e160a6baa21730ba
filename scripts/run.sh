#!/usr/bin/env bash
# The main job: JupyterLab with the warden kernel, the local gateway and demo data.
# Embedded defaults: DuckDB demo database and DuckDB audit file under the user's data
# dir; the first warden kernel starts the per-user gateway on a unix socket.
#   ./scripts/run.sh                 # JupyterLab on http://127.0.0.1:8888 (URL printed)
#   ./scripts/run.sh --port 9999     # extra arguments go to `jupyter lab`
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/warden install --sys-prefix >/dev/null
# Build the demo data now, so the first cell does not wait for it.
.venv/bin/python -c 'from warden.demo import ensure_demo; print("demo data:", ensure_demo())'
echo "open notebooks/quickstart.ipynb and pick the 'Python 3 (warden)' kernel"
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)  # containers and CI run as root
exec .venv/bin/jupyter lab --notebook-dir notebooks --ip 127.0.0.1 --no-browser "${extra[@]}" "$@"
