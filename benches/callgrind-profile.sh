#!/usr/bin/env bash
# Instructions per transaction, from callgrind: stable on a noisy shared
# machine, where tps is not. Each pgkeel binary runs under valgrind, gets a
# pgbench load of A then B transactions per client (counters zeroed before
# each, dumped after each), and the difference B - A is divided by the
# transactions it added: what logins, pool warm-up and SCRAM cost cancels
# out, leaving the steady state per transaction.
#
#   benches/callgrind-profile.sh                       new binary only
#   BINS="new=target/release/pgkeel old=/path/to/old/pgkeel" benches/callgrind-profile.sh
#
# Knobs: BINS (name=binary ..., target/release/pgkeel), WORKLOADS
# (select-simple select-extended select-prepared tpcb; default
# select-simple), CLIENTS (4), A (200), B (1200) transactions per client,
# SPLIT (true: read_write_split), TOP (25 functions), OUT
# (benches/results/profile-latest.md), KEEP=1 keeps the work dir (the
# callgrind.out files), TOOL=strace: syscalls per transaction instead
# (strace -c -f over B transactions per client, logins included).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

BINS=${BINS:-new=target/release/pgkeel}
WORKLOADS=${WORKLOADS:-select-simple}
CLIENTS=${CLIENTS:-4}
A=${A:-200}
B=${B:-1200}
SPLIT=${SPLIT:-true}
TOP=${TOP:-25}
OUT=${OUT:-benches/results/profile-latest.md}
PG_PORT=${PG_PORT:-55442}
PORT=${PORT:-56443}

install_packages postgresql-15 postgresql-client-15 valgrind

WORK=$(mktemp -d /tmp/pgkeel-callgrind.XXXXXX)
chmod 755 "$WORK"
PID=""
cleanup() {
    [ -n "$PID" ] && kill -TERM "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
    [ -f "$WORK/data/postmaster.pid" ] && as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
    [ -z "${KEEP:-}" ] && rm -rf "$WORK"
}
trap cleanup EXIT

section "PostgreSQL on 127.0.0.1:$PG_PORT"
echo bench > "$WORK/pw"
chown -R postgres: "$WORK" 2>/dev/null || true
as_postgres "$PG_BIN/initdb" -D "$WORK/data" -U bench --pwfile="$WORK/pw" --auth-host=scram-sha-256 --auth-local=trust -E UTF8 --locale=C >/dev/null
as_postgres "$PG_BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w start -o \
    "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK -c max_connections=100 -c fsync=off -c synchronous_commit=off" >/dev/null
as_postgres psql -h "$WORK" -p "$PG_PORT" -U bench -d postgres -qc "CREATE DATABASE bench"
PGPASSWORD=bench pgbench -i -q -s 1 -h 127.0.0.1 -p "$PG_PORT" -U bench bench >/dev/null 2>&1

args_for() {
    case "$1" in
        select-simple) echo "-S -M simple" ;;
        select-extended) echo "-S -M extended" ;;
        select-prepared) echo "-S -M prepared" ;;
        tpcb) echo "" ;;
    esac
}

load() { # workload transactions-per-client
    # shellcheck disable=SC2046
    PGPASSWORD=bench pgbench -n $(args_for "$1") -c "$CLIENTS" -j 1 -t "$2" -h 127.0.0.1 -p "$PORT" -U bench bench >/dev/null
}

total_ir() { # callgrind.out file
    awk '/^summary:/{print $2; exit}' "$1"
}

RAW="$WORK/raw.tsv"
: > "$RAW"
for w in $WORKLOADS; do
    for spec in $BINS; do
        name=${spec%%=*}
        bin=${spec#*=}
        section "$w: $name ($bin) under callgrind"
        cat > "$WORK/$name.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PORT"
pool_mode = "transaction"
pool_size = $CLIENTS
[admin]
listen = ""
[log]
level = "warn"
[health]
user = "bench"
password = "bench"
database = "bench"
[routing]
read_write_split = $SPLIT
[[users]]
name = "bench"
password = "bench"
[[servers]]
host = "127.0.0.1"
port = $PG_PORT
TOML
        out="$WORK/cg.$w.$name"
        if [ "${TOOL:-callgrind}" = strace ]; then
            # Syscalls per transaction instead (logins included: few).
            strace -f -c -o "$WORK/strace.$w.$name" "$bin" --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
            PID=$!
            TIMEOUT=60 wait_for pg_isready -h 127.0.0.1 -p "$PORT"
            load "$w" "$B"
            # pgkeel itself is stopped (strace, signalled, would only detach).
            kill -TERM "$(pgrep -P "$PID")"
            wait "$PID" 2>/dev/null || true
            PID=""
            echo "  $w $name: syscalls per transaction"
            awk -v t=$((B * CLIENTS)) '$1 ~ /^[0-9.]+$/ && NF >= 5 {printf "    %-16s %6.2f\n", $NF, $4 / t}' "$WORK/strace.$w.$name"
            continue
        fi
        valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$bin" --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
        PID=$!
        TIMEOUT=120 wait_for pg_isready -h 127.0.0.1 -p "$PORT"
        load "$w" 20
        callgrind_control -z "$PID" >/dev/null
        load "$w" "$A"
        callgrind_control -d "$PID" >/dev/null
        callgrind_control -z "$PID" >/dev/null
        load "$w" "$B"
        callgrind_control -d "$PID" >/dev/null
        kill -TERM "$PID"
        wait "$PID" 2>/dev/null || true
        PID=""
        # Dumps are numbered .1, .2 (.3: the exit dump, unused).
        f1=$(ls "$out".*.1 | head -1)
        f2=$(ls "$out".*.2 | head -1)
        per=$(python3 -c "print(round(($(total_ir "$f2") - $(total_ir "$f1")) / (($B - $A) * $CLIENTS)))")
        echo "  $w $name: $per instructions per transaction"
        printf '%s\t%s\t%s\t%s\t%s\n' "$w" "$name" "$per" "$f1" "$f2" >> "$RAW"
    done
done

[ "${TOOL:-callgrind}" = strace ] && exit 0
mkdir -p "$(dirname "$OUT")"
{
    echo "# Instructions per transaction (callgrind)"
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ); pgbench -c $CLIENTS, (B - A) = $((B - A)) transactions per client; read_write_split = $SPLIT; pool $CLIENTS."
    echo
    echo "| workload | binary | instructions / txn |"
    echo "|---|---|---:|"
    while IFS=$'\t' read -r w name per _ _; do echo "| $w | $name | $per |"; done < "$RAW"
    while IFS=$'\t' read -r w name _ f1 f2; do
        echo
        echo "## $w, $name: top functions, instructions / txn"
        echo
        python3 benches/callgrind-diff.py "$f1" "$f2" $(( (B - A) * CLIENTS )) "$TOP"
    done < "$RAW"
} > "$OUT"
section "results ($OUT)"
cat "$OUT"
