#!/usr/bin/env bash
# pgkeel driver scenario: psql and pgbench -M prepared.
#
# psql 15 has no \bind (it came in psql 16), so psql's prepared statements
# are SQL PREPARE/EXECUTE; pgbench -M prepared sends named extended-protocol
# statements (P_0, P_1, ...) that it prepares once per connection.
#
# Connection parameters come from PGHOST, PGPORT, PGUSER, PGPASSWORD and
# PGDATABASE. DRIVER_CLIENTS (20) and DRIVER_ITERATIONS (200) scale the run.
# Every psql client's output is compared with what it must be. Each step
# runs even when an earlier one failed (so one run tells everything that
# breaks); exits 1 naming what failed.
set -euo pipefail

CLIENTS=${DRIVER_CLIENTS:-20}
ITERATIONS=${DRIVER_ITERATIONS:-200}
COPY_ROWS=1000
LARGE_ROWS=200000
# md5 of the rows "g|md5(g)\n" for g in 1..200000, as psql -At writes them.
LARGE_MD5=bbd79b12cf7385296b8d93aa617b7699
PGBENCH_TRANSACTIONS=100 # per client
DOOMED_ID=1000000

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

failed=0
fail() {
    echo "FAIL psql: $*" >&2
    failed=1
}

psql_() { psql -X -q -At -v ON_ERROR_STOP=1 "$@"; }

# Polls until `psql_ -c "$1"` prints $2, for at most 20 s.
wait_for_value() {
    local deadline=$((SECONDS + 20))
    while [ "$(psql_ -c "$1")" != "$2" ]; do
        [ $SECONDS -ge $deadline ] && return 1
        sleep 0.05
    done
}

setup() {
    {
        echo "BEGIN;"
        echo "SET LOCAL client_min_messages = warning;"
        for ((i = 0; i < CLIENTS; i++)); do
            echo "DROP SCHEMA IF EXISTS client_$i CASCADE; CREATE SCHEMA client_$i;"
            echo "CREATE TABLE client_$i.items (id int PRIMARY KEY, client int NOT NULL, val text NOT NULL);"
            echo "CREATE TABLE client_$i.copied (id int PRIMARY KEY, txt text NOT NULL);"
        done
        echo "COMMIT;"
    } | psql_ -f -
}

# Writes client $1's script to $work/client_$1.sql and what it must print to
# $work/client_$1.want.
client_script() {
    local i=$1 app="psql-client-$1" n k
    {
        echo "SET search_path TO client_$i;"
        echo "SET application_name TO '$app';"
        echo "PREPARE ins(int, int, text) AS INSERT INTO items (id, client, val) VALUES (\$1, \$2, \$3);"
        echo "PREPARE sel(int) AS SELECT val, client, current_schema(), current_setting('application_name') FROM items WHERE id = \$1;"
        echo "PREPARE cnt(int) AS SELECT count(*) FROM items WHERE client = \$1;"
        for ((n = 0; n < ITERATIONS; n++)); do
            echo "BEGIN;"
            echo "EXECUTE ins($n, $i, 'v$i-$n');"
            echo "EXECUTE sel($n);"
            echo "COMMIT;"
            echo "EXECUTE cnt($i);"
            [ $((n % 50)) -eq 0 ] && echo "SHOW application_name;"
        done
        # An error inside a transaction, then ROLLBACK.
        echo "BEGIN;"
        echo "EXECUTE ins($DOOMED_ID, $i, 'doomed');"
        echo "SELECT 1 / 0;"
        echo "\\echo sqlstate :LAST_ERROR_SQLSTATE"
        echo "ROLLBACK;"
        echo "SELECT count(*), current_schema(), current_setting('application_name') FROM items WHERE id = $DOOMED_ID;"
        # COPY in (the rows follow in the script), then out.
        echo "COPY copied (id, txt) FROM STDIN;"
        for ((k = 0; k < COPY_ROWS; k++)); do printf '%d\tc%d-%d\n' $k "$i" $k; done
        echo '\.'
        echo "SELECT count(*) FROM copied;"
        echo "COPY (SELECT id, txt FROM copied ORDER BY id) TO STDOUT;"
        if [ "$i" -eq 1 ] || [ "$i" -eq 2 ]; then
            echo "SELECT g, md5(g::text) FROM generate_series(1, $LARGE_ROWS) g \\g '$work/large_$i.txt'"
        fi
        echo "SELECT count(*) FROM items;"
    } >"$work/client_$i.sql"
    {
        for ((n = 0; n < ITERATIONS; n++)); do
            echo "v$i-$n|$i|client_$i|$app"
            echo $((n + 1))
            [ $((n % 50)) -eq 0 ] && echo "$app"
        done
        echo "sqlstate 22012"
        echo "0|client_$i|$app"
        echo "$COPY_ROWS"
        for ((k = 0; k < COPY_ROWS; k++)); do printf '%d\tc%d-%d\n' $k "$i" $k; done
        echo "$ITERATIONS"
    } >"$work/client_$i.want"
}

# A pg_sleep(30) cancelled by psql's own cancel (SIGINT sends a
# CancelRequest), while the clients run.
cancel_long_query() {
    psql -X -v VERBOSITY=verbose -c "SELECT pg_sleep(30) AS cancel_me" \
        >"$work/cancel.out" 2>"$work/cancel.err" &
    local p=$!
    pids+=("$p")
    if ! wait_for_value "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND datname = current_database()
        AND pid <> pg_backend_pid() AND position('AS cancel_me' in query) > 0" 1; then
        fail "pg_sleep(30) never showed up as active in pg_stat_activity"
        kill "$p"
        return
    fi
    kill -INT "$p"
    local rc=0
    wait "$p" || rc=$?
    grep -q "ERROR:  57014: canceling statement due to user request" "$work/cancel.err" ||
        fail "the cancelled pg_sleep (exit $rc) did not end with 57014: $(cat "$work/cancel.out" "$work/cancel.err")"
}

listen_notify() {
    # The listener runs the notifier (another connection) from inside its
    # own script, then a query after which psql prints what arrived.
    local script="$work/listen.sql" want="$work/listen.want" k
    {
        echo "LISTEN drivers_events;"
        for k in 0 1 2; do
            echo "\\! psql -X -q -v ON_ERROR_STOP=1 -c \"SELECT pg_notify('drivers_events', 'hello-$k')\" >/dev/null"
            echo "SELECT $k;"
        done
    } >"$script"
    for k in 0 1 2; do
        echo "$k"
        echo "Asynchronous notification \"drivers_events\" with payload \"hello-$k\" received from server process with PID N."
    done >"$want"
    psql_ -f "$script" 2>&1 | sed -E 's/with PID [0-9]+\./with PID N./' >"$work/listen.out" || true
    diff -u "$want" "$work/listen.out" >"$work/listen.diff" ||
        fail "LISTEN/NOTIFY (- expected, + printed): $(cat "$work/listen.diff")"
}

pgbench_prepared() {
    psql_ <<SQL || {
BEGIN;
SET LOCAL client_min_messages = warning;
DROP TABLE IF EXISTS pgb_accounts, pgb_history;
CREATE TABLE pgb_accounts (aid int PRIMARY KEY, balance bigint NOT NULL);
INSERT INTO pgb_accounts SELECT g, 0 FROM generate_series(1, 100) g;
CREATE TABLE pgb_history (aid int NOT NULL, delta int NOT NULL);
COMMIT;
SQL
        fail "pgbench's tables could not be created"
        return
    }
    cat >"$work/pgbench.sql" <<'SQL'
\set aid random(1, 100)
\set delta random(-1000, 1000)
BEGIN;
UPDATE pgb_accounts SET balance = balance + :delta WHERE aid = :aid;
INSERT INTO pgb_history (aid, delta) VALUES (:aid, :delta);
SELECT balance FROM pgb_accounts WHERE aid = :aid;
END;
SQL
    local total=$((CLIENTS * PGBENCH_TRANSACTIONS))
    # A client that never gets an answer would hold pgbench forever: it
    # gets 120 s for what takes seconds (--foreground keeps it in this
    # process group, which the test kills if this script hangs).
    local rc=0
    # One thread per client: pgbench prepares with a blocking PQprepare, so
    # a thread's other clients, mid-transaction on the two server
    # connections, would wait on it while it waits for one of them.
    timeout --foreground 120 pgbench -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -t "$PGBENCH_TRANSACTIONS" -f "$work/pgbench.sql" \
        >"$work/pgbench.out" 2>&1 || rc=$?
    [ $rc -eq 0 ] || {
        [ $rc -eq 124 ] && echo "(pgbench killed after 120 s)" >>"$work/pgbench.out"
        fail "pgbench failed: $(sort "$work/pgbench.out" | uniq -c | sort -rn | head -n 8)"
        return
    }
    grep -q "^number of transactions actually processed: $total/$total$" "$work/pgbench.out" &&
        grep -q "^number of failed transactions: 0 " "$work/pgbench.out" || {
        fail "pgbench did not process $total transactions without failures: $(tail -n 30 "$work/pgbench.out")"
        return
    }
    # Every account's balance is the sum of its history, and every
    # transaction left exactly one history row.
    local state
    state=$(psql_ 2>&1 -c "SELECT (SELECT count(*) FROM pgb_history),
        (SELECT count(*) FROM pgb_accounts a WHERE balance <>
            (SELECT coalesce(sum(delta), 0) FROM pgb_history h WHERE h.aid = a.aid))")
    [ "$state" = "$total|0" ] || fail "after pgbench: history rows|inconsistent accounts = $state, want $total|0"
    tps=$(sed -n 's/^tps = \([0-9]*\).*/\1/p' "$work/pgbench.out")
}

setup
for ((i = 0; i < CLIENTS; i++)); do client_script "$i"; done

# The 20 clients at once, each bounded like pgbench below.
client_pids=()
for ((i = 0; i < CLIENTS; i++)); do
    timeout --foreground 120 psql -X -q -At -f "$work/client_$i.sql" >"$work/client_$i.out" 2>"$work/client_$i.err" &
    client_pids+=($!)
    pids+=($!)
done
cancel_long_query
bad=0 first_bad=""
for ((i = 0; i < CLIENTS; i++)); do
    rc=0
    wait "${client_pids[$i]}" || rc=$?
    # The one error a client must see is its 1/0; the others are collected.
    grep "ERROR:" "$work/client_$i.err" | grep -v "ERROR:  division by zero" |
        sed -E 's/^psql:[^:]*:[0-9]+: //' >>"$work/errors" || true
    [ $rc -eq 124 ] && echo "ERROR:  (client killed after 120 s)" >>"$work/errors"
    if [ $rc -ne 0 ] || ! diff -u "$work/client_$i.want" "$work/client_$i.out" >"$work/client_$i.diff"; then
        bad=$((bad + 1))
        [ -n "$first_bad" ] || first_bad=$i
    fi
done
if [ $bad -gt 0 ]; then
    fail "$bad of $CLIENTS clients printed something else than expected.
errors seen (count, message):
$(sort "$work/errors" | uniq -c | sort -rn | head -n 5)
first difference (client $first_bad, - expected, + printed):
$(head -n 20 "$work/client_$first_bad.diff")"
fi
for i in 1 2; do
    if [ ! -f "$work/large_$i.txt" ]; then
        fail "client $i: the large result was not written"
        continue
    fi
    rows=$(wc -l <"$work/large_$i.txt")
    sum=$(md5sum <"$work/large_$i.txt" | cut -d' ' -f1)
    [ "$rows" -eq $LARGE_ROWS ] && [ "$sum" = $LARGE_MD5 ] ||
        fail "client $i: large result has $rows rows with md5 $sum, want $LARGE_ROWS rows with md5 $LARGE_MD5"
done

listen_notify

wrong=()
for ((i = 0; i < CLIENTS; i++)); do
    got=$(psql_ -c "SELECT count(*), count(*) FILTER (WHERE client <> $i), count(*) FILTER (WHERE id = $DOOMED_ID) FROM client_$i.items" 2>&1) || true
    [ "$got" = "$ITERATIONS|0|0" ] || wrong+=("client_$i: $got")
done
[ ${#wrong[@]} -eq 0 ] ||
    fail "${#wrong[@]} of $CLIENTS tables hold other rows than their client's $ITERATIONS (rows|foreign|rolled back), first: ${wrong[0]}"

pgbench_prepared
[ $failed -eq 0 ] || exit 1
echo "psql $(psql -V | awk '{print $3}'): $CLIENTS clients x $ITERATIONS transactions ok (PREPARE/EXECUTE); cancel ok (57014); COPY, large result, rollback, LISTEN/NOTIFY ok"
echo "pgbench -M prepared: $CLIENTS clients x $PGBENCH_TRANSACTIONS transactions, 0 failed, balances consistent ($tps tps)"
