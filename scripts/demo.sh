#!/usr/bin/env bash
# Runs pgkeel on 127.0.0.1:54320 in front of one local PostgreSQL 15.
#   scripts/demo.sh up       install what is missing, build, start, print how to connect
#   scripts/demo.sh status   what runs
#   scripts/demo.sh down     stop everything (add --purge to delete the data)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DIR=${PGKEEL_DEMO_DIR:-/tmp/pgkeel-demo}
PG_PORT=${PGKEEL_DEMO_PG_PORT:-5431}
LISTEN=${PGKEEL_LISTEN:-0.0.0.0:54320}
ADMIN=${PGKEEL_ADMIN:-127.0.0.1:9930}

pg_running() { [ -f "$DIR/data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1; }

up() {
    install_packages postgresql-15 postgresql-client-15 ca-certificates "${BUILD_PACKAGES[@]}"
    section "building pgkeel"
    cargo build --release
    mkdir -p "$DIR"
    chown postgres: "$DIR" 2>/dev/null || true
    if [ ! -d "$DIR/data" ]; then
        section "initdb $DIR/data"
        echo postgres > "$DIR/pw"
        chown postgres: "$DIR/pw" 2>/dev/null || true
        as_postgres "$PG_BIN/initdb" -D "$DIR/data" -U postgres --pwfile="$DIR/pw" \
            --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C >/dev/null
        rm -f "$DIR/pw"
    fi
    if ! pg_running; then
        section "starting PostgreSQL on 127.0.0.1:$PG_PORT"
        as_postgres "$PG_BIN/pg_ctl" -D "$DIR/data" -l "$DIR/data/postgres.log" -w start \
            -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $DIR" >/dev/null
        as_postgres psql -h "$DIR" -p "$PG_PORT" -U postgres -qtAc \
            "SELECT 1 FROM pg_roles WHERE rolname = 'app'" | grep -q 1 ||
            as_postgres psql -h "$DIR" -p "$PG_PORT" -U postgres -q \
                -c "CREATE ROLE app LOGIN PASSWORD 'app_password'" -c "CREATE DATABASE app OWNER app"
    fi
    {
        pgkeel_config_head "$LISTEN" "$ADMIN"
        cat <<TOML
[[users]]
name = "app"
password = "app_password"
[[servers]]
host = "127.0.0.1"
port = $PG_PORT
TOML
        pgkeel_config_admin_user
    } > "$DIR/pgkeel.toml"
    start_pgkeel "$LISTEN"
    local port=${LISTEN##*:}
    cat <<MSG

pgkeel is running on $LISTEN in front of PostgreSQL on 127.0.0.1:$PG_PORT.
  connect:  psql "postgres://app:app_password@127.0.0.1:$port/app"
  console:  PGPASSWORD=admin_password psql -h 127.0.0.1 -p $port -U admin pgkeel   (SHOW POOLS, SHOW HELP)
  metrics:  curl http://$ADMIN/metrics     status: curl http://$ADMIN/status
  logs:     $DIR/pgkeel.log
  stop:     scripts/demo.sh down
MSG
}

down() {
    stop_pgkeel
    if pg_running; then
        as_postgres "$PG_BIN/pg_ctl" -D "$DIR/data" -m fast -w stop >/dev/null
    fi
    if [ "${1:-}" = "--purge" ]; then
        rm -rf "$DIR"
    fi
    echo "stopped"
}

status() {
    pg_running && echo "PostgreSQL: running on 127.0.0.1:$PG_PORT" || echo "PostgreSQL: stopped"
    pgkeel_running && echo "pgkeel: running (pid $(cat "$DIR/pgkeel.pid")) on $LISTEN" || echo "pgkeel: stopped"
}

case "${1:-up}" in
    up) up ;;
    down) shift; down "$@" ;;
    status) status ;;
    *) echo "usage: $0 up|down [--purge]|status" >&2; exit 2 ;;
esac
