#!/usr/bin/env bash
# Creates .venv with warden and its development tools. Idempotent; quiet when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=.venv/.warden-installed
# Reinstalled when the metadata or the C extension (built by the editable install) changed.
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ setup.py -nt "$stamp" ] \
  || [ kernel/warden/masking/_native.c -nt "$stamp" ] || [ kernel/warden/gateway/_pgcopy.c -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import warden, sqlglot, duckdb, pyarrow, psycopg' 
  # Optional: without a C compiler the install succeeds and masking takes its pure paths.
  if ! .venv/bin/python -c 'from warden.masking import _native' 2>/dev/null; then
    echo "bootstrap: WARNING: the C extension warden.masking._native was not built (no C" \
      "compiler or Python headers?); hash and email masks run on the slower pure paths" >&2
  fi
  if ! .venv/bin/python -c 'from warden.gateway import _pgcopy' 2>/dev/null; then
    echo "bootstrap: WARNING: the C extension warden.gateway._pgcopy was not built (no libpq" \
      "headers? apt-get install libpq-dev); PostgreSQL results are all read through ADBC" >&2
  fi
  touch "$stamp"
fi
# configurable-http-proxy (JupyterHub's proxy) for the real Hub in tests/test_jupyterhub.py,
# into the project-local .node/ (gitignored); only the npm registry is contacted.
chp=.node/node_modules/.bin/configurable-http-proxy
if [ ! -x "$chp" ] && command -v npm >/dev/null 2>&1; then
  node_major=$(node -p 'process.versions.node.split(".")[0]')
  # CHP 5 requires node >= 20; 4.x runs on older distributions' node.
  if [ "$node_major" -ge 20 ]; then chp_version=5; else chp_version=4; fi
  npm install --silent --no-audit --no-fund --prefix .node "configurable-http-proxy@$chp_version" >/dev/null
  "$chp" --version >/dev/null
fi

# The JupyterLab extension: labextension/ built into kernel/warden/labextension/ (shipped
# in the wheel) and registered in .venv with the server extension; skipped when unchanged.
bash scripts/build-labextension.sh
