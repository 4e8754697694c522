#!/usr/bin/env bash
# Installs the real drivers that tests/it/drivers.rs runs through pgkeel:
# Java with Debian's PostgreSQL JDBC driver, Node.js with npm and the
# packages locked in tests/drivers/node, and a venv in target/drivers-venv
# with the Python drivers pinned in tests/drivers/python/requirements.txt.
# Idempotent and quiet when everything is there; scripts/test.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# `java Scenario.java` compiles the source itself: it needs a JDK, not a JRE.
install_packages default-jdk-headless libpostgresql-jdbc-java postgresql-client-15

# A machine may already have Node.js from elsewhere (its own npm with it);
# Debian's packages only where there is none.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    install_packages nodejs npm
fi

venv=target/drivers-venv
if ! "$venv/bin/python" -c 'import sys' >/dev/null 2>&1; then
    section "Python drivers' venv in $venv"
    rm -rf "$venv"
    # Debian's python3 has no venv module without python3-venv.
    python3 -m venv "$venv" 2>/dev/null || {
        rm -rf "$venv"
        install_packages python3-venv
        python3 -m venv "$venv"
    }
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/drivers/python/requirements.txt

# npm ci starts from nothing each time: only when the lock changed.
node_dir=tests/drivers/node
if [ ! -f "$node_dir/node_modules/.package-lock.json" ] ||
    [ "$node_dir/package-lock.json" -nt "$node_dir/node_modules/.package-lock.json" ]; then
    section "npm ci in $node_dir"
    (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error)
fi

# The PgBouncer exporter the console's compatibility test scrapes pgkeel
# with (its own venv: it pins old versions of what the drivers use).
exporter=target/exporter-venv
if ! "$exporter/bin/pgbouncer-exporter" --help >/dev/null 2>&1; then
    section "PgBouncer exporter's venv in $exporter"
    rm -rf "$exporter"
    python3 -m venv "$exporter"
    "$exporter/bin/pip" install --quiet --disable-pip-version-check --no-deps -r tests/console/exporter-requirements.txt
fi
