#!/usr/bin/env bash
# What applications see through a failover: HAProxy + Patroni (the classic
# setup: `option httpchk OPTIONS /primary`, inter 3s fall 3 rise 2,
# on-marked-down shutdown-sessions) versus pgkeel, with the same nine
# clients (examples/failover_workload.rs), the same cluster (synchronous
# mode, Patroni ttl 10 / loop_wait 2) and the same events: a planned
# switchover and a SIGKILL of the leader.
#
#   benches/failover-compare.sh          ROUNDS=1, results in benches/results/failover.md
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ROUNDS=${ROUNDS:-1}
OUT=${OUT:-benches/results/failover.md}
HAPROXY_PORT=${HAPROXY_PORT:-25430}
PGKEEL_PORT=${PGKEEL_PORT:-25440}
export PGKEEL_CLUSTER_DIR=${PGKEEL_CLUSTER_DIR:-/tmp/pgkeel-failover-compare}
export PGKEEL_SCOPE=compare PGKEEL_ETCD_PORT=23790 PGKEEL_ETCD_PEER_PORT=23791
export PGKEEL_PG_PORTS="25431 25432 25433" PGKEEL_API_PORTS="28008 28009 28010"
export PGKEEL_SYNC_MODE=true PGKEEL_WITH_PROXY=0
read -r -a PG <<< "$PGKEEL_PG_PORTS"
read -r -a API <<< "$PGKEEL_API_PORTS"

install_packages haproxy
cargo build --release --bin pgkeel --example failover_workload
WORKLOAD=target/release/examples/failover_workload
cleanup() {
    [ -n "${HAPROXY_PID:-}" ] && kill "$HAPROXY_PID" 2>/dev/null || true
    [ -n "${PGKEEL_PID:-}" ] && kill "$PGKEEL_PID" 2>/dev/null || true
    scripts/cluster.sh down --purge >/dev/null 2>&1 || true
}
trap cleanup EXIT

section "cluster"
scripts/cluster.sh up

mkdir -p "$PGKEEL_CLUSTER_DIR"
cat > "$PGKEEL_CLUSTER_DIR/haproxy.cfg" <<CFG
global
    maxconn 1000
defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s
listen primary
    bind 127.0.0.1:$HAPROXY_PORT
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
    server pg1 127.0.0.1:${PG[0]} maxconn 100 check port ${API[0]}
    server pg2 127.0.0.1:${PG[1]} maxconn 100 check port ${API[1]}
    server pg3 127.0.0.1:${PG[2]} maxconn 100 check port ${API[2]}
CFG
haproxy -f "$PGKEEL_CLUSTER_DIR/haproxy.cfg" >"$PGKEEL_CLUSTER_DIR/haproxy.log" 2>&1 &
HAPROXY_PID=$!

cat > "$PGKEEL_CLUSTER_DIR/pgkeel-compare.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PGKEEL_PORT"
pool_size = 20
[admin]
listen = ""
[log]
level = "warn"
[health]
user = "postgres"
password = "postgres"
interval = "500ms"
[etcd]
endpoints = ["http://127.0.0.1:$PGKEEL_ETCD_PORT"]
scope = "$PGKEEL_SCOPE"
[[users]]
name = "app"
password = "app_password"
TOML
target/release/pgkeel --config "$PGKEEL_CLUSTER_DIR/pgkeel-compare.toml" >"$PGKEEL_CLUSTER_DIR/pgkeel-compare.log" 2>&1 &
PGKEEL_PID=$!
TIMEOUT=30 wait_for pg_isready -h 127.0.0.1 -p "$HAPROXY_PORT"
TIMEOUT=30 wait_for pg_isready -h 127.0.0.1 -p "$PGKEEL_PORT"

restore() {
    for n in pg1 pg2 pg3; do scripts/cluster.sh start-member "$n"; done
    scripts/cluster.sh wait-healthy
    sleep 8 # let HAProxy mark the servers up again (rise 2 x inter 3s)
}

RESULTS="$PGKEEL_CLUSTER_DIR/results.tsv"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
    for target in haproxy pgkeel; do
        port=$HAPROXY_PORT; [ "$target" = pgkeel ] && port=$PGKEEL_PORT
        for event in switchover kill-leader; do
            restore
            section "round $round: $target, $event"
            line=$($WORKLOAD --url "host=127.0.0.1 port=$port user=app password=app_password dbname=app connect_timeout=5" \
                --action "scripts/cluster.sh $event >/dev/null" --after 3 --for 25)
            echo "$line"
            printf '%s\t%s\t%s\n' "$target" "$event" "$line" >> "$RESULTS"
        done
    done
done

mkdir -p "$(dirname "$OUT")"
python3 - "$RESULTS" "$ROUNDS" > "$OUT" <<'PY'
import json, sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    target, event, js = line.rstrip("\n").split("\t", 2)
    rows.setdefault((event, target), []).append(json.loads(js))
print(f"# What 9 application clients see through a failover (median of {sys.argv[2]} run(s) each)\n")
print("| event | through | clients with errors | errors | broken connections | longest time without a successful write | acknowledged writes missing |")
print("|---|---|---:|---:|---:|---:|---:|")
for (event, target), runs in sorted(rows.items()):
    med = lambda k: statistics.median(r[k] for r in runs if r[k] is not None) if any(r[k] is not None for r in runs) else "?"
    print(f"| {event} | {'HAProxy' if target == 'haproxy' else 'pgkeel'} | {med('clients_with_errors')} of 9 | {med('errors')} | {med('broken_connections')} | {med('seconds_without_a_write')} s | {med('acknowledged_writes_missing')} |")
PY
section "results ($OUT)"
cat "$OUT"
