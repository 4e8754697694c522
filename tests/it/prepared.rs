//! Transaction pooling made transparent: named prepared statements and
//! session settings follow each client from one server connection to the
//! next; LISTEN and friends pin the client (or are refused); results of any
//! size stream through in bounded memory. Against the shared PostgreSQL,
//! with `pool_size = 2` so transactions keep changing server connections.

use crate::common;
use crate::support;

use std::time::Duration;

use common::shared_pg;
use support::*;
use tokio_postgres::AsyncMessage;

async fn proxy(proxy_lines: &str) -> pgkeel::ProxyHandle {
    let pg = shared_pg();
    start(&config(
        pg.port,
        &format!("pool_size = 2\n{proxy_lines}"),
        "",
    ))
    .await
}

/// A metric's value (summed over its series) from /metrics.
async fn metric(p: &pgkeel::ProxyHandle, name: &str) -> f64 {
    let (_, text) = http_get(p.admin_addr().unwrap(), "/metrics").await;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_follow_clients_across_server_connections() {
    let p = proxy("").await;
    let setup = app(p.local_addr()).await;
    setup
        .batch_execute(
            "DROP TABLE IF EXISTS ps_items; CREATE TABLE ps_items (id int PRIMARY KEY, v text);
             INSERT INTO ps_items SELECT g, 'v' || g FROM generate_series(1, 100) g;",
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..12 {
        let addr = p.local_addr();
        tasks.push(tokio::spawn(async move {
            let client = app(addr).await;
            // tokio-postgres names its statements s0, s1, ... per client:
            // every client uses the same names for different statements.
            let by_id = client
                .prepare("SELECT v FROM ps_items WHERE id = $1")
                .await
                .unwrap();
            let add = client.prepare("SELECT $1::int + $2::int").await.unwrap();
            let mine = client
                .prepare(&format!("SELECT {c}::int AS client"))
                .await
                .unwrap();
            for i in 0..60 {
                let id = (c * 7 + i) % 100 + 1;
                let row = client.query_one(&by_id, &[&id]).await.unwrap();
                assert_eq!(row.get::<_, String>(0), format!("v{id}"));
                let row = client.query_one(&add, &[&i, &c]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + c);
                let row = client.query_one(&mine, &[]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), c, "a statement of another client ran");
            }
            // Explicit transactions, with the statements inside.
            for i in 0..10 {
                client.batch_execute("BEGIN").await.unwrap();
                let row = client.query_one(&add, &[&i, &1]).await.unwrap();
                assert_eq!(row.get::<_, i32>(0), i + 1);
                client.batch_execute("COMMIT").await.unwrap();
            }
            // Closing one (drop) and preparing more keeps working.
            drop(mine);
            let again = client.prepare("SELECT 'again'::text").await.unwrap();
            let row = client.query_one(&again, &[]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "again");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let prepared = metric(&p, "pgkeel_prepared_statements_prepared_total").await;
    let hits = metric(&p, "pgkeel_prepared_statements_hits_total").await;
    assert!(prepared >= 3.0, "statements were prepared: {prepared}");
    assert!(
        hits > 12.0 * 60.0,
        "most uses found the statement already prepared: {hits}"
    );
    assert!(
        lent(&p) <= 2,
        "pool_size = 2 kept server connections at two"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_errors_and_names_behave_as_in_postgresql() {
    let p = proxy("").await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    // Reads up to ReadyForQuery; the ErrorResponse's (code, message).
    async fn error(raw: &mut Raw) -> (String, String) {
        let (msgs, _) = raw.until_ready().await;
        let (_, body) = msgs.iter().find(|m| m.0 == b'E').expect("an ErrorResponse");
        let f = pgkeel::protocol::parse_error_fields(body);
        let get = |c| {
            pgkeel::protocol::error_field(&f, c)
                .unwrap_or("")
                .to_owned()
        };
        (get(b'C'), get(b'M'))
    }
    // A Parse that fails leaves no statement behind.
    raw.send_msg(b'P', b"bad\0selec 1\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    assert_eq!(error(&mut raw).await.0, "42601");
    raw.send_msg(b'B', b"\0bad\0\0\0\0\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    let (code, msg) = error(&mut raw).await;
    assert_eq!(code, "26000");
    assert!(msg.contains("\"bad\""), "the client's own name: {msg}");
    // A name in use is an error; after Close it can be used again.
    raw.send_msg(b'P', b"one\0select 1\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    let (msgs, _) = raw.until_ready().await;
    assert_eq!(msgs.iter().map(|m| m.0).collect::<Vec<_>>(), b"1");
    raw.send_msg(b'P', b"one\0select 2\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    assert_eq!(error(&mut raw).await.0, "42P05");
    raw.send_msg(b'C', b"Sone\0").await;
    raw.send_msg(b'P', b"one\0select 2\0\0\0").await;
    raw.send_msg(b'B', b"\0one\0\0\0\0\0\0\0").await;
    raw.send_msg(b'E', b"\0\0\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    let (msgs, status) = raw.until_ready().await;
    assert_eq!(
        msgs.iter().map(|m| m.0).collect::<Vec<_>>(),
        b"312DC",
        "CloseComplete, ParseComplete, BindComplete, the row, done"
    );
    assert_eq!(&msgs[3].1[..], b"\0\x01\0\0\0\x012");
    assert_eq!(status, b'I');
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_each_client_and_do_not_leak() {
    let p = proxy("").await;
    let setup = app(p.local_addr()).await;
    setup
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS ps_a; CREATE SCHEMA IF NOT EXISTS ps_b;
             DROP TABLE IF EXISTS ps_a.t, ps_b.t;
             CREATE TABLE ps_a.t AS SELECT 'a'::text AS who;
             CREATE TABLE ps_b.t AS SELECT 'b'::text AS who;",
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..8 {
        let addr = p.local_addr();
        tasks.push(tokio::spawn(async move {
            let client = app(addr).await;
            let schema = ["ps_a", "ps_b"][c % 2];
            let plain = c % 4 == 3;
            if !plain {
                client
                    .batch_execute(&format!(
                        "SET search_path TO {schema}, public; SET statement_timeout = '{}ms'; SET application_name = 'client{c}'",
                        1001 + c
                    ))
                    .await
                    .unwrap();
            }
            for _ in 0..40 {
                let rows = client
                    .simple_query("SELECT current_setting('search_path'), current_setting('statement_timeout'), current_setting('application_name')")
                    .await
                    .unwrap();
                let row = rows
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                        _ => None,
                    })
                    .unwrap();
                if plain {
                    assert_eq!(row.get(0), Some("\"$user\", public"), "client {c} got someone's search_path");
                    assert_eq!(row.get(1), Some("0"), "client {c} got someone's statement_timeout");
                    assert_eq!(row.get(2), Some(""));
                } else {
                    assert_eq!(row.get(0), Some(format!("{schema}, public").as_str()));
                    assert_eq!(row.get(1), Some(format!("{}ms", 1001 + c).as_str()));
                    assert_eq!(row.get(2), Some(format!("client{c}").as_str()));
                    // Prepared (extended protocol) too, resolved in the client's schema.
                    let who: String = client.query_one("SELECT who FROM t", &[]).await.unwrap().get(0);
                    assert_eq!(who, &schema[3..]);
                }
            }
            if !plain {
                // RESET goes back to the default, everywhere.
                client.batch_execute("RESET statement_timeout").await.unwrap();
                for _ in 0..10 {
                    let v: String = client
                        .query_one("SELECT current_setting('statement_timeout')", &[])
                        .await
                        .unwrap()
                        .get(0);
                    assert_eq!(v, "0");
                }
                // SET LOCAL ends with its transaction.
                client
                    .batch_execute("BEGIN; SET LOCAL search_path TO public; COMMIT")
                    .await
                    .unwrap();
                let who: String = client.query_one("SELECT who FROM t", &[]).await.unwrap().get(0);
                assert_eq!(who, &schema[3..]);
                // A SET rolled back never happened.
                client
                    .batch_execute("BEGIN; SET search_path TO public; ROLLBACK")
                    .await
                    .unwrap();
                let who: String = client.query_one("SELECT who FROM t", &[]).await.unwrap().get(0);
                assert_eq!(who, &schema[3..]);
                // DISCARD ALL: back to the defaults.
                client.batch_execute("DISCARD ALL").await.unwrap();
                let v: String = client
                    .query_one("SELECT current_setting('search_path')", &[])
                    .await
                    .unwrap()
                    .get(0);
                assert_eq!(v, "\"$user\", public");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Startup options follow the client too.
    let (opts, conn) = tokio_postgres::connect(
        &format!(
            "{} options='-c search_path=ps_b,public'",
            url(p.local_addr(), "app", "app_password", "appdb")
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for _ in 0..5 {
        let who: String = opts
            .query_one("SELECT who FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "b");
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_pins_the_client_and_notifications_arrive() {
    let p = proxy("").await;
    let (listener, mut msgs, _task) = connect_msgs(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap();
    listener.batch_execute("LISTEN ps_jobs").await.unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            metric(&p, "pgkeel_pinned_clients").await == 1.0
        })
        .await,
        "the listening client is pinned"
    );
    // Other clients still share the pool's other connection.
    let other = app(p.local_addr()).await;
    for i in 0..5 {
        other
            .batch_execute(&format!("NOTIFY ps_jobs, 'job {i}'"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let m = tokio::time::timeout(Duration::from_secs(10), msgs.recv())
            .await
            .expect("notification arrives")
            .unwrap();
        match m {
            AsyncMessage::Notification(n) => {
                assert_eq!(
                    (n.channel(), n.payload()),
                    ("ps_jobs", format!("job {i}").as_str())
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // A session advisory lock pins too, and is held across transactions.
    let locker = app(p.local_addr()).await;
    locker
        .batch_execute("SELECT pg_advisory_lock(4242)")
        .await
        .unwrap();
    let held: bool = locker
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(held, "the lock is on the connection the client keeps");
    assert_eq!(metric(&p, "pgkeel_client_pins_total").await, 2.0);
    drop(locker);
    drop(listener);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            metric(&p, "pgkeel_pinned_clients").await == 0.0
        })
        .await,
        "pins end with their clients"
    );
    // Their connections went back clean (DISCARD ALL): nobody listens or locks.
    let check = app(p.local_addr()).await;
    for _ in 0..4 {
        let row = check
            .query_one(
                "SELECT (SELECT count(*) FROM pg_listening_channels()), (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')",
                &[],
            )
            .await
            .unwrap();
        assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 0));
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_not_in_pin_on_are_refused_with_0a000() {
    let p = proxy("pin_on = []").await;
    let client = app(p.local_addr()).await;
    let e = client.batch_execute("LISTEN nope").await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    let db = e.as_db_error().unwrap();
    assert!(db.message().contains("LISTEN"), "{}", db.message());
    assert!(
        db.hint().unwrap_or("").contains("pin_on"),
        "{:?}",
        db.hint()
    );
    // Extended protocol: refused at Parse, in step.
    let e = client
        .query("SELECT pg_advisory_lock($1)", &[&1i64])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    let e = client
        .batch_execute("BEGIN; CREATE TEMP TABLE tt (x int); COMMIT")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "0A000");
    client.batch_execute("ROLLBACK").await.unwrap();
    // Transaction-scoped forms are fine.
    client
        .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(1); CREATE TEMP TABLE tt (x int) ON COMMIT DROP; COMMIT")
        .await
        .unwrap();
    let v: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(v, 1);
    assert_eq!(metric(&p, "pgkeel_pinned_clients").await, 0.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_mode_runs_clean() {
    let pg = shared_pg();
    let p = proxy("").await;
    let addr = p.local_addr();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("pgbench")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &addr.port().to_string(),
                "-U",
                "app",
            ])
            .args(args)
            .arg("appdb")
            .env("PGPASSWORD", "app_password")
            .output()
            .expect("pgbench runs (postgresql-client-15)");
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    let _ = pg;
    let (ok, out) = run(&["-i", "-q", "-s", "1"]);
    assert!(ok, "pgbench -i: {out}");
    // One thread per client: pgbench prepares with a blocking PQprepare,
    // which would stall a thread's other clients mid-transaction while it
    // waits for one of the two server connections they hold.
    let (ok, out) = run(&["-M", "prepared", "-c", "10", "-j", "10", "-t", "40"]);
    assert!(ok, "pgbench -M prepared: {out}");
    assert!(
        out.contains("number of failed transactions: 0") || !out.contains("failed"),
        "{out}"
    );
    assert!(
        out.contains("number of transactions actually processed: 400/400"),
        "{out}"
    );
    assert!(metric(&p, "pgkeel_prepared_statements_prepared_total").await >= 7.0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_execute_deallocate_follow_the_client() {
    let p = proxy("").await;
    let setup = app(p.local_addr()).await;
    setup
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS sq_a; DROP TABLE IF EXISTS sq_a.items;
             CREATE TABLE sq_a.items (id int, val text);",
        )
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for c in 0..4 {
        let addr = p.local_addr();
        tasks.push(tokio::spawn(async move {
            let client = app(addr).await;
            let one = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
                rows.iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).unwrap_or("")).collect::<Vec<_>>().join("|"))
                        }
                        _ => None,
                    })
                    .collect()
            };
            client.simple_query("SET search_path TO sq_a").await.unwrap();
            client
                .simple_query(&format!("SET application_name TO 'sq{c}'"))
                .await
                .unwrap();
            client
                .simple_query("PREPARE ins(int, text) AS INSERT INTO items VALUES ($1, $2)")
                .await
                .unwrap();
            client
                .simple_query("PREPARE sel(int) AS SELECT val, current_schema(), current_setting('application_name') FROM items WHERE id = $1")
                .await
                .unwrap();
            for n in 0..30 {
                let id = c * 1000 + n;
                client.simple_query("BEGIN").await.unwrap();
                client
                    .simple_query(&format!("EXECUTE ins({id}, 'v{id}')"))
                    .await
                    .unwrap();
                let rows = one(client.simple_query(&format!("EXECUTE sel({id})")).await.unwrap());
                assert_eq!(rows, vec![format!("v{id}|sq_a|sq{c}")], "client {c} n {n}");
                client.simple_query("COMMIT").await.unwrap();
            }
            client.simple_query("DEALLOCATE sel").await.unwrap();
            let e = client.simple_query("EXECUTE sel(1)").await.unwrap_err();
            assert_eq!(sqlstate(&e), "26000");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    p.shutdown().await;
}

/// A raw client's message types up to ReadyForQuery, and the first
/// ErrorResponse's (code, message) if any.
async fn answer_of(raw: &mut Raw) -> (String, Option<(String, String)>) {
    let (msgs, _) = raw.until_ready().await;
    let types = msgs.iter().map(|m| m.0 as char).collect();
    let error = msgs.iter().find(|m| m.0 == b'E').map(|(_, body)| {
        let f = pgkeel::protocol::parse_error_fields(body);
        let get = |c| {
            pgkeel::protocol::error_field(&f, c)
                .unwrap_or("")
                .to_owned()
        };
        (get(b'C'), get(b'M'))
    });
    (types, error)
}

/// Parse + Bind (text parameters) + Execute + Sync of statement `name`.
async fn run_named(raw: &mut Raw, name: &str, sql: &str, params: &[&str]) {
    raw.send_msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
        .await;
    let mut bind = format!("\0{name}\0").into_bytes();
    bind.extend_from_slice(&[0, 0]);
    bind.extend_from_slice(&(params.len() as i16).to_be_bytes());
    for p in params {
        bind.extend_from_slice(&(p.len() as i32).to_be_bytes());
        bind.extend_from_slice(p.as_bytes());
    }
    bind.extend_from_slice(&[0, 0]);
    raw.send_msg(b'B', &bind).await;
    raw.send_msg(b'E', b"\0\0\0\0\0").await;
    raw.send_msg(b'S', b"").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_deallocated_by_sql_can_be_prepared_again() {
    // What psycopg's LRU does: DEALLOCATE _pg3_N as SQL, then the same
    // name for another statement.
    let p = proxy("").await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    run_named(&mut raw, "_pg3_0", "select 1", &[]).await;
    assert_eq!(answer_of(&mut raw).await, ("12DC".into(), None));
    raw.query("DEALLOCATE _pg3_0").await;
    assert_eq!(answer_of(&mut raw).await, ("C".into(), None));
    run_named(&mut raw, "_pg3_0", "select 2", &[]).await;
    assert_eq!(answer_of(&mut raw).await, ("12DC".into(), None));
    raw.query("DEALLOCATE _pg3_9").await;
    let (_, error) = answer_of(&mut raw).await;
    assert_eq!(error.unwrap().0, "26000");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_dropped_and_created_again_is_not_used_through_an_old_statement() {
    // One server connection, so the second round meets the first round's
    // shared statement, whose parameter type was the first enum's OID.
    let pg = shared_pg();
    let p = start(&config(pg.port, "pool_size = 1", "")).await;
    let sql = "select $1::ps_round_enum::text";
    for round in 0..3 {
        let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
        raw.query("BEGIN; CREATE TYPE ps_round_enum AS ENUM ('a', 'b')")
            .await;
        assert_eq!(answer_of(&mut raw).await.1, None);
        run_named(&mut raw, "s", sql, &["b"]).await;
        assert_eq!(
            answer_of(&mut raw).await,
            ("12DC".into(), None),
            "round {round}"
        );
        // Inside a savepoint too: rolled back, created again.
        raw.query("SAVEPOINT sp; DROP TYPE ps_round_enum; CREATE TYPE ps_round_enum AS ENUM ('b')")
            .await;
        assert_eq!(answer_of(&mut raw).await.1, None);
        run_named(&mut raw, "s2", sql, &["b"]).await;
        assert_eq!(
            answer_of(&mut raw).await,
            ("12DC".into(), None),
            "round {round}"
        );
        raw.query("ROLLBACK TO SAVEPOINT sp").await;
        assert_eq!(answer_of(&mut raw).await.1, None);
        run_named(&mut raw, "s3", sql, &["a"]).await;
        assert_eq!(
            answer_of(&mut raw).await,
            ("12DC".into(), None),
            "round {round}"
        );
        raw.query("ROLLBACK").await;
        assert_eq!(answer_of(&mut raw).await.1, None);
    }
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_prepared_statements_shows_each_client_only_its_own() {
    let p = proxy("").await;
    let setup = app(p.local_addr()).await;
    setup
        .batch_execute("DROP TABLE IF EXISTS ps_view; CREATE TABLE ps_view (data jsonb)")
        .await
        .unwrap();
    let a = app(p.local_addr()).await;
    let b = app(p.local_addr()).await;
    // tokio-postgres numbers its statements process-wide: s<N>.
    let list = "SELECT regexp_replace(name, '^s[0-9]+$', 's<N>'), statement, \
                parameter_types::text, from_sql, prepare_time <= clock_timestamp() \
                FROM pg_prepared_statements ORDER BY name";
    let rows = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| -> Vec<String> {
        msgs.iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL"))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect()
    };
    // In one transaction: the statement is prepared on the connection the
    // list is read on, so the server's inferred types show.
    a.batch_execute("BEGIN").await.unwrap();
    let ins = a.prepare("INSERT INTO ps_view VALUES ($1)").await.unwrap();
    a.execute(&ins, &[&JsonText("{}")]).await.unwrap();
    a.simple_query("PREPARE mine(int) AS SELECT $1")
        .await
        .unwrap();
    assert_eq!(
        rows(a.simple_query(list).await.unwrap()),
        vec![
            "mine|PREPARE mine(int) AS SELECT $1|{integer}|t|t".to_owned(),
            "s<N>|INSERT INTO ps_view VALUES ($1)|{jsonb}|f|t".to_owned(),
        ]
    );
    a.batch_execute("COMMIT").await.unwrap();
    // Another client sees none of them, nor pgkeel's server-side names.
    assert_eq!(
        rows(b.simple_query(list).await.unwrap()),
        Vec::<String>::new()
    );
    let n: i64 = b
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_prepared_statements p WHERE p.name LIKE 'pgkeel%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "extended protocol too");
    // Deallocated names leave the list.
    a.simple_query("DEALLOCATE mine").await.unwrap();
    let names = rows(a.simple_query(list).await.unwrap());
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("s<N>|"), "{names:?}");
    p.shutdown().await;
}

/// A jsonb parameter, in jsonb's binary format.
#[derive(Debug)]
struct JsonText(&'static str);

impl tokio_postgres::types::ToSql for JsonText {
    fn to_sql(
        &self,
        _: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary format: version 1, then the text.
        out.extend_from_slice(&[1]);
        out.extend_from_slice(self.0.as_bytes());
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::JSONB
    }
    tokio_postgres::types::to_sql_checked!();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_all_as_a_named_statement_runs_and_clears_the_names() {
    let p = proxy("").await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    run_named(&mut raw, "keep", "select 1", &[]).await;
    assert_eq!(answer_of(&mut raw).await.1, None);
    run_named(&mut raw, "d", "DISCARD ALL", &[]).await;
    assert_eq!(answer_of(&mut raw).await, ("12C".into(), None));
    // Both names are gone, as on PostgreSQL, and free to use again.
    run_named(&mut raw, "keep", "select 2", &[]).await;
    assert_eq!(answer_of(&mut raw).await, ("12DC".into(), None));
    run_named(&mut raw, "d", "select 3", &[]).await;
    assert_eq!(answer_of(&mut raw).await, ("12DC".into(), None));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failing_before_an_eviction_keeps_the_statement_usable() {
    // Two statements per server connection: the second batch's Parse of
    // "b" evicts "a", but an earlier error makes the server skip that Close.
    let pg = shared_pg();
    let p = start(&config(
        pg.port,
        "pool_size = 1\nprepared_statements_cache_size = 2",
        "",
    ))
    .await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    run_named(&mut raw, "a", "select 'ps_evict_a'", &[]).await;
    assert_eq!(answer_of(&mut raw).await.1, None);
    raw.send_msg(b'P', b"bad\0selec\0\0\0").await;
    raw.send_msg(b'P', b"b\0select 'ps_evict_b'\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    assert_eq!(answer_of(&mut raw).await.1.unwrap().0, "42601");
    // "a" is still the client's and still on the server: it runs.
    raw.send_msg(b'B', b"\0a\0\0\0\0\0\0\0").await;
    raw.send_msg(b'E', b"\0\0\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    assert_eq!(answer_of(&mut raw).await, ("2DC".into(), None));
    p.shutdown().await;
}
