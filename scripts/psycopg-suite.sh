#!/usr/bin/env bash
# Runs psycopg 3's own test suite (its pure-Python libpq wrapper) through
# pgkeel, the way an application would meet it: one PostgreSQL 15 of the
# script's own, pgkeel in front of it in static mode (pool_size 20), and the
# suite run once per mode. Prints one line per mode:
#   <mode>: N passed, N failed, N skipped
#
#   scripts/psycopg-suite.sh [MODE...] [-- PYTEST_ARGS...]
#
#   MODE          direct (PostgreSQL itself, the baseline), transaction,
#                 session; default: all three
#   PYTEST_ARGS   appended to pytest's, e.g. -- tests/test_notify.py -k enum
#
# Environment:
#   PSYCOPG_SUITE_GIT_DIR  a git dir of github.com/psycopg/psycopg holding
#                          the pinned commit (else the script fetches it)
#   PSYCOPG_SUITE_CACHE    source, venv and runs   (/tmp/pgkeel-psycopg-suite)
#   PSYCOPG_SUITE_JOBS     pytest-xdist workers    (2)
#   PGKEEL_BIN             the pgkeel binary       (target/release/pgkeel,
#                          built when missing)
# Each mode's failed test ids and the full pytest log are kept under
# $PSYCOPG_SUITE_CACHE/runs/<time>/<mode>/. The last result is recorded in
# docs/psycopg-suite.md. Not part of CI: a run takes tens of minutes on two
# cores and PyPI's psycopg sdist does not carry the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

# psycopg master after 3.3.4 (3.3.5.dev1): the suite tests the psycopg it
# installs from this same tree.
PSYCOPG_REV=c079c37c959a89a8684a3d3858cbaff7e5543e71
TEST_DEPS=("pytest==8.4.2" "pytest-xdist==3.8.0" "pytest-timeout==2.4.0"
    "anyio==4.16.0" "pproxy==2.7.9" "dnspython==2.9.2" "packaging==26.3")

CACHE=${PSYCOPG_SUITE_CACHE:-/tmp/pgkeel-psycopg-suite}
JOBS=${PSYCOPG_SUITE_JOBS:-2}
PGKEEL_BIN=${PGKEEL_BIN:-target/release/pgkeel}

modes=() extra=()
while [ $# -gt 0 ]; do
    case $1 in
        --) shift; extra=("$@"); break ;;
        direct|transaction|session) modes+=("$1") ;;
        *) echo "usage: $0 [direct|transaction|session]... [-- pytest args]" >&2; exit 2 ;;
    esac
    shift
done
[ ${#modes[@]} -gt 0 ] || modes=(direct transaction session)

mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)
SRC="$CACHE/src-${PSYCOPG_REV:0:8}"
VENV="$CACHE/venv-${PSYCOPG_REV:0:8}"
RUN="$CACHE/runs/$(date +%Y%m%d-%H%M%S)-$$"
mkdir -p "$RUN"
chmod 755 "$RUN"

# ------------------------------------------------------- psycopg and a venv
prepare() {
    exec 9>"$CACHE/.lock"
    flock 9
    if [ ! -f "$SRC/.ready" ]; then
        local git_dir=${PSYCOPG_SUITE_GIT_DIR:-$CACHE/git}
        if ! git --git-dir="$git_dir" cat-file -e "$PSYCOPG_REV^{commit}" 2>/dev/null; then
            git init -q --bare "$git_dir"
            git --git-dir="$git_dir" fetch -q --depth 1 https://github.com/psycopg/psycopg.git "$PSYCOPG_REV"
        fi
        rm -rf "$SRC" && mkdir -p "$SRC"
        git --git-dir="$git_dir" archive "$PSYCOPG_REV" | tar -x -C "$SRC"
        touch "$SRC/.ready"
    fi
    if [ ! -f "$VENV/.ready" ]; then
        rm -rf "$VENV"
        python3 -m venv "$VENV"
        "$VENV/bin/pip" install -q --disable-pip-version-check "${TEST_DEPS[@]}"
        # Not editable: the tree's psycopg/ directory would shadow it.
        "$VENV/bin/pip" install -q --disable-pip-version-check "$SRC/psycopg"
        rm -rf "$SRC/psycopg/build"
        touch "$VENV/.ready"
    fi
    flock -u 9
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ------------------------------------------------------- PostgreSQL 15
PGDIR=$(mktemp -d /tmp/pgkeel-psycopg-pg.XXXXXX)
chmod 755 "$PGDIR"
chown postgres: "$PGDIR" 2>/dev/null || true
PG_PORT=$(free_port)
PGKEEL_PID=""
cleanup() {
    [ -n "$PGKEEL_PID" ] && kill "$PGKEEL_PID" 2>/dev/null && wait "$PGKEEL_PID" 2>/dev/null
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDIR/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$PGDIR"
}
trap cleanup EXIT

start_postgres() {
    echo postgres > "$PGDIR/pw"
    as_postgres "$PG_BIN/initdb" -D "$PGDIR/data" -U postgres --pwfile="$PGDIR/pw" \
        --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C >/dev/null
    # The suite's own needs: two-phase commit tests, and room for its clients.
    as_postgres "$PG_BIN/pg_ctl" -D "$PGDIR/data" -l "$PGDIR/postgres.log" -w start \
        -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $PGDIR -c max_prepared_transactions=10 -c max_connections=200" >/dev/null
    as_postgres psql -h "$PGDIR" -p "$PG_PORT" -U postgres -q \
        -c "CREATE ROLE psycopg LOGIN SUPERUSER PASSWORD 'psycopg'" \
        -c "CREATE DATABASE psycopg_test OWNER psycopg"
}

start_pgkeel() { # mode
    local port admin
    port=$(free_port) admin=$(free_port)
    cat > "$PGDIR/pgkeel-$1.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
pool_mode = "$1"
pool_size = 20
[admin]
listen = "127.0.0.1:$admin"
[health]
user = "postgres"
password = "postgres"
[[users]]
name = "psycopg"
password = "psycopg"
[[servers]]
host = "127.0.0.1"
port = $PG_PORT
TOML
    "$PGKEEL_BIN" --config "$PGDIR/pgkeel-$1.toml" > "$RUN/$1/pgkeel.log" 2>&1 &
    PGKEEL_PID=$!
    TIMEOUT=30 wait_for pg_isready -h 127.0.0.1 -p "$port" || { echo "pgkeel did not start: $RUN/$1/pgkeel.log" >&2; exit 1; }
    DSN="host=127.0.0.1 port=$port user=psycopg password=psycopg dbname=psycopg_test"
}

stop_pgkeel() {
    kill "$PGKEEL_PID" 2>/dev/null || true
    wait "$PGKEEL_PID" 2>/dev/null || true
    PGKEEL_PID=""
}

# ------------------------------------------------------- one run
run_suite() { # mode dsn
    local out="$RUN/$1" args
    args=(-q -rfE -p pgkeel_suite_plugin -o cache_dir="$out/.pytest_cache" --timeout=30 --junitxml="$out/junit.xml" -o junit_family=xunit1
        --test-dsn "$2" -m "not mypy" --ignore=tests/pool --ignore=tests/crdb
        # they wait for addresses on the internet to time out:
        --deselect tests/test_connection.py::test_connect_error_multi_hosts_each_message_preserved
        --deselect tests/test_connection_async.py::test_connect_error_multi_hosts_each_message_preserved
        # races against its own proxy even without pgkeel:
        --deselect tests/test_waiting.py::test_wait_remote_closed
        --deselect tests/test_waiting_async.py::test_wait_remote_closed)
    [ "$JOBS" -gt 0 ] && args+=(-n "$JOBS")
    local target=tests
    for a in "${extra[@]}"; do case $a in tests|tests/*) target="" ;; esac; done
    (cd "$SRC" && PSYCOPG_IMPL=python PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$CACHE/plugin" \
        timeout -s INT -k 60 1800 "$VENV/bin/python" -m pytest "${args[@]}" "${extra[@]}" $target) \
        > "$out/pytest.log" 2>&1 || true
    "$VENV/bin/python" - "$out/junit.xml" "$out/failed.txt" <<'PY'
import sys, xml.etree.ElementTree as ET
passed = failed = skipped = 0
seen = {}
for case in ET.parse(sys.argv[1]).iter("testcase"):
    name = f'{case.get("classname")}::{case.get("name")}'
    tags = {c.tag for c in case}
    out = "failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed"
    if seen.get(name) != "failed":
        seen[name] = out
with open(sys.argv[2], "w") as f:
    for name, out in sorted(seen.items()):
        if out == "failed":
            print(name, file=f)
c = {k: list(seen.values()).count(k) for k in ("passed", "failed", "skipped")}
print(f'{c["passed"]} passed, {c["failed"]} failed, {c["skipped"]} skipped')
PY
}

# psycopg's conftest refuses to run after a run that never finished (its
# segfault guard); under pytest-xdist every worker sees the flag the
# controller just set. Each run here has a fresh cache, so the guard is off.
write_plugin() {
    mkdir -p "$CACHE/plugin"
    cat > "$CACHE/plugin/pgkeel_suite_plugin.py" <<'PY'
import pytest


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    cache = getattr(config, "cache", None)
    if cache is not None:
        get, set_ = cache.get, cache.set
        cache.get = lambda k, d: False if k == "segfault" else get(k, d)
        cache.set = lambda k, v: None if k == "segfault" else set_(k, v)
PY
}

prepare
write_plugin
if [ ! -x "$PGKEEL_BIN" ]; then cargo build --release; fi
start_postgres
for mode in "${modes[@]}"; do
    mkdir -p "$RUN/$mode"
    if [ "$mode" = direct ]; then
        DSN="host=127.0.0.1 port=$PG_PORT user=psycopg password=psycopg dbname=psycopg_test"
    else
        start_pgkeel "$mode"
    fi
    echo "$mode: $(run_suite "$mode" "$DSN")   (failed ids: $RUN/$mode/failed.txt)"
    [ "$mode" = direct ] || stop_pgkeel
done
