#!/usr/bin/env bash
# A local Patroni cluster (etcd + three PostgreSQL 15 members) with pgkeel in
# front, all on 127.0.0.1. PostgreSQL and Patroni run as `postgres`.
#
#   scripts/cluster.sh up                  install what is missing, build, start, wait, print how to connect
#   scripts/cluster.sh status              patronictl list, and what runs
#   scripts/cluster.sh switchover [NAME]   planned switchover (to NAME, or any replica)
#   scripts/cluster.sh kill-leader         SIGKILL the leader's Patroni and PostgreSQL
#   scripts/cluster.sh kill-member NAME    SIGKILL one member's Patroni and PostgreSQL
#   scripts/cluster.sh reinit-member NAME  rebuild a member from the leader (patronictl reinit)
#   scripts/cluster.sh reinit-stragglers   the same for every member that is neither leader nor a replica
#   scripts/cluster.sh pause-leader        SIGSTOP the leader's Patroni and PostgreSQL until another
#                                          member holds the leader key, then SIGCONT (a frozen host)
#   scripts/cluster.sh start-member NAME   start a stopped member again (it rejoins as a replica)
#   scripts/cluster.sh stop-etcd | start-etcd
#   scripts/cluster.sh wait-healthy        until one leader and every member streaming
#   scripts/cluster.sh leader              print the leader's name
#   scripts/cluster.sh down [--purge]      stop everything (--purge deletes the data)
#
# Settings (environment), defaults in brackets; tests use other ports and dirs:
#   PGKEEL_CLUSTER_DIR [/tmp/pgkeel-cluster]  PGKEEL_SCOPE [demo]
#   PGKEEL_ETCD_PORT [2379] PGKEEL_ETCD_PEER_PORT [+1] PGKEEL_PG_PORTS ["5431 5432 5433"]
#   PGKEEL_API_PORTS ["8008 8009 8010"]      PGKEEL_LISTEN [0.0.0.0:54320]  PGKEEL_ADMIN [127.0.0.1:9930]
#   PGKEEL_TTL [10] PGKEEL_LOOP_WAIT [2] PGKEEL_RETRY_TIMEOUT [4]  PGKEEL_SYNC_MODE [false]
#   PGKEEL_WITH_PROXY [1]: 0 starts the cluster without pgkeel
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DIR=${PGKEEL_CLUSTER_DIR:-/tmp/pgkeel-cluster}
SCOPE=${PGKEEL_SCOPE:-demo}
ETCD_PORT=${PGKEEL_ETCD_PORT:-2379}
ETCD_PEER_PORT=${PGKEEL_ETCD_PEER_PORT:-$((ETCD_PORT + 1))}
read -r -a PG_PORTS <<< "${PGKEEL_PG_PORTS:-5431 5432 5433}"
read -r -a API_PORTS <<< "${PGKEEL_API_PORTS:-8008 8009 8010}"
LISTEN=${PGKEEL_LISTEN:-0.0.0.0:54320}
ADMIN=${PGKEEL_ADMIN:-127.0.0.1:9930}
TTL=${PGKEEL_TTL:-10}
LOOP_WAIT=${PGKEEL_LOOP_WAIT:-2}
RETRY_TIMEOUT=${PGKEEL_RETRY_TIMEOUT:-4}
SYNC_MODE=${PGKEEL_SYNC_MODE:-false}
WITH_PROXY=${PGKEEL_WITH_PROXY:-1}
NAMES=(pg1 pg2 pg3)
ETCD_URL="http://127.0.0.1:$ETCD_PORT"
export ETCDCTL_API=3

etcdctl_() { etcdctl --endpoints="$ETCD_URL" "$@"; }
member_index() { local i; for i in "${!NAMES[@]}"; do [ "${NAMES[$i]}" = "$1" ] && { echo "$i"; return; }; done; echo "no member $1" >&2; return 1; }
leader() { etcdctl_ get --print-value-only "/service/$SCOPE/leader" 2>/dev/null | head -1; }
# `|| true`: under pipefail a member with no Patroni (killed, never started)
# would otherwise end the script, and `down` would leave the rest running.
patroni_pid() { pgrep -o -f "patroni $DIR/$1/patroni.yml" || true; }
pg_pid() { head -1 "$DIR/$1/data/postmaster.pid" 2>/dev/null || true; }
etcd_running() { [ -f "$DIR/etcd.pid" ] && kill -0 "$(cat "$DIR/etcd.pid")" 2>/dev/null; }

start_etcd() {
    etcd_running && return 0
    mkdir -p "$DIR/etcd"
    nohup etcd --name etcd1 --data-dir "$DIR/etcd" \
        --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "etcd1=http://127.0.0.1:$ETCD_PEER_PORT" \
        >"$DIR/etcd.log" 2>&1 &
    echo $! > "$DIR/etcd.pid"
    TIMEOUT=20 wait_for etcdctl_ endpoint health || { echo "etcd did not start; see $DIR/etcd.log" >&2; exit 1; }
}

stop_etcd() {
    if etcd_running; then
        kill -TERM "$(cat "$DIR/etcd.pid")" 2>/dev/null || true
        TIMEOUT=10 wait_for bash -c "! kill -0 $(cat "$DIR/etcd.pid") 2>/dev/null" || kill -KILL "$(cat "$DIR/etcd.pid")" 2>/dev/null || true
    fi
    rm -f "$DIR/etcd.pid"
}

write_member_config() { # name index
    local n=$1 i=$2 d="$DIR/$1"
    mkdir -p "$d"
    cat > "$d/patroni.yml" <<YAML
scope: $SCOPE
namespace: /service/
name: $n
restapi:
  listen: 127.0.0.1:${API_PORTS[$i]}
  connect_address: 127.0.0.1:${API_PORTS[$i]}
etcd3:
  hosts: 127.0.0.1:$ETCD_PORT
bootstrap:
  dcs:
    ttl: $TTL
    loop_wait: $LOOP_WAIT
    retry_timeout: $RETRY_TIMEOUT
    maximum_lag_on_failover: 1048576
    synchronous_mode: $SYNC_MODE
    postgresql:
      use_pg_rewind: true
      parameters:
        password_encryption: scram-sha-256
        wal_level: replica
        hot_standby: "on"
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: "on"
        max_connections: 200
  initdb:
    - encoding: UTF8
    - locale: C
postgresql:
  # Written by Patroni into pg_hba.conf at every start (initdb's own file
  # trusts every local connection, which pgkeel's server_auth_allow
  # refuses by default, as a client should).
  pg_hba:
    - local all all trust
    - host replication replicator 127.0.0.1/32 scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
  listen: 127.0.0.1:${PG_PORTS[$i]}
  connect_address: 127.0.0.1:${PG_PORTS[$i]}
  data_dir: $d/data
  bin_dir: $PG_BIN
  pgpass: $d/pgpass
  authentication:
    superuser: {username: postgres, password: postgres}
    replication: {username: replicator, password: replicator_password}
    rewind: {username: rewinder, password: rewinder_password}
  parameters:
    unix_socket_directories: $d
    fsync: "off"
tags:
  nofailover: false
  noloadbalance: false
  clonefrom: false
  nosync: false
YAML
    chown -R postgres: "$d" 2>/dev/null || true
}

start_member() { # name
    local n=$1 i
    i=$(member_index "$n")
    [ -n "$(patroni_pid "$n")" ] && return 0
    [ -f "$DIR/$n/patroni.yml" ] || write_member_config "$n" "$i"
    # setpriv execs (no fork), so the process is Patroni itself; setsid keeps it
    # out of the caller's process group.
    if [ "$(id -u)" -eq 0 ]; then
        setsid setpriv --reuid postgres --regid postgres --init-groups --reset-env \
            env PATH=/usr/bin:/bin HOME="$DIR" patroni "$DIR/$n/patroni.yml" >"$DIR/$n/patroni.log" 2>&1 < /dev/null &
    else
        setsid patroni "$DIR/$n/patroni.yml" >"$DIR/$n/patroni.log" 2>&1 < /dev/null &
    fi
}

kill_member() { # name: SIGKILL Patroni and PostgreSQL, as a crash would
    local n=$1 p
    p=$(patroni_pid "$n"); [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
    p=$(pg_pid "$n"); [ -n "$p" ] && kill -KILL "$p" 2>/dev/null || true
    echo "killed $n"
}

pause_member() { # name: frozen until another member is the primary, as a stalled host would be
    local n=$1 pg pids l deadline=$((SECONDS + ${PGKEEL_PAUSE_TIMEOUT:-60}))
    pg=$(pg_pid "$n")
    # Every process of it: runuser and Patroni itself, the postmaster and its children.
    pids="$(pgrep -f "patroni $DIR/$n/patroni.yml" | tr '\n' ' ') $pg $(pgrep -P "$pg" | tr '\n' ' ')"
    # shellcheck disable=SC2086 # one pid per word
    kill -STOP $pids
    # Until another member leads and runs as the primary (only then is the
    # frozen one sure to be demoted when it wakes up).
    until l=$(leader) && [ -n "$l" ] && [ "$l" != "$n" ] &&
        curl -sf "http://127.0.0.1:${API_PORTS[$(member_index "$l")]}/primary" >/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            # shellcheck disable=SC2086
            kill -CONT $pids
            echo "no other member became the primary while $n was frozen" >&2
            return 1
        fi
        sleep 0.2
    done
    # shellcheck disable=SC2086
    kill -CONT $pids
    echo "paused $n until $l was the primary"
}

reinit_member() { # name: Patroni rebuilds it from the leader, for a member that cannot rejoin
    as_postgres patronictl -c "$DIR/$1/patroni.yml" reinit "$SCOPE" "$1" --force --wait >/dev/null
    echo "reinitialized $1"
}

reinit_stragglers() {
    local l n i
    l=$(leader)
    for n in "${NAMES[@]}"; do
        i=$(member_index "$n")
        [ "$n" = "$l" ] && continue
        curl -sf "http://127.0.0.1:${API_PORTS[$i]}/replica" >/dev/null && continue
        reinit_member "$n"
    done
}

stop_member() {
    local n=$1 p
    p=$(patroni_pid "$n")
    if [ -n "$p" ]; then
        kill -TERM "$p" 2>/dev/null || true
        TIMEOUT=30 wait_for bash -c "! kill -0 $p 2>/dev/null" || kill -KILL "$p" 2>/dev/null || true
    fi
    p=$(pg_pid "$n")
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then
        as_postgres "$PG_BIN/pg_ctl" -D "$DIR/$n/data" -m immediate stop >/dev/null 2>&1 || kill -KILL "$p" 2>/dev/null || true
    fi
}

# One leader whose API says it is the primary, and every member a streaming replica or the leader.
healthy() {
    local l n i ok=0
    l=$(leader); [ -n "$l" ] || return 1
    for n in "${NAMES[@]}"; do
        i=$(member_index "$n")
        if [ "$n" = "$l" ]; then
            curl -sf "http://127.0.0.1:${API_PORTS[$i]}/primary" >/dev/null || return 1
        else
            curl -sf "http://127.0.0.1:${API_PORTS[$i]}/replica" >/dev/null || return 1
            psql -h 127.0.0.1 -p "${PG_PORTS[$i]}" -U postgres -d postgres -tAc \
                "SELECT status FROM pg_stat_wal_receiver" 2>/dev/null | grep -q streaming || return 1
        fi
        ok=$((ok + 1))
    done
    [ "$ok" -eq "${#NAMES[@]}" ]
}

leader_moved_from() { local l; l=$(leader); [ -n "$l" ] && [ "$l" != "$1" ]; }

leader_port() { local i; i=$(member_index "$(leader)"); echo "${PG_PORTS[$i]}"; }

write_pgkeel_config() {
    {
        pgkeel_config_head "$LISTEN" "$ADMIN"
        cat <<TOML
[etcd]
endpoints = ["$ETCD_URL"]
namespace = "/service/"
scope = "$SCOPE"
[[users]]
name = "app"
password = "app_password"
TOML
        pgkeel_config_admin_user
    } > "$DIR/pgkeel.toml"
}

up() {
    install_packages postgresql-15 postgresql-client-15 etcd-server etcd-client patroni curl ca-certificates
    if [ "$WITH_PROXY" = 1 ]; then
        install_packages "${BUILD_PACKAGES[@]}"
        section "building pgkeel"
        cargo build --release --bin pgkeel
    fi
    mkdir -p "$DIR"
    chmod 755 "$DIR"
    section "etcd on $ETCD_URL"
    start_etcd
    section "Patroni members ${NAMES[*]} on ports ${PG_PORTS[*]} (REST ${API_PORTS[*]})"
    for n in "${NAMES[@]}"; do start_member "$n"; done
    PGPASSWORD=postgres TIMEOUT=${PGKEEL_UP_TIMEOUT:-120} wait_for healthy || {
        echo "the cluster did not become healthy; logs in $DIR/pg*/patroni.log" >&2
        exit 1
    }
    export PGPASSWORD=postgres
    psql -h 127.0.0.1 -p "$(leader_port)" -U postgres -d postgres -tAc "SELECT 1 FROM pg_roles WHERE rolname = 'app'" | grep -q 1 || {
        psql -h 127.0.0.1 -p "$(leader_port)" -U postgres -d postgres -q \
            -c "CREATE ROLE app LOGIN PASSWORD 'app_password'" -c "CREATE DATABASE app OWNER app"
    }
    echo "leader: $(leader)"
    if [ "$WITH_PROXY" = 1 ]; then
        write_pgkeel_config
        start_pgkeel "$LISTEN"
        cat <<MSG

A 3-member Patroni cluster runs (scope "$SCOPE", leader $(leader)), and pgkeel
listens on $LISTEN, following the leader through etcd.
  connect:     psql "postgres://app:app_password@127.0.0.1:${LISTEN##*:}/app"
  console:     PGPASSWORD=admin_password psql -h 127.0.0.1 -p ${LISTEN##*:} -U admin pgkeel   (SHOW POOLS, SHOW HELP)
  status:      scripts/cluster.sh status      curl http://$ADMIN/status
  failover:    scripts/cluster.sh switchover  |  scripts/cluster.sh kill-leader
  logs:        $DIR/pgkeel.log, $DIR/pg*/patroni.log
  stop:        scripts/cluster.sh down
MSG
    fi
}

down() {
    stop_pgkeel
    for n in "${NAMES[@]}"; do stop_member "$n"; done
    stop_etcd
    [ "${1:-}" = "--purge" ] && rm -rf "$DIR"
    echo "stopped"
}

status() {
    if etcd_running; then
        patronictl -c "$DIR/pg1/patroni.yml" list 2>/dev/null || echo "patronictl list failed"
    else
        echo "etcd: stopped"
    fi
    pgkeel_running && echo "pgkeel: running (pid $(cat "$DIR/pgkeel.pid")) on $LISTEN" || echo "pgkeel: not running"
}

switchover() {
    local l target=${1:-}
    l=$(leader)
    [ -n "$l" ] || { echo "no leader" >&2; exit 1; }
    # Without a candidate Patroni picks a valid one (in synchronous mode,
    # only the sync standby may take over).
    patronictl -c "$DIR/pg1/patroni.yml" switchover --leader "$l" ${target:+--candidate "$target"} --force
    TIMEOUT=30 wait_for leader_moved_from "$l" || {
        echo "switchover failed: $l is still the leader" >&2
        exit 1
    }
    echo "new leader: $(leader)"
}

# Stops the cluster once process PID has exited (tests use it so that a
# crashed test run still cleans up).
reap_after() {
    local pid=$1
    while kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
    # Best effort: called in a condition, down goes on past any step that fails.
    down --purge >/dev/null 2>&1 || true
}

cmd=${1:-up}
shift || true
case "$cmd" in
    up) up ;;
    down) down "$@" ;;
    status) status ;;
    switchover) switchover "$@" ;;
    kill-leader) kill_member "$(leader)" ;;
    kill-member) kill_member "$1" ;;
    pause-leader) pause_member "$(leader)" ;;
    reinit-member) reinit_member "$1" ;;
    reinit-stragglers) reinit_stragglers ;;
    start-member) start_member "$1" ;;
    stop-etcd) stop_etcd ;;
    start-etcd) start_etcd ;;
    wait-healthy) PGPASSWORD=postgres TIMEOUT=${PGKEEL_UP_TIMEOUT:-120} wait_for healthy ;;
    leader) leader ;;
    reap-after) reap_after "$1" ;;
    *) echo "usage: see the top of $0" >&2; exit 2 ;;
esac
