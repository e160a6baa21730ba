#!/usr/bin/env bash
# The main job: JupyterLab with the warden kernel, the local gateway and demo data.
# Embedded defaults: DuckDB demo database and DuckDB audit file under the user's data
# dir; the first warden kernel starts the per-user gateway on a unix socket.
#   ./scripts/run.sh                 # JupyterLab on http://127.0.0.1:8888 (URL printed)
#   ./scripts/run.sh --port 9999     # extra arguments go to `jupyter lab`
# It installs the runtime packages only (the test command adds the dev tools), and
# serves a working copy of notebooks/ from the data dir, so the repository stays clean.
# WARDEN_RUN_DRY=1 prints the `jupyter lab` command instead of starting it (tests).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
PYTHON=${PYTHON:-python3}
data="${XDG_DATA_HOME:-$HOME/.local/share}/warden"
work="$data/notebooks"
started=$SECONDS

step() { printf '[%s/7] %s\n' "$1" "$2"; }
done_in() { printf '      done (%ss)\n' "$((SECONDS - started))"; }

step 1 "Python environment (.venv)"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
done_in

step 2 "warden and its runtime packages (the first run downloads them: a minute or two)"
runtime=.venv/.warden-runtime
dev=.venv/.warden-installed  # scripts/bootstrap.sh (the test command) installs runtime + dev
if { [ -f "$dev" ] && [ "$dev" -nt pyproject.toml ]; } || { [ -f "$runtime" ] && [ "$runtime" -nt pyproject.toml ]; }; then
  echo "      up to date"
else
  .venv/bin/python -m pip install -q --progress-bar off -e . 2>&1 | grep -v '^WARNING: Location' || true
  .venv/bin/python -c 'import warden, sqlglot, duckdb, pyarrow, jupyterlab'
  touch "$runtime"
fi
done_in

step 3 "the JupyterLab extension (status bar, approvals, audit timeline; needs npm)"
bash scripts/build-labextension.sh
done_in

step 4 "the 'Python 3 (warden)' kernel"
.venv/bin/warden install --sys-prefix >/dev/null
done_in

step 5 "demo data (DuckDB database and policy)"
.venv/bin/python -c 'from warden.demo import ensure_demo; print("      in", ensure_demo())'
done_in

step 6 "notebooks: a working copy in $work"
# JupyterLab autosaves and adds checkpoints and Untitled notebooks: never in the repo.
mkdir -p "$work"
chmod 700 "$work"
for nb in notebooks/*.ipynb; do
  name=$(basename "$nb")
  if [ ! -e "$work/$name" ]; then
    cp "$nb" "$work/$name"
    echo "      copied $name"
  elif ! cmp -s "$nb" "$work/$name"; then
    echo "      kept your $name (delete it to get the repository's version)"
  fi
done
done_in

step 7 "JupyterLab (the warden kernel is the default; the first cell starts your gateway)"
extra=()
[ "$(id -u)" = 0 ] && extra+=(--allow-root)  # containers and CI run as root
# Only the warden kernel: JupyterLab's kernel picker preselects the first Python kernel
# by display name ("Python 3 (ipykernel)" sorts before "Python 3 (warden)"), whatever
# the default is, and a cell run there would bypass warden entirely.
cmd=(.venv/bin/jupyter lab --notebook-dir "$work" --ip 127.0.0.1 --no-browser
     --MappingKernelManager.default_kernel_name=warden --KernelSpecManager.allowed_kernelspecs=warden
     "${extra[@]}" "$@")
echo "      open quickstart.ipynb in the page whose URL JupyterLab prints below"
if [ -n "${WARDEN_RUN_DRY:-}" ]; then
  printf '%q ' "${cmd[@]}"
  echo
  exit 0
fi
cd "$root"
exec "${cmd[@]}"
