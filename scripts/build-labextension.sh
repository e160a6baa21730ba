#!/usr/bin/env bash
# Builds the JupyterLab extension (labextension/ -> kernel/warden/labextension/, shipped in
# the wheel) and registers it, with the server extension, in .venv. Called by
# scripts/bootstrap.sh. Idempotent and quiet when up to date: it rebuilds only when a
# hash of the sources (and of the JupyterLab it builds against) changed. Needs node and
# npm (scripts/install-system-deps.sh); only the npm registry is contacted (`npm ci`).
set -euo pipefail
cd "$(dirname "$0")/.."
ext=labextension
out=kernel/warden/labextension
venv_share=.venv/share/jupyter/labextensions/jupyterlab-warden
server_conf=.venv/etc/jupyter/jupyter_server_config.d/warden.json

if ! command -v npm >/dev/null 2>&1; then
  echo "build-labextension: npm not found; the JupyterLab extension is not built (scripts/install-system-deps.sh installs node and npm)" >&2
  exit 0
fi
# The core packages the extension shares with JupyterLab come from the installed lab.
core=$(.venv/bin/python -c 'import jupyterlab, os; print(os.path.join(os.path.dirname(jupyterlab.__file__), "staging"))')

hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# 1. node_modules from the lock file, again only when the lock changed.
lock_hash=$(hash_of $ext/package.json $ext/package-lock.json)
if [ ! -f $ext/node_modules/.warden-lock ] || [ "$(cat $ext/node_modules/.warden-lock)" != "$lock_hash" ]; then
  echo "build-labextension: npm ci (first time: about a minute)"
  (cd $ext && npm ci --silent --no-audit --no-fund >/dev/null)
  echo "$lock_hash" > $ext/node_modules/.warden-lock
fi

# 2. the build, when sources or the lab changed (or the output is gone).
src_hash=$(hash_of $ext/package.json $ext/package-lock.json $ext/tsconfig.json $ext/src/* $ext/style/* "$core/package.json")
stamp=$out/.warden-src-hash
if [ ! -f $out/package.json ] || [ ! -f $stamp ] || [ "$(cat $stamp)" != "$src_hash" ]; then
  echo "build-labextension: building $out"
  rm -rf $ext/lib $ext/tsconfig.tsbuildinfo
  log=$(mktemp)
  # webpack is chatty: its output is shown only when the build fails
  if ! (cd $ext && node_modules/.bin/tsc && node node_modules/@jupyterlab/builder/lib/build-labextension.js --core-path "$core" .) >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "build-labextension: the build failed" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$src_hash" > $stamp
fi

# 3. registration in .venv: JupyterLab finds prebuilt extensions in share/jupyter/labextensions
# (a link, so a rebuild needs no reinstall); the server extension is enabled by config.
if [ "$(readlink $venv_share 2>/dev/null)" != "$PWD/$out" ]; then
  mkdir -p "$(dirname $venv_share)"
  rm -rf $venv_share
  ln -s "$PWD/$out" $venv_share
fi
if [ ! -f $server_conf ]; then
  mkdir -p "$(dirname $server_conf)"
  cp jupyter-config/jupyter_server_config.d/warden.json $server_conf
fi
