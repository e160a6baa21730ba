#!/usr/bin/env bash
# Install the system packages warden's tests need (Debian/Ubuntu). Idempotent.
#
#   sudo scripts/install-system-deps.sh
#
# Quiet when everything is present. As root it installs what is missing
# (one `apt-get update`, then one `apt-get install`); as another user it prints
# what to install and exits 1.
#
# To add a dependency: write a `have_<name>` check and append
# "<check>:<apt package>" to DEPS.
set -euo pipefail

# PostgreSQL server binaries where tests/pgserver.py looks for them.
have_postgres_server() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
        [[ -x $d/initdb && -x $d/pg_ctl && -x $d/postgres ]] && return 0
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
        && command -v postgres >/dev/null 2>&1
}

# node and npm: configurable-http-proxy (JupyterHub's proxy) for tests/test_jupyterhub.py.
have_node() { command -v node >/dev/null 2>&1; }
have_npm() { command -v npm >/dev/null 2>&1; }

# Chromium for the screenshot test (tests/test_screenshots.py drives /usr/bin/chromium
# with Playwright; the browser comes from Debian, never from `playwright install`).
have_chromium() { [[ -x /usr/bin/chromium ]]; }

# libpq's headers, for the C extension warden.gateway._pgcopy (PostgreSQL's binary COPY
# decoded into Arrow; without it every PostgreSQL result is read through ADBC).
have_libpq_dev() { [[ -f /usr/include/postgresql/libpq-fe.h ]] || command -v pg_config >/dev/null 2>&1; }

# "<check function>:<apt package>", one per dependency.
DEPS=(
    "have_postgres_server:postgresql"
    "have_node:nodejs"
    "have_npm:npm"
    "have_chromium:chromium"
    "have_libpq_dev:libpq-dev"
)

missing=()
for dep in "${DEPS[@]}"; do
    check=${dep%%:*}
    pkg=${dep#*:}
    "$check" || missing+=("$pkg")
done

((${#missing[@]} == 0)) && exit 0

if [[ $(id -u) -ne 0 ]]; then
    echo "install-system-deps: missing system packages: ${missing[*]}" >&2
    echo "  run as root: apt-get update && apt-get install -y ${missing[*]}" >&2
    echo "  (or: sudo $0)" >&2
    exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: apt-get not found; install these yourself: ${missing[*]}" >&2
    exit 1
fi

echo "install-system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y "${missing[@]}"

# Check again: a package that installed but still fails its check is an error.
for dep in "${DEPS[@]}"; do
    check=${dep%%:*}
    "$check" || { echo "install-system-deps: ${dep#*:} installed but check $check fails" >&2; exit 1; }
done
