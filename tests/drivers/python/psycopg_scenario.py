"""pgkeel driver scenario: psycopg 3 with prepare_threshold=0.

Every query is server-side prepared (psycopg names them _pg3_N per
connection), so a pooler that lends each transaction a different server
connection must make those names exist wherever the transaction lands.

Connection parameters come from the libpq environment (PGHOST, PGPORT,
PGUSER, PGPASSWORD, PGDATABASE). DRIVER_CLIENTS (20) and DRIVER_ITERATIONS
(200) scale the run. Exits 1 naming the first failed check of each client.
"""

import hashlib
import os
import sys
import threading
import time

import psycopg
from psycopg import errors, sql

CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "20"))
ITERATIONS = int(os.environ.get("DRIVER_ITERATIONS", "200"))
COPY_ROWS = 1000
LARGE_ROWS = 200_000
# Clients that also fetch the large result (two at once share the pool).
LARGE_CLIENTS = {1, 2}
CANCEL_CLIENT = 0
DOOMED_ID = 1_000_000
TIMEOUT = 20.0


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


def connect():
    return psycopg.connect(autocommit=True, prepare_threshold=0, connect_timeout=10)


def setup():
    with connect() as conn, conn.transaction():
        for i in range(CLIENTS):
            conn.execute(f"DROP SCHEMA IF EXISTS client_{i} CASCADE")
            conn.execute(f"CREATE SCHEMA client_{i}")
            conn.execute(
                f"CREATE TABLE client_{i}.items (id int PRIMARY KEY, client int NOT NULL, val text NOT NULL)"
            )
            conn.execute(f"CREATE TABLE client_{i}.copied (id int PRIMARY KEY, txt text NOT NULL)")


def wait_active(watch, marker):
    """Polls pg_stat_activity until a query containing `marker` runs."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        n = watch.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND datname = current_database() AND pid <> pg_backend_pid() "
            "AND position(%s in query) > 0",
            (marker,),
        ).fetchone()[0]
        if n > 0:
            return
        time.sleep(0.02)
    raise Failed(f"the query {marker!r} never showed up as active in pg_stat_activity")


def cancel_long_query(conn, schema):
    with connect() as watch:
        done = threading.Event()

        def canceller():
            try:
                wait_active(watch, "AS cancel_me")
                conn.cancel_safe()
            finally:
                done.set()

        t = threading.Thread(target=canceller)
        started = time.monotonic()
        t.start()
        try:
            conn.execute("SELECT pg_sleep(30) AS cancel_me")
            raise Failed("pg_sleep(30) finished: the cancel did not reach it")
        except errors.QueryCanceled as e:
            check(e.sqlstate == "57014", f"cancel gave SQLSTATE {e.sqlstate}, want 57014")
        finally:
            t.join()
        elapsed = time.monotonic() - started
    row = conn.execute("SELECT 1, current_schema()").fetchone()
    check(row == (1, schema), f"after the cancel the session answered {row}")
    return elapsed


def client(i, results):
    schema = f"client_{i}"
    app = f"psycopg-client-{i}"
    with connect() as conn:
        conn.execute(f"SET search_path TO {schema}")
        conn.execute(sql.SQL("SET application_name TO {}").format(sql.Literal(app)))
        pids = set()
        for n in range(ITERATIONS):
            val = f"v{i}-{n}"
            with conn.transaction():
                conn.execute(
                    "INSERT INTO items (id, client, val) VALUES (%s, %s, %s)", (n, i, val)
                )
                row = conn.execute(
                    "SELECT val, client, current_schema(), current_setting('application_name'), "
                    "pg_backend_pid() FROM items WHERE id = %s",
                    (n,),
                ).fetchone()
                check(
                    row[:4] == (val, i, schema, app),
                    f"transaction {n}: read back {row[:4]}, want {(val, i, schema, app)}",
                )
                pids.add(row[4])
            # Autocommit, outside any transaction, prepared as well.
            count = conn.execute("SELECT count(*) FROM items WHERE client = %s", (i,)).fetchone()[0]
            check(count == n + 1, f"after transaction {n}: {count} rows, want {n + 1}")
            if n % 50 == 0:
                shown = conn.execute("SHOW application_name").fetchone()[0]
                check(shown == app, f"SHOW application_name = {shown!r}, want {app!r}")

        # An error inside a transaction, rolled back: the write is gone and
        # the session (and its settings) carry on.
        try:
            with conn.transaction():
                conn.execute(
                    "INSERT INTO items (id, client, val) VALUES (%s, %s, %s)", (DOOMED_ID, i, "doomed")
                )
                conn.execute("SELECT 1 / %s", (0,))
            raise Failed("1/0 inside a transaction raised nothing")
        except errors.DivisionByZero as e:
            check(e.sqlstate == "22012", f"1/0 gave SQLSTATE {e.sqlstate}")
        row = conn.execute(
            "SELECT count(*), current_schema(), current_setting('application_name') "
            "FROM items WHERE id = %s",
            (DOOMED_ID,),
        ).fetchone()
        check(row == (0, schema, app), f"after ROLLBACK: {row}, want {(0, schema, app)}")

        # COPY in, then out.
        with conn.cursor() as cur:
            with cur.copy("COPY copied (id, txt) FROM STDIN") as cp:
                for k in range(COPY_ROWS):
                    cp.write_row((k, f"c{i}-{k}"))
            check(cur.rowcount == COPY_ROWS, f"COPY FROM reported {cur.rowcount} rows")
            got = []
            with cur.copy("COPY (SELECT id, txt FROM copied ORDER BY id) TO STDOUT") as cp:
                for r in cp.rows():
                    got.append(r)
            want = [(str(k), f"c{i}-{k}") for k in range(COPY_ROWS)]
            check(got == want, f"COPY TO returned {len(got)} rows, not the {COPY_ROWS} copied in")

        if i in LARGE_CLIENTS:
            rows = conn.execute(
                "SELECT g, md5(g::text) FROM generate_series(1, %s) g", (LARGE_ROWS,)
            ).fetchall()
            check(len(rows) == LARGE_ROWS, f"large result: {len(rows)} rows, want {LARGE_ROWS}")
            check(
                sum(r[0] for r in rows) == LARGE_ROWS * (LARGE_ROWS + 1) // 2,
                "large result: wrong sum of g",
            )
            bad = [r for r in rows if hashlib.md5(str(r[0]).encode()).hexdigest() != r[1]]
            check(not bad, f"large result: {len(bad)} rows with a wrong md5, first {bad[:1]}")

        if i == CANCEL_CLIENT:
            results["cancel_seconds"] = cancel_long_query(conn, schema)

        count = conn.execute("SELECT count(*) FROM items").fetchone()[0]
        check(count == ITERATIONS, f"at the end: {count} rows in {schema}.items, want {ITERATIONS}")
        results[i] = len(pids)


def listen_notify():
    """One client LISTENs (pgkeel pins it); another NOTIFYs through the pool."""
    with connect() as listener, connect() as notifier:
        listener.execute("LISTEN drivers_events")
        for k in range(3):
            payload = f"hello-{k}"
            notifier.execute("SELECT pg_notify('drivers_events', %s)", (payload,))
            got = list(listener.notifies(timeout=TIMEOUT, stop_after=1))
            check(len(got) == 1, f"notification {k} did not arrive within {TIMEOUT}s")
            check(
                (got[0].channel, got[0].payload) == ("drivers_events", payload),
                f"notification {k}: {got[0].channel}/{got[0].payload}",
            )
            # The listening session keeps working between notifications.
            one = listener.execute("SELECT %s::int", (k,)).fetchone()[0]
            check(one == k, f"listener's query answered {one}")
        listener.execute("UNLISTEN *")


def verify():
    with connect() as conn:
        for i in range(CLIENTS):
            row = conn.execute(
                f"SELECT count(*), count(*) FILTER (WHERE client <> %s), "
                f"count(*) FILTER (WHERE id = %s) FROM client_{i}.items",
                (i, DOOMED_ID),
            ).fetchone()
            check(row == (ITERATIONS, 0, 0), f"client_{i}.items holds {row}, want {(ITERATIONS, 0, 0)}")


def main():
    setup()
    results, failures = {}, []

    def run(i):
        try:
            client(i, results)
        except Exception as e:  # every failure is reported, with its client
            failures.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if not failures:
        try:
            listen_notify()
            verify()
        except Exception as e:
            failures.append(f"{type(e).__name__}: {e}")
    if failures:
        for f in failures:
            print(f"FAIL psycopg: {f}", file=sys.stderr)
        sys.exit(1)
    pids = [results[i] for i in range(CLIENTS)]
    print(
        f"psycopg {psycopg.__version__}: {CLIENTS} clients x {ITERATIONS} transactions ok; "
        f"server backends seen per client: {min(pids)}..{max(pids)}; "
        f"cancel ok (57014 after {results['cancel_seconds']:.2f}s); COPY, large result, "
        f"rollback, LISTEN/NOTIFY ok"
    )


if __name__ == "__main__":
    main()
