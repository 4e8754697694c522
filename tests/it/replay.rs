//! Transaction replay: transactions open when their server crashed run
//! again once it is back, and their clients go on without an error when
//! every answer they had comes out the same; a transaction whose answers
//! differ (it read `now()`) gets the error it would have got anyway
//! (40001), and so does every transaction with replay off. A server of the
//! test's own: a backend killed with SIGKILL makes PostgreSQL end every
//! connection and restart (crash recovery), as a crashed leader would.

use crate::common;
use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

fn proxy_config(port: u16, replay: bool) -> String {
    support::config(
        port,
        "pool_size = 8",
        &format!("[failover]\nhold_timeout = \"30s\"\nreplay_transactions = {replay}"),
    )
}

async fn client(p: &pgkeel::ProxyHandle) -> Client {
    connect(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap()
}

fn first(msgs: &[SimpleQueryMessage]) -> Option<String> {
    msgs.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

async fn value(c: &Client, sql: &str) -> String {
    first(&c.simple_query(sql).await.unwrap()).unwrap()
}

fn replays(p: &pgkeel::ProxyHandle, result: &str) -> u64 {
    p.shared()
        .metrics
        .transaction_replays_total
        .with_label_values(&[result])
        .get()
}

fn refusals(p: &pgkeel::ProxyHandle, reason: &str) -> u64 {
    p.shared()
        .metrics
        .transaction_replay_refusals_total
        .with_label_values(&[reason])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_survive_their_server_crashing() {
    let pg = tokio::task::spawn_blocking(common::start_own_pg)
        .await
        .unwrap();
    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    direct
        .batch_execute(
            "CREATE TABLE replay_t (id bigint PRIMARY KEY, who text NOT NULL);
             GRANT ALL ON replay_t TO app",
        )
        .await
        .unwrap();
    let p = start(&proxy_config(pg.port, true)).await;
    let off = start(&proxy_config(pg.port, false)).await;

    // a: idle in its transaction at the crash, after a write and a read.
    let a = client(&p).await;
    a.simple_query("BEGIN").await.unwrap();
    assert_eq!(
        value(&a, "INSERT INTO replay_t VALUES (1, 'a') RETURNING id").await,
        "1"
    );
    assert_eq!(value(&a, "SELECT count(*) FROM replay_t").await, "1");
    // b: a statement in flight at the crash.
    let b = client(&p).await;
    b.simple_query("BEGIN").await.unwrap();
    b.simple_query("INSERT INTO replay_t VALUES (2, 'b')")
        .await
        .unwrap();
    // c: its transaction read now(): a replay cannot give the same answer.
    let c = client(&p).await;
    c.simple_query("BEGIN").await.unwrap();
    value(&c, "SELECT now()::text").await;
    // d: a failed transaction stays failed.
    let d = client(&p).await;
    d.simple_query("BEGIN").await.unwrap();
    assert_eq!(
        sqlstate(&d.simple_query("SELECT 1/0").await.unwrap_err()),
        "22012"
    );
    // e: a named prepared statement, bound in the transaction.
    let e = client(&p).await;
    let insert = e
        .prepare("INSERT INTO replay_t VALUES ($1, 'e') RETURNING id")
        .await
        .unwrap();
    e.simple_query("BEGIN").await.unwrap();
    let id: i64 = e.query_one(&insert, &[&3i64]).await.unwrap().get(0);
    assert_eq!(id, 3);
    // f: replay off, through a second pgkeel.
    let f = client(&off).await;
    f.simple_query("BEGIN").await.unwrap();
    f.simple_query("INSERT INTO replay_t VALUES (9, 'f')")
        .await
        .unwrap();

    let in_flight = tokio::spawn(async move {
        let r = b.simple_query("SELECT pg_sleep(0.5), 'slept'").await;
        (b, r)
    });
    let active = wait_until(Duration::from_secs(10), || async {
        value(
            &direct,
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE '%pg_sleep(0.5)%' AND pid <> pg_backend_pid()",
        )
        .await
            == "1"
    })
    .await;
    assert!(active, "b's statement never ran");
    // Kill a backend of a's: PostgreSQL ends every connection (the others
    // hear 57P02) and restarts.
    let victim: i32 = value(
        &direct,
        "SELECT pid FROM pg_stat_activity WHERE datname = 'appdb' AND state = 'idle in transaction' AND pid <> pg_backend_pid() ORDER BY backend_start LIMIT 1",
    )
    .await
    .parse()
    .unwrap();
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);

    // a goes on in its transaction and commits.
    assert_eq!(
        value(&a, "INSERT INTO replay_t VALUES (4, 'a') RETURNING id").await,
        "4"
    );
    assert_eq!(value(&a, "SELECT count(*) FROM replay_t").await, "2");
    a.simple_query("COMMIT").await.unwrap();
    // b's statement was answered, after the replay.
    let (b, slept) = in_flight.await.unwrap();
    assert_eq!(
        slept
            .map(|m| m.len())
            .map_err(|e| format!("{:?}", e.as_db_error())),
        Ok(3),
        "b's statement"
    );
    b.simple_query("COMMIT").await.unwrap();
    // c gets the error it would have got without replay, then goes on.
    let err = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "40001", "{err}");
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(value(&c, "SELECT 1").await, "1");
    // d's transaction is still the failed one.
    assert_eq!(
        sqlstate(&d.simple_query("SELECT 1").await.unwrap_err()),
        "25P02"
    );
    d.simple_query("ROLLBACK").await.unwrap();
    // e's statement still runs, in the same transaction.
    let id: i64 = e.query_one(&insert, &[&5i64]).await.unwrap().get(0);
    assert_eq!(id, 5);
    e.simple_query("COMMIT").await.unwrap();
    // Without replay: 40001, as before.
    let err = f.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&err), "40001", "{err}");
    f.simple_query("ROLLBACK").await.unwrap();

    // Every committed row once; f's never.
    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    let rows: BTreeMap<i64, String> = direct
        .query("SELECT id, who FROM replay_t", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: BTreeMap<i64, String> = [(1, "a"), (2, "b"), (3, "e"), (4, "a"), (5, "e")]
        .into_iter()
        .map(|(k, v)| (k, v.to_owned()))
        .collect();
    assert_eq!(rows, want);
    for (c, name) in [(&a, "a"), (&b, "b"), (&d, "d"), (&e, "e"), (&f, "f")] {
        assert!(!c.is_closed(), "{name}'s connection broke");
    }
    // a, b, d, e replayed; c's diverged.
    assert!(
        replays(&p, "succeeded") >= 4,
        "{}",
        replays(&p, "succeeded")
    );
    assert!(refusals(&p, "results_differ") >= 1);
    assert_eq!(replays(&off, "attempted"), 0);
    assert!(refusals(&off, "disabled") >= 1);
    p.shutdown().await;
    off.shutdown().await;
}

fn outcomes(p: &pgkeel::ProxyHandle, result: &str) -> u64 {
    p.shared()
        .metrics
        .commit_outcomes_total
        .with_label_values(&[result])
        .get()
}

/// Waits until one backend of `appdb` shows `cond` (a pg_stat_activity
/// condition), and returns its pid.
async fn backend_where(direct: &Client, cond: &str) -> i32 {
    let sql = format!(
        "SELECT coalesce(max(pid), 0)::text FROM pg_stat_activity WHERE datname = 'appdb' AND pid <> pg_backend_pid() AND {cond}"
    );
    let pid = std::sync::atomic::AtomicI32::new(0);
    let seen = wait_until(Duration::from_secs(10), || async {
        let found: i32 = value(direct, &sql).await.parse().unwrap();
        pid.store(found, std::sync::atomic::Ordering::Relaxed);
        found != 0
    })
    .await;
    assert!(seen, "no backend with {cond}");
    pid.into_inner()
}

/// With `commit_outcome = "token"`, a COMMIT in flight when its server
/// crashed is resolved on the server that comes back: not committed (the
/// crash came while a deferred trigger ran), the transaction is replayed
/// and commits once; committed (the crash came while the COMMIT waited for
/// a synchronous standby, after its commit record was written), the client
/// gets its COMMIT and nothing runs twice. The same for autocommit writes,
/// whose token rides in their own query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_in_flight_at_a_crash_are_resolved_with_tokens() {
    let pg = tokio::task::spawn_blocking(common::start_own_pg)
        .await
        .unwrap();
    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    direct
        .batch_execute(pgkeel::commit_token::SQL)
        .await
        .unwrap();
    direct
        .batch_execute(
            "CREATE TABLE replay_c (id bigint PRIMARY KEY);
             GRANT ALL ON replay_c TO app;
             CREATE FUNCTION replay_slow() RETURNS trigger LANGUAGE plpgsql AS
               $$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$;
             CREATE CONSTRAINT TRIGGER replay_slow AFTER INSERT ON replay_c
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (NEW.id = 1)
               EXECUTE FUNCTION replay_slow()",
        )
        .await
        .unwrap();
    let p = start(&support::config(
        pg.port,
        "pool_size = 4",
        "[failover]\nhold_timeout = \"30s\"\ncommit_outcome = \"token\"",
    ))
    .await;

    // Not committed: killed in the deferred trigger.
    let g = client(&p).await;
    g.simple_query("BEGIN").await.unwrap();
    g.simple_query("INSERT INTO replay_c VALUES (1)")
        .await
        .unwrap();
    let commit = tokio::spawn(async move {
        let r = g.simple_query("COMMIT").await.map(|_| ());
        (g, r)
    });
    let victim = backend_where(&direct, "state = 'active' AND query = 'COMMIT'").await;
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let (g, committed) = commit.await.unwrap();
    committed.unwrap_or_else(|e| panic!("g's COMMIT: {:?}", e.as_db_error()));
    assert_eq!(outcomes(&p, "not_committed"), 1);
    assert!(replays(&p, "succeeded") >= 1);

    // An autocommit write in flight carries its token in its own query:
    // killed while it runs (not committed), it is replayed and commits once.
    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    let w = client(&p).await;
    let write = tokio::spawn(async move {
        let r = value(
            &w,
            "INSERT INTO replay_c SELECT 3 FROM pg_sleep(0.5) RETURNING id",
        )
        .await;
        (w, r)
    });
    let victim = backend_where(
        &direct,
        "state = 'active' AND query LIKE 'INSERT INTO replay_c SELECT 3%'",
    )
    .await;
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let (w, id) = write.await.unwrap();
    assert_eq!(id, "3");
    assert_eq!(outcomes(&p, "not_committed"), 2);

    // Committed: killed while waiting for a synchronous standby that is
    // not there (its commit record is written).
    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    for sql in [
        "ALTER SYSTEM SET synchronous_standby_names = 'nobody'",
        "SELECT pg_reload_conf()",
    ] {
        direct.batch_execute(sql).await.unwrap();
    }
    let h = client(&p).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            value(&h, "SHOW synchronous_standby_names").await == "nobody"
        })
        .await
    );
    h.simple_query("BEGIN").await.unwrap();
    h.simple_query("INSERT INTO replay_c VALUES (2)")
        .await
        .unwrap();
    let commit = tokio::spawn(async move {
        let r = h.simple_query("COMMIT").await.map(|_| ());
        (h, r)
    });
    let victim = backend_where(&direct, "wait_event = 'SyncRep'").await;
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let (h, committed) = commit.await.unwrap();
    committed.unwrap_or_else(|e| panic!("h's COMMIT: {:?}", e.as_db_error()));
    assert_eq!(outcomes(&p, "committed"), 1);
    // The same for an autocommit write: it committed, but its answer was
    // still in the server's buffer, and cannot be made up: the client is
    // told it committed (08006, never 40001), and it is not run again.
    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    let write = tokio::spawn(async move {
        let r = w
            .simple_query("INSERT INTO replay_c VALUES (4)")
            .await
            .map(|_| ());
        (w, r)
    });
    let victim = backend_where(&direct, "wait_event = 'SyncRep'").await;
    assert_eq!(unsafe { libc::kill(victim, libc::SIGKILL) }, 0);
    let (w, wrote) = write.await.unwrap();
    let err = wrote.expect_err("its answer was lost");
    assert_eq!(sqlstate(&err), "08006");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .contains("it committed"),
        "{err:?}"
    );
    assert_eq!(outcomes(&p, "committed"), 2);

    let direct = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    let ids: Vec<i64> = direct
        .query("SELECT id FROM replay_c ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4], "each transaction committed once");
    assert!(!g.is_closed() && !h.is_closed() && !w.is_closed());
    assert_eq!(outcomes(&p, "unknown"), 0);
    assert!(
        p.shared()
            .metrics
            .commit_tokens_total
            .with_label_values(&["recorded"])
            .get()
            >= 3
    );
    for sql in [
        "ALTER SYSTEM RESET synchronous_standby_names",
        "SELECT pg_reload_conf()",
    ] {
        direct.batch_execute(sql).await.unwrap();
    }
    p.shutdown().await;
}
