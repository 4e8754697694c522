# shellcheck shell=bash
# Shared helpers for pgkeel's scripts. Sourced, not run.

section() { printf '\n==== %s ====\n' "$*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# What building pgkeel needs beyond Rust: protoc and protobuf's .proto
# includes (etcd-client), libclang for bindgen and a C compiler (pg_query
# builds PostgreSQL's own parser).
BUILD_PACKAGES=(protobuf-compiler libprotobuf-dev libclang-dev clang)

# Installs the Debian packages named, if any is missing (one apt-get update).
install_packages() {
    local missing=()
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    section "installing ${missing[*]}"
    as_root apt-get update -qq
    # policy-rc.d keeps Debian from starting the services it installs: pgkeel's
    # scripts start their own servers on their own ports.
    local policy=/usr/sbin/policy-rc.d created=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
        as_root chmod +x "$policy"
        created=1
    fi
    local rc=0 had_pg=""
    dpkg -s postgresql-15 >/dev/null 2>&1 && had_pg=1
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" || rc=$?
    # Removed even when the install failed: left behind it would keep every
    # service on this machine from starting.
    [ -n "$created" ] && as_root rm -f "$policy"
    [ "$rc" -eq 0 ] || return "$rc"
    # Debian's postgresql package creates a cluster 15/main on port 5432 (which
    # policy-rc.d kept from starting). Drop it when this install created it, so
    # that a reboot cannot start it on a port the cluster script uses; an older
    # one may hold someone's data and is left alone.
    if [ -z "$had_pg" ] && [ -d /etc/postgresql/15/main ] && command -v pg_dropcluster >/dev/null; then
        as_root pg_dropcluster --stop 15 main || echo "warning: could not drop the packaged cluster 15/main" >&2
    fi
    return 0
}

ensure_rust_components() {
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
}

# shellcheck disable=SC2034 # used by the scripts that source this file
PG_BIN=/usr/lib/postgresql/15/bin

# Runs a command as the postgres user when we are root (PostgreSQL and
# Patroni refuse to run as root), as ourselves otherwise.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

# Waits until "$@" succeeds, polling every 0.2 s, for at most $TIMEOUT s (30).
wait_for() {
    local deadline=$((SECONDS + ${TIMEOUT:-30}))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.2
    done
}

# pgkeel's process, config and log live in $DIR (set by the calling script).
pgkeel_running() { [ -f "$DIR/pgkeel.pid" ] && kill -0 "$(cat "$DIR/pgkeel.pid")" 2>/dev/null; }

# The [proxy], [admin] and [health] part of the scripts' pgkeel configs.
pgkeel_config_head() { # listen admin
    cat <<TOML
# Written by scripts/$(basename "$0"). See config.toml for every key.
[proxy]
listen = "$1"
pool_mode = "transaction"
pool_size = 20
[admin]
listen = "$2"
users = ["admin"]
[health]
user = "postgres"
password = "postgres"
TOML
}

# The admin console's user (psql -U admin pgkeel), after the other [[users]].
pgkeel_config_admin_user() {
    cat <<TOML
[[users]]
name = "admin"
password = "admin_password"
TOML
}

# Starts target/release/pgkeel with $DIR/pgkeel.toml unless it runs, and
# waits until it accepts connections on the port of $1 (host:port).
start_pgkeel() {
    if ! pgkeel_running; then
        section "pgkeel on $1"
        nohup target/release/pgkeel --config "$DIR/pgkeel.toml" >"$DIR/pgkeel.log" 2>&1 &
        echo $! > "$DIR/pgkeel.pid"
    fi
    TIMEOUT=30 wait_for pg_isready -h 127.0.0.1 -p "${1##*:}" || {
        echo "pgkeel did not come up; see $DIR/pgkeel.log" >&2
        exit 1
    }
}

# Stops pgkeel (SIGTERM: it lets transactions finish).
stop_pgkeel() {
    if pgkeel_running; then
        kill -TERM "$(cat "$DIR/pgkeel.pid")" 2>/dev/null || true
        TIMEOUT=35 wait_for bash -c "! kill -0 $(cat "$DIR/pgkeel.pid") 2>/dev/null" || true
    fi
    rm -f "$DIR/pgkeel.pid"
}
