"""pgkeel driver scenario: asyncpg, named prepared statements everywhere.

asyncpg prepares every statement under a name (__asyncpg_stmt_N__) and
keeps it for the life of the connection; the main statements here are also
explicit PreparedStatement objects, reused across hundreds of transactions.

Connection parameters come from PGHOST, PGPORT, PGUSER, PGPASSWORD and
PGDATABASE. DRIVER_CLIENTS (20) and DRIVER_ITERATIONS (200) scale the run.
Exits 1 naming the first failed check of each client.
"""

import asyncio
import hashlib
import io
import os
import sys
import time

import asyncpg

CLIENTS = int(os.environ.get("DRIVER_CLIENTS", "20"))
ITERATIONS = int(os.environ.get("DRIVER_ITERATIONS", "200"))
COPY_ROWS = 1000
LARGE_ROWS = 200_000
LARGE_CLIENTS = {1, 2}
CANCEL_CLIENT = 0
DOOMED_ID = 1_000_000
TIMEOUT = 20.0


class Failed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failed(what)


async def connect():
    # Parameters from the PG* environment; the statement cache stays on
    # (its default), which is what makes every statement a named one.
    return await asyncpg.connect(timeout=10)


async def setup():
    conn = await connect()
    try:
        async with conn.transaction():
            for i in range(CLIENTS):
                await conn.execute(f"DROP SCHEMA IF EXISTS client_{i} CASCADE")
                await conn.execute(f"CREATE SCHEMA client_{i}")
                await conn.execute(
                    f"CREATE TABLE client_{i}.items (id int PRIMARY KEY, client int NOT NULL, val text NOT NULL)"
                )
                await conn.execute(
                    f"CREATE TABLE client_{i}.copied (id int PRIMARY KEY, txt text NOT NULL)"
                )
    finally:
        await conn.close()


async def wait_active(watch, marker, active=True):
    """Polls pg_stat_activity until a query containing `marker` runs (or,
    with active=False, until none does)."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        n = await watch.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND datname = current_database() AND pid <> pg_backend_pid() "
            "AND position($1 in query) > 0",
            marker,
        )
        if (n > 0) == active:
            return
        await asyncio.sleep(0.02)
    if active:
        raise Failed(f"the query {marker!r} never showed up as active in pg_stat_activity")
    raise Failed(f"the query {marker!r} still runs {TIMEOUT}s after its cancel")


async def cancel_long_query(conn, schema):
    """asyncpg's cancel API is task cancellation: it sends a CancelRequest,
    consumes the server's 57014 itself and raises CancelledError. So the
    checks are that the task was cancelled, the server query ended well
    before its 30 s, and the connection is in step afterwards."""
    watch = await connect()
    try:
        started = time.monotonic()
        task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30) AS cancel_me"))
        try:
            await wait_active(watch, "AS cancel_me")
        finally:
            # Even unseen, the query is cancelled: the phase fails either
            # way, and the connection is not left busy.
            task.cancel()
        try:
            await task
            raise Failed("pg_sleep(30) finished: the cancel did not reach it")
        except asyncio.CancelledError:
            pass
        # The CancelRequest goes out in the background: the server query
        # must end long before its 30 s (the wait gives up after TIMEOUT).
        await wait_active(watch, "AS cancel_me", active=False)
        elapsed = time.monotonic() - started
    finally:
        await watch.close()
    row = await conn.fetchrow("SELECT 1 AS one, current_schema() AS s")
    check(tuple(row) == (1, schema), f"after the cancel the session answered {tuple(row)}")
    return elapsed


async def client(i, results, report):
    schema = f"client_{i}"
    app = f"asyncpg-client-{i}"
    who = f"client {i}"
    conn = await connect()
    try:
        await conn.execute(f"SET search_path TO {schema}")
        await conn.execute(f"SET application_name TO '{app}'")
        insert = await conn.prepare("INSERT INTO items (id, client, val) VALUES ($1, $2, $3)")
        select = await conn.prepare(
            "SELECT val, client, current_schema(), current_setting('application_name'), "
            "pg_backend_pid() FROM items WHERE id = $1"
        )
        count_mine = await conn.prepare("SELECT count(*) FROM items WHERE client = $1")

        async def transactions():
            pids = set()
            for n in range(ITERATIONS):
                val = f"v{i}-{n}"
                async with conn.transaction():
                    await insert.fetch(n, i, val)
                    row = await select.fetchrow(n)
                    got = tuple(row)[:4]
                    check(got == (val, i, schema, app), f"transaction {n}: read back {got}, want {(val, i, schema, app)}")
                    pids.add(row[4])
                count = await count_mine.fetchval(i)
                check(count == n + 1, f"after transaction {n}: {count} rows, want {n + 1}")
                if n % 50 == 0:
                    # Without arguments asyncpg uses the simple protocol;
                    # with one it prepares (and caches) a named statement.
                    shown = await conn.fetchval("SELECT current_setting($1)", "application_name")
                    check(shown == app, f"application_name = {shown!r}, want {app!r}")
            results[i] = len(pids)

        async def rollback():
            try:
                async with conn.transaction():
                    await insert.fetch(DOOMED_ID, i, "doomed")
                    await conn.fetchval("SELECT 1 / $1::int", 0)
                raise Failed("1/0 inside a transaction raised nothing")
            except asyncpg.DivisionByZeroError as e:
                check(e.sqlstate == "22012", f"1/0 gave SQLSTATE {e.sqlstate}")
            row = await conn.fetchrow(
                "SELECT count(*), current_schema(), current_setting('application_name') "
                "FROM items WHERE id = $1",
                DOOMED_ID,
            )
            check(tuple(row) == (0, schema, app), f"after ROLLBACK: {tuple(row)}, want {(0, schema, app)}")

        async def copy():
            status = await conn.copy_records_to_table(
                "copied", records=[(k, f"c{i}-{k}") for k in range(COPY_ROWS)], columns=["id", "txt"]
            )
            check(status == f"COPY {COPY_ROWS}", f"COPY FROM reported {status!r}")
            out = io.BytesIO()
            status = await conn.copy_from_query("SELECT id, txt FROM copied ORDER BY id", output=out)
            check(status == f"COPY {COPY_ROWS}", f"COPY TO reported {status!r}")
            want = "".join(f"{k}\tc{i}-{k}\n" for k in range(COPY_ROWS))
            check(out.getvalue().decode() == want, "COPY TO did not return the rows copied in")

        async def large():
            rows = await conn.fetch("SELECT g, md5(g::text) FROM generate_series(1, $1) g", LARGE_ROWS)
            check(len(rows) == LARGE_ROWS, f"{len(rows)} rows, want {LARGE_ROWS}")
            check(sum(r[0] for r in rows) == LARGE_ROWS * (LARGE_ROWS + 1) // 2, "wrong sum of g")
            bad = [tuple(r) for r in rows if hashlib.md5(str(r[0]).encode()).hexdigest() != r[1]]
            check(not bad, f"{len(bad)} rows with a wrong md5, first {bad[:1]}")

        async def cancel():
            results["cancel_seconds"] = await cancel_long_query(conn, schema)

        async def at_the_end():
            count = await conn.fetchval("SELECT count(*) FROM items")
            check(count == ITERATIONS, f"{count} rows in {schema}.items, want {ITERATIONS}")

        await report.run("prepared statements in 200 transactions", who, transactions)
        await report.run("error in a transaction, ROLLBACK", who, rollback)
        await report.run("COPY in and out", who, copy)
        if i in LARGE_CLIENTS:
            await report.run("large result", who, large)
        if i == CANCEL_CLIENT:
            await report.run("cancel", who, cancel)
        await report.run("search_path at the end", who, at_the_end)
    finally:
        await conn.close()


async def listen_notify():
    listener = await connect()
    notifier = await connect()
    try:
        queue = asyncio.Queue()
        await listener.add_listener("drivers_events", lambda _c, _pid, ch, payload: queue.put_nowait((ch, payload)))
        for k in range(3):
            payload = f"hello-{k}"
            await notifier.execute("SELECT pg_notify('drivers_events', $1)", payload)
            try:
                got = await asyncio.wait_for(queue.get(), TIMEOUT)
            except asyncio.TimeoutError:
                raise Failed(f"notification {k} did not arrive within {TIMEOUT}s")
            check(got == ("drivers_events", payload), f"notification {k}: {got}")
            one = await listener.fetchval("SELECT $1::int", k)
            check(one == k, f"listener's query answered {one}")
    finally:
        await listener.close()
        await notifier.close()


async def verify():
    conn = await connect()
    try:
        for i in range(CLIENTS):
            row = await conn.fetchrow(
                f"SELECT count(*), count(*) FILTER (WHERE client <> $1), "
                f"count(*) FILTER (WHERE id = $2) FROM client_{i}.items",
                i,
                DOOMED_ID,
            )
            check(tuple(row) == (ITERATIONS, 0, 0), f"client_{i}.items holds {tuple(row)}")
    finally:
        await conn.close()


class Report:
    """Failures by phase: each phase runs even when an earlier one failed,
    so one run tells everything that breaks."""

    def __init__(self):
        self.failed = {}

    async def run(self, phase, who, fn):
        try:
            await fn()
        except Exception as e:  # every failure is reported, with its phase and client
            # The first line: asyncpg adds paragraphs of hints.
            first = str(e).splitlines()[0] if str(e) else ""
            self.failed.setdefault(phase, []).append(f"{who}: {type(e).__name__}: {first}")

    def exit_if_failed(self, driver):
        for phase, msgs in self.failed.items():
            print(f"FAIL {driver} [{phase}]: {len(msgs)} failed, first: {msgs[0]}", file=sys.stderr)
            for m in msgs[1:3]:
                print(f"    also {m}", file=sys.stderr)
        if self.failed:
            sys.exit(1)


async def main():
    await setup()
    results, report = {}, Report()
    # Connecting, the SETs and the prepares belong to no phase: their
    # failure is the session's.
    await asyncio.gather(
        *(report.run("session", f"client {i}", lambda i=i: client(i, results, report)) for i in range(CLIENTS))
    )
    await report.run("LISTEN/NOTIFY", "listener", listen_notify)
    await report.run("final table contents", "checker", verify)
    report.exit_if_failed("asyncpg")
    pids = [results[i] for i in range(CLIENTS)]
    print(
        f"asyncpg {asyncpg.__version__}: {CLIENTS} clients x {ITERATIONS} transactions ok; "
        f"server backends seen per client: {min(pids)}..{max(pids)}; "
        f"cancel ok (task cancelled after {results['cancel_seconds']:.2f}s); COPY, large result, "
        f"rollback, LISTEN/NOTIFY ok"
    )


if __name__ == "__main__":
    asyncio.run(main())
