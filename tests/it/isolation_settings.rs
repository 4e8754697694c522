//! Clients of one pool never see each other's session: settings that
//! `pg_settings` hides (custom `app.tenant` ones, ROLE, set_config, SESSION
//! AUTHORIZATION) do not reach the next client of a server connection, yet
//! follow their own client; pgkeel's server-side statement names cannot be
//! redefined, executed or deallocated by a client. Transaction mode with
//! `pool_size = 1`, so consecutive clients share one server connection.

use crate::common;
use crate::support;

use common::{pg_client, shared_pg};
use support::*;
use tokio_postgres::Client;

async fn proxy(proxy_lines: &str) -> pgkeel::ProxyHandle {
    let pg = shared_pg();
    start(&config(
        pg.port,
        &format!("pool_size = 1\n{proxy_lines}"),
        "[[users]]\nname = \"postgres\"\npassword = \"postgres\"\n",
    ))
    .await
}

/// The value of a one-column, one-row simple query ("" for NULL).
async fn value(c: &Client, sql: &str) -> String {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .expect("a row")
}

async fn tenant(c: &Client) -> String {
    value(
        c,
        "SELECT coalesce(current_setting('app.tenant', true), '')",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_settings_and_role_follow_their_client_and_nobody_else() {
    let pg = shared_pg();
    let su = pg_client(pg.port, "postgres", "postgres", "appdb").await;
    su.batch_execute(
        "DO $$BEGIN CREATE ROLE iso_reader NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$;
         GRANT iso_reader TO app",
    )
    .await
    .unwrap();
    let p = proxy("").await;
    let a = app(p.local_addr()).await;
    let b = app(p.local_addr()).await;

    // The tenant GUC row-level security reads.
    a.batch_execute("SET app.tenant = 'A'").await.unwrap();
    for _ in 0..3 {
        assert_eq!(tenant(&b).await, "", "B read A's tenant");
        assert_eq!(tenant(&a).await, "A", "A keeps its own tenant");
    }
    // In a batch, with other statements, and quoted.
    a.batch_execute("SELECT 1; /* x */ SET \"app\".tenant TO 'A2'; SELECT 2")
        .await
        .unwrap();
    assert_eq!(tenant(&b).await, "");
    assert_eq!(tenant(&a).await, "A2");
    b.batch_execute("SET app.tenant = 'B'").await.unwrap();
    assert_eq!(tenant(&a).await, "A2");
    assert_eq!(tenant(&b).await, "B");

    // set_config, simple and extended protocol.
    a.batch_execute("SELECT set_config('app.other', 'X', false)")
        .await
        .unwrap();
    a.query_one(
        "SELECT pg_catalog.set_config('app.ext', $1, false)",
        &[&"E"],
    )
    .await
    .unwrap();
    let both = "SELECT coalesce(current_setting('app.other', true), '') || '/' || coalesce(current_setting('app.ext', true), '')";
    assert_eq!(value(&b, both).await, "/");
    assert_eq!(value(&a, both).await, "X/E");

    // A statement the client prepared that sets one, run later by EXECUTE.
    a.batch_execute("PREPARE st AS SELECT set_config('app.prepared', 'P', false)")
        .await
        .unwrap();
    a.batch_execute("EXECUTE st").await.unwrap();
    let prepared = "SELECT coalesce(current_setting('app.prepared', true), '')";
    assert_eq!(value(&b, prepared).await, "");
    assert_eq!(value(&a, prepared).await, "P");

    // SET ROLE.
    a.batch_execute("SET ROLE iso_reader").await.unwrap();
    assert_eq!(value(&b, "SELECT current_user").await, "app");
    assert_eq!(value(&b, "SELECT current_setting('role')").await, "none");
    assert_eq!(value(&a, "SELECT current_user").await, "iso_reader");
    a.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(value(&a, "SELECT current_user").await, "app");

    // RESET and DISCARD ALL still work for the client itself.
    a.batch_execute("RESET app.tenant").await.unwrap();
    assert_eq!(tenant(&a).await, "");
    assert_eq!(tenant(&b).await, "B");
    a.batch_execute("SET app.tenant = 'A3'").await.unwrap();
    a.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(tenant(&a).await, "");
    assert_eq!(value(&a, both).await, "/");
    assert_eq!(tenant(&b).await, "B");
    b.batch_execute("RESET ALL").await.unwrap();
    assert_eq!(tenant(&b).await, "");

    // A client that leaves: its settings stay with it.
    let c = app(p.local_addr()).await;
    c.batch_execute("SET app.tenant = 'C'").await.unwrap();
    drop(c);
    let d = app(p.local_addr()).await;
    assert_eq!(tenant(&d).await, "");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untracked_settings_close_the_connection() {
    let p = proxy("").await;
    let a = app(p.local_addr()).await;
    let b = app(p.local_addr()).await;
    async fn pid(c: &Client) -> String {
        value(c, "SELECT pg_backend_pid()::text").await
    }
    let before = pid(&b).await;
    // A computed name: nothing pgkeel could read back or reset by name.
    a.batch_execute("SELECT set_config('app.' || 'dyn', 'U', false)")
        .await
        .unwrap();
    let dynamic = "SELECT coalesce(current_setting('app.dyn', true), '')";
    assert_eq!(value(&b, dynamic).await, "");
    assert_ne!(pid(&b).await, before, "the connection was closed, not lent");
    a.batch_execute("DO $$BEGIN PERFORM set_config('app.dyn', 'D', false); END$$")
        .await
        .unwrap();
    assert_eq!(value(&b, dynamic).await, "");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_authorization_pins_and_never_leaks() {
    let p = proxy("").await;
    let addr = p.local_addr();
    let s = connect(addr, "postgres", "postgres", "appdb")
        .await
        .unwrap();
    s.batch_execute("SET SESSION AUTHORIZATION app")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(value(&s, "SELECT session_user").await, "app");
    }
    drop(s);
    // Same pool (user postgres), same single server connection.
    let next = connect(addr, "postgres", "postgres", "appdb")
        .await
        .unwrap();
    assert_eq!(value(&next, "SELECT session_user").await, "postgres");
    p.shutdown().await;

    // Without pinning it, it is refused.
    let p = proxy("pin_on = []").await;
    let s = connect(p.local_addr(), "postgres", "postgres", "appdb")
        .await
        .unwrap();
    let e = s
        .batch_execute("SET SESSION AUTHORIZATION app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(value(&s, "SELECT session_user").await, "postgres");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgkeel_statement_names_are_off_limits() {
    let p = proxy("").await;
    let victim = app(p.local_addr()).await;
    let attacker = app(p.local_addr()).await;
    let stmt = victim
        .prepare("SELECT 'victim:' || $1::text")
        .await
        .unwrap();
    async fn run(c: &Client, s: &tokio_postgres::Statement) -> String {
        c.query_one(s, &[&"x"]).await.unwrap().get::<_, String>(0)
    }
    assert_eq!(run(&victim, &stmt).await, "victim:x");
    // On the very server connection the victim used, the attacker's
    // pg_prepared_statements shows only its own statements: none.
    assert_eq!(
        value(&attacker, "SELECT count(*) FROM pg_prepared_statements").await,
        "0"
    );
    // Say it learned the real name anyway (pgkeel's own, read from inside
    // the process: one statement, the first one interned).
    assert_eq!(p.shared().statements.len(), 1);
    let name = format!("{}1", p.shared().statements.prefix());
    assert_ne!(name, "pgkeel_1", "the name is not guessable");
    for (sql, code) in [
        (
            format!("DEALLOCATE {name}; PREPARE {name}(text) AS SELECT 'HIJACKED:' || $1"),
            "42P05",
        ),
        (
            "DEALLOCATE pgkeel_1; PREPARE pgkeel_1(text) AS SELECT 'HIJACKED:' || $1".into(),
            "42P05",
        ),
        (format!("DEALLOCATE \"{name}\""), "26000"),
        (
            format!("deallocate prepare {}", name.to_uppercase()),
            "26000",
        ),
        (format!("EXECUTE {name}('x')"), "26000"),
        (format!("EXPLAIN ANALYZE EXECUTE {name}('x')"), "26000"),
        (format!("PREPARE {name}(text) AS SELECT 1"), "42P05"),
    ] {
        let e = attacker.batch_execute(&sql).await.unwrap_err();
        assert_eq!(sqlstate(&e), code, "{sql}");
    }
    // Through Parse too (the extended protocol).
    let e = attacker
        .query(&format!("DEALLOCATE {name}"), &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "26000");
    assert_eq!(run(&victim, &stmt).await, "victim:x");

    // The client's own SQL-level statements: alone in a query they work,
    // in a batch they are refused (the names would not be rewritten).
    let e = attacker
        .batch_execute("PREPARE mine AS SELECT 1; EXECUTE mine")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    attacker
        .batch_execute("PREPARE mine AS SELECT 'mine'::text")
        .await
        .unwrap();
    assert_eq!(value(&attacker, "EXECUTE mine").await, "mine");
    attacker.batch_execute("DEALLOCATE mine").await.unwrap();

    // DEALLOCATE ALL from anyone: the victim's statement is prepared again.
    attacker.batch_execute("DEALLOCATE ALL").await.unwrap();
    assert_eq!(run(&victim, &stmt).await, "victim:x");
    attacker.batch_execute("DISCARD ALL").await.unwrap();
    assert_eq!(run(&victim, &stmt).await, "victim:x");
    p.shutdown().await;
}
