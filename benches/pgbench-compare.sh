#!/usr/bin/env bash
# Side-by-side pgbench: PostgreSQL direct vs PgBouncer vs pgkeel (split on,
# and split off) (all in transaction mode, same pool size), interleaved
# rounds in one run, because
# this machine is shared and noisy: compare the ratios, not the absolutes.
#
#   benches/pgbench-compare.sh            defaults below
#   DURATION=5 ROUNDS=1 benches/pgbench-compare.sh
#
# Knobs: DURATION (s per run, 10), ROUNDS (3), CLIENTS (20), POOL_SIZE (10),
# SCALE (10), WORKLOADS (space-separated names, all by default),
# PGBOUNCER (the pgbouncer binary; Debian's 1.18 cannot do -M prepared in
# transaction mode, so the prepared workloads need one >= 1.21, e.g. built
# from its repository: see benches/results/prepared.md),
# OUT (benches/results/latest.md), SKIP_BUILD=1, KEEP=1 (keep the work dir),
# PGKEEL_BIN (target/release/pgkeel), BASELINE (another pgkeel binary, e.g.
# built from an earlier commit: adds a "pgkeel-baseline" target, split on,
# to the same interleaved rounds, to measure a change), BASELINE_ENV
# (environment for the baseline instance only, e.g. "TOKIO_WORKER_THREADS=1"
# with BASELINE=target/release/pgkeel to compare runtime settings), IDLE_CLIENTS
# ("1000 10000": after the workloads, that many idle clients are opened
# against PgBouncer and pgkeel in turn, one query each, and the proxy's
# resident memory per idle client is reported; "" skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CLIENTS=${CLIENTS:-20}
POOL_SIZE=${POOL_SIZE:-10}
SCALE=${SCALE:-10}
OUT=${OUT:-benches/results/latest.md}
PG_PORT=${PG_PORT:-55432}
BOUNCER_PORT=${BOUNCER_PORT:-56432}
PGKEEL_PORT=${PGKEEL_PORT:-56433}
PGKEEL_NOSPLIT_PORT=${PGKEEL_NOSPLIT_PORT:-56434}
PGKEEL_BASELINE_PORT=${PGKEEL_BASELINE_PORT:-56435}
PGKEEL_BIN=${PGKEEL_BIN:-target/release/pgkeel}
ALL_WORKLOADS="select-simple select-extended select-prepared tpcb tpcb-prepared connect-per-txn single-client"
WORKLOADS=${WORKLOADS-$ALL_WORKLOADS}
IDLE_CLIENTS=${IDLE_CLIENTS-1000 10000}
# 10,000 idle clients need as many sockets in the proxy and in the client
# tool (PgBouncer inherits this limit; pgkeel raises its own).
ulimit -n "$(ulimit -Hn)"

install_packages postgresql-15 postgresql-client-15 pgbouncer ca-certificates
if [ -z "${SKIP_BUILD:-}" ]; then
    section "building pgkeel (release)"
    cargo build --release --bin pgkeel --example idle_clients
fi

# Other work on the machine skews every absolute number: say how busy it was.
LOAD_BEFORE=$(cut -d' ' -f1 /proc/loadavg)
if python3 -c "import sys; sys.exit(0 if float('$LOAD_BEFORE') > $(nproc) / 2 else 1)"; then
    echo "warning: load average $LOAD_BEFORE on $(nproc) cores: the machine is not quiet; compare ratios only" >&2
fi
WORK=$(mktemp -d /tmp/pgkeel-bench.XXXXXX)
chmod 755 "$WORK"
chown postgres: "$WORK" 2>/dev/null || true
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    [ -f "$WORK/data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    [ -z "${KEEP:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

section "PostgreSQL on 127.0.0.1:$PG_PORT"
echo bench > "$WORK/pw"; chown postgres: "$WORK/pw" 2>/dev/null || true
as_postgres "$PG_BIN/initdb" -D "$WORK/data" -U bench --pwfile="$WORK/pw" --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK -c max_connections=300 -c fsync=off -c synchronous_commit=off -c shared_buffers=256MB" >/dev/null
as_postgres psql -h "$WORK" -p "$PG_PORT" -U bench -d postgres -qc "CREATE DATABASE bench"
PGPASSWORD=bench pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1

section "PgBouncer on 127.0.0.1:$BOUNCER_PORT"
PGBOUNCER=${PGBOUNCER:-pgbouncer}
BOUNCER_VERSION=$("$PGBOUNCER" --version | head -1 | awk '{print $NF}')
PREPARED_LINE=""
# Prepared statements in transaction mode: PgBouncer 1.21 and later.
if [ "$(printf '%s\n1.21.0\n' "$BOUNCER_VERSION" | sort -V | head -1)" = 1.21.0 ]; then
    PREPARED_LINE="max_prepared_statements = 200"
fi
echo '"bench" "bench"' > "$WORK/userlist.txt"
cat > "$WORK/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL_SIZE
max_client_conn = 20000
logfile = $WORK/pgbouncer.log
pidfile = $WORK/pgbouncer.pid
$PREPARED_LINE
INI
chown -R postgres: "$WORK" 2>/dev/null || true
# runuser's login session resets the open-file limit: raise it again inside.
as_postgres bash -c "ulimit -n $(ulimit -Hn); exec \"\$0\" -d \"\$1\"" "$PGBOUNCER" "$WORK/pgbouncer.ini"
TIMEOUT=10 wait_for test -s "$WORK/pgbouncer.pid"
BOUNCER_PID=$(cat "$WORK/pgbouncer.pid")
PIDS+=("$BOUNCER_PID")

# Two pgkeel instances: as shipped (read/write split on: every statement is
# classified, and with no replica here reads fall back to the primary), and
# with read_write_split = false, so the difference is the split's cost.
start_pgkeel_bench() { # name port split [binary [env]] -> sets PID_<name>
    local name=$1 port=$2 split=$3 bin=${4:-$PGKEEL_BIN} env=${5:-}
    cat > "$WORK/$name.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
pool_mode = "transaction"
pool_size = $POOL_SIZE
max_client_connections = 20000
max_login_connections = 20000
[admin]
listen = ""
[log]
level = "warn"
[health]
user = "bench"
password = "bench"
database = "bench"
[routing]
read_write_split = $split
[[users]]
name = "bench"
password = "bench"
[[servers]]
host = "127.0.0.1"
port = $PG_PORT
TOML
    local pid=""
    if [ -x "$bin" ]; then
        # shellcheck disable=SC2086
        env $env "$bin" --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
        pid=$!
        PIDS+=("$pid")
        TIMEOUT=20 wait_for pg_isready -h 127.0.0.1 -p "$port" || { echo "$name did not start: see $WORK/$name.log"; pid=""; }
    else
        echo "pgkeel binary not available: its rows will say so"
    fi
    printf -v "PID_${name//-/_}" '%s' "$pid"
}
section "pgkeel on 127.0.0.1:$PGKEEL_PORT (split on) and :$PGKEEL_NOSPLIT_PORT (split off)"
start_pgkeel_bench pgkeel "$PGKEEL_PORT" true
start_pgkeel_bench pgkeel-nosplit "$PGKEEL_NOSPLIT_PORT" false
TARGETS=(direct pgbouncer pgkeel pgkeel-nosplit)
if [ -n "${BASELINE:-}" ]; then
    start_pgkeel_bench pgkeel-baseline "$PGKEEL_BASELINE_PORT" true "$BASELINE" "${BASELINE_ENV:-}"
    TARGETS+=(pgkeel-baseline)
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK=$(getconf CLK_TCK)

args_for() {
    case "$1" in
        select-simple) echo "-S -M simple -c $CLIENTS -j 2" ;;
        select-extended) echo "-S -M extended -c $CLIENTS -j 2" ;;
        select-prepared) echo "-S -M prepared -c $CLIENTS -j 2" ;;
        tpcb) echo "-c $CLIENTS -j 2" ;;
        # A thread per client: -M prepared prepares with a blocking
        # PQprepare, which with -j 2 would stall a thread's other clients
        # mid-transaction on the pool they fill (with any pooler).
        tpcb-prepared) echo "-M prepared -c $CLIENTS -j $CLIENTS" ;;
        connect-per-txn) echo "-S -C -c $CLIENTS -j 2" ;;
        single-client) echo "-S -c 1 -j 1" ;;
    esac
}

RAW="$WORK/raw.tsv"
: > "$RAW"
run_one() { # workload target port pid
    local w=$1 t=$2 port=$3 pid=$4 out before after cpu
    before=""; [ -n "$pid" ] && before=$(cpu_ticks "$pid")
    # shellcheck disable=SC2046
    if out=$(PGPASSWORD=bench timeout $((DURATION + 60)) pgbench -n $(args_for "$w") -T "$DURATION" -h 127.0.0.1 -p "$port" -U bench bench 2>&1); then :; else
        printf '%s\t%s\tfailed\t-\t-\n' "$w" "$t" >> "$RAW"
        echo "  $w $t: failed ($(echo "$out" | grep -m1 -iE 'error|fatal' || true))"
        return
    fi
    cpu="-"
    if [ -n "$pid" ]; then
        after=$(cpu_ticks "$pid")
        cpu=$(python3 -c "print(($after - $before) / $TICK)")
    fi
    local tps lat txns
    tps=$(echo "$out" | awk '/^tps = /{print $3; exit}')
    lat=$(echo "$out" | awk '/^latency average = /{print $4; exit}')
    txns=$(echo "$out" | awk '/number of transactions actually processed/{print $NF; exit}')
    local per="-"
    [ "$cpu" != "-" ] && per=$(python3 -c "print(round($cpu * 1e6 / max($txns, 1), 1))")
    printf '%s\t%s\t%s\t%s\t%s\n' "$w" "$t" "$tps" "$lat" "$per" >> "$RAW"
    echo "  $w $t: tps $tps, latency $lat ms, proxy CPU $per us/txn"
}

for w in $WORKLOADS; do
    section "$w ($(args_for "$w"), ${DURATION}s x $ROUNDS rounds)"
    for r in $(seq 1 "$ROUNDS"); do
        # Rotate the order each round so no target always runs first.
        for i in "${!TARGETS[@]}"; do
            t=${TARGETS[$(( (i + r - 1) % ${#TARGETS[@]} ))]}
            case $t in
                direct) run_one "$w" direct "$PG_PORT" "" ;;
                pgbouncer) run_one "$w" pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" ;;
                pgkeel|pgkeel-nosplit|pgkeel-baseline)
                    local_pid=PID_${t//-/_}
                    port=$PGKEEL_PORT; [ "$t" = pgkeel-nosplit ] && port=$PGKEEL_NOSPLIT_PORT
                    [ "$t" = pgkeel-baseline ] && port=$PGKEEL_BASELINE_PORT
                    if [ -n "${!local_pid}" ]; then run_one "$w" "$t" "$port" "${!local_pid}"
                    else printf '%s\t%s\tn/a\t-\t-\n' "$w" "$t" >> "$RAW"; fi ;;
            esac
        done
    done
done

# Idle clients: resident memory per client, PgBouncer and pgkeel in turn.
rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
IDLE_RAW="$WORK/idle.tsv"
: > "$IDLE_RAW"
IDLE_BIN=target/release/examples/idle_clients
for n in $IDLE_CLIENTS; do
    section "$n idle clients"
    for t in pgbouncer pgkeel; do
        case $t in
            pgbouncer) pid=$BOUNCER_PID port=$BOUNCER_PORT ;;
            pgkeel) pid=$PID_pgkeel port=$PGKEEL_PORT ;;
        esac
        [ -n "$pid" ] || continue
        before=$(rss_kb "$pid")
        # The tool answers "ready N errors E" once every client has had its
        # answer, then idles until its standard input closes.
        coproc IDLE { "$IDLE_BIN" --clients "$n" --url "host=127.0.0.1 port=$port user=bench password=bench dbname=bench" 2>"$WORK/idle.$t.$n.log"; }
        # Bash unsets the coproc's variables once it exits: keep them.
        idle_pid=$IDLE_PID idle_in=${IDLE[1]}
        read -r _ connected _ errors <&"${IDLE[0]}" || { connected=0; errors=$n; }
        after=$(rss_kb "$pid")
        eval "exec $idle_in>&-" 2>/dev/null || true
        wait "$idle_pid" 2>/dev/null || true
        per=$(python3 -c "print(round(($after - $before) / $n, 2))")
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$n" "$t" "$connected" "$errors" "$before" "$after" "$per" >> "$IDLE_RAW"
        echo "  $n idle clients, $t: $connected connected, $errors errors, RSS $before -> $after KiB, $per KiB per client"
    done
done

mkdir -p "$(dirname "$OUT")"
{
    echo "# pgbench: direct vs PgBouncer vs pgkeel"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); $(pgbench --version), PgBouncer $BOUNCER_VERSION, $($PG_BIN/postgres --version)."
    echo "Each cell is the median of $ROUNDS interleaved ${DURATION}s runs; $CLIENTS clients (-j 2) unless the workload says otherwise;"
    echo "pool size $POOL_SIZE for both proxies (transaction mode, SCRAM); scale $SCALE; pgbench, PostgreSQL and the proxy share the same $(nproc) cores."
    echo "Load average (1 min) before the run: $LOAD_BEFORE, after: $(cut -d' ' -f1 /proc/loadavg) (a quiet machine is near 0; above $(nproc), other work shared the cores and only the ratios mean anything)."
    echo
    python3 - "$RAW" <<'PY'
import sys, statistics, collections
rows = collections.OrderedDict()
for line in open(sys.argv[1]):
    w, t, tps, lat, cpu = line.rstrip("\n").split("\t")
    rows.setdefault(w, collections.OrderedDict()).setdefault(t, []).append((tps, lat, cpu))
def med(vals):
    nums = [float(v) for v in vals if v not in ("-", "failed", "n/a")]
    return statistics.median(nums) if nums else None
base_col = any("pgkeel-baseline" in t for t in rows.values())
print("| workload | target | tps | avg latency ms | proxy CPU µs/txn | tps vs PgBouncer | tps vs direct |" + (" tps vs baseline |" if base_col else ""))
print("|---|---|---:|---:|---:|---:|---:|" + ("---:|" if base_col else ""))
for w, targets in rows.items():
    base = {t: med([r[0] for r in runs]) for t, runs in targets.items()}
    for t, runs in targets.items():
        tps, lat, cpu = med([r[0] for r in runs]), med([r[1] for r in runs]), med([r[2] for r in runs])
        status = runs[0][0] if tps is None else None
        f = lambda v, d=0: "-" if v is None else f"{v:,.{d}f}"
        ratio = lambda a, b: "-" if a is None or not b else f"{a / b:.2f}"
        print(f"| {w} | {t} | {status or f(tps)} | {f(lat, 3)} | {f(cpu, 1)} | {ratio(tps, base.get('pgbouncer'))} | {ratio(tps, base.get('direct'))} |" + (f" {ratio(tps, base.get('pgkeel-baseline'))} |" if base_col else ""))
PY
    if [ -s "$IDLE_RAW" ]; then
        echo
        echo "Idle clients: each connects (SCRAM), runs SELECT 1 and stays idle; resident memory of the proxy before and after (VmRSS)."
        echo
        echo "| idle clients | target | connected | errors | RSS before KiB | RSS after KiB | KiB per idle client |"
        echo "|---:|---|---:|---:|---:|---:|---:|"
        while IFS=$'\t' read -r n t c e b a p; do echo "| $n | $t | $c | $e | $b | $a | $p |"; done < "$IDLE_RAW"
    fi
} > "$OUT"
section "results ($OUT)"
cat "$OUT"
