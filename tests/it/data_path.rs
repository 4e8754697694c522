//! The data path against a real PostgreSQL: queries, transactions, COPY,
//! notices, pooling, cleanup when clients leave, cancel, server failures,
//! graceful shutdown.

use crate::common;
use crate::support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_postgres::{AsyncMessage, SimpleQueryMessage};

fn pg_port() -> u16 {
    common::shared_pg().port
}

async fn superuser() -> tokio_postgres::Client {
    common::pg_client(pg_port(), "postgres", "postgres", "postgres").await
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    rows(&c.simple_query(sql).await.unwrap())[0][0].clone()
}

#[tokio::test]
async fn queries_transactions_and_extended_protocol() {
    let p = start(&config(pg_port(), "", "")).await;
    let c = app(p.local_addr()).await;
    c.simple_query("CREATE TABLE IF NOT EXISTS dp_basic (id int primary key, v text)")
        .await
        .unwrap();
    c.simple_query("TRUNCATE dp_basic").await.unwrap();
    c.simple_query("BEGIN; INSERT INTO dp_basic VALUES (1, 'one'); COMMIT")
        .await
        .unwrap();
    // Extended protocol with parameters, unnamed statement, one round trip.
    let r = c
        .query_typed(
            "SELECT v, $1::int + 1 FROM dp_basic WHERE id = $2",
            &[
                (&41i32, tokio_postgres::types::Type::INT4),
                (&1i32, tokio_postgres::types::Type::INT4),
            ],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, String>(0), "one");
    assert_eq!(r[0].get::<_, i32>(1), 42);
    // An error inside a transaction, then rollback, leaves the session usable.
    c.simple_query("BEGIN").await.unwrap();
    let e = c
        .simple_query("INSERT INTO dp_basic VALUES (1, 'dup')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "23505");
    let e = c.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(
        sqlstate(&e),
        "25P02",
        "aborted transaction stays aborted until ROLLBACK"
    );
    c.simple_query("ROLLBACK").await.unwrap();
    assert_eq!(one(&c, "SELECT count(*) FROM dp_basic").await, "1");
    p.shutdown().await;
}

#[tokio::test]
async fn copy_in_and_out() {
    let p = start(&config(pg_port(), "", "")).await;
    let c = app(p.local_addr()).await;
    c.simple_query("CREATE TABLE IF NOT EXISTS dp_copy (id int, v text); TRUNCATE dp_copy")
        .await
        .unwrap();
    let sink = c.copy_in("COPY dp_copy FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let mut data = String::new();
    for i in 0..10_000 {
        data.push_str(&format!("{i}\trow {i}\n"));
    }
    sink.send(bytes::Bytes::from(data.clone())).await.unwrap();
    let n = sink.finish().await.unwrap();
    assert_eq!(n, 10_000);
    let stream = c
        .copy_out("COPY (SELECT * FROM dp_copy ORDER BY id) TO STDOUT")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = stream.map(|r| r.unwrap()).collect().await;
    let out: Vec<u8> = chunks.concat();
    assert_eq!(String::from_utf8(out).unwrap(), data);
    // Between transactions the client holds no server connection: COPY's
    // protocol quirks (Sync ignored in copy-in mode) must not pin it.
    assert!(
        wait_until(Duration::from_secs(5), || async { lent(&p) == 0 }).await,
        "server connection still lent after COPY"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn notices_and_notifications_are_delivered() {
    let p = start(&config(pg_port(), "pool_mode = \"session\"", "")).await;
    let (c, mut msgs, _t) = connect_msgs(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap();
    c.simple_query("DO $$ BEGIN RAISE NOTICE 'hello from plpgsql'; END $$")
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), msgs.recv())
        .await
        .unwrap()
        .unwrap()
    {
        AsyncMessage::Notice(n) => assert_eq!(n.message(), "hello from plpgsql"),
        other => panic!("expected a notice, got {other:?}"),
    }
    c.simple_query("LISTEN dp_chan").await.unwrap();
    // NOTIFY is per database.
    let other = common::pg_client(pg_port(), "postgres", "postgres", "appdb").await;
    other
        .simple_query("NOTIFY dp_chan, 'payload-1'")
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(5), msgs.recv())
        .await
        .unwrap()
        .unwrap()
    {
        AsyncMessage::Notification(n) => {
            assert_eq!(n.channel(), "dp_chan");
            assert_eq!(n.payload(), "payload-1");
        }
        other => panic!("expected a notification, got {other:?}"),
    }
    p.shutdown().await;
}

#[tokio::test]
async fn parameter_status_and_backend_key_at_login() {
    let p = start(&config(pg_port(), "pool_mode = \"session\"", "")).await;
    let (mut raw, welcome) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    let params: Vec<String> = welcome
        .iter()
        .filter(|(t, _)| *t == b'S')
        .map(|(_, b)| {
            String::from_utf8_lossy(&b[..b.iter().position(|&c| c == 0).unwrap()]).into_owned()
        })
        .collect();
    for want in [
        "server_version",
        "client_encoding",
        "DateStyle",
        "integer_datetimes",
        "standard_conforming_strings",
    ] {
        assert!(
            params.iter().any(|p| p == want),
            "{want} missing from {params:?}"
        );
    }
    assert!(welcome.iter().any(|(t, b)| *t == b'K' && b.len() == 8));
    // A SET of a reported parameter comes back as ParameterStatus.
    raw.query("SET application_name = 'pgkeel-test'").await;
    let (msgs, status) = raw.until_ready().await;
    assert_eq!(status, b'I');
    assert!(msgs
        .iter()
        .any(|(t, b)| *t == b'S' && b.starts_with(b"application_name\0pgkeel-test\0")));
    p.shutdown().await;
}

#[tokio::test]
async fn many_clients_share_a_small_pool() {
    let p = start(&config(pg_port(), "pool_size = 2", "")).await;
    let addr = p.local_addr();
    let mut tasks = Vec::new();
    for i in 0..40 {
        tasks.push(tokio::spawn(async move {
            let c = app(addr).await;
            for j in 0..10 {
                let v = one(&c, &format!("SELECT {i} * 100 + {j}")).await;
                assert_eq!(v, (i * 100 + j).to_string());
            }
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let pools = p.shared().pools.all();
    let pool = pools
        .iter()
        .find(|p| p.key.database == "appdb" && p.key.user == "app")
        .unwrap();
    let opened = pool
        .stats
        .total_connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        (1..=2).contains(&opened),
        "40 clients used {opened} server connections"
    );
    assert_eq!(clients.len(), 40);
    p.shutdown().await;
}

#[tokio::test]
async fn pool_exhausted_past_query_wait_timeout_is_53300() {
    let p = start(&config(
        pg_port(),
        "pool_size = 1\nquery_wait_timeout = \"300ms\"",
        "",
    ))
    .await;
    let a = app(p.local_addr()).await;
    let b = app(p.local_addr()).await;
    // A bare BEGIN takes no server connection yet; its first statement does.
    a.simple_query("BEGIN").await.unwrap();
    assert_eq!(one(&b, "SELECT 6").await, "6");
    a.simple_query("SELECT 1").await.unwrap();
    let e = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    // Extended protocol gets the same error, and the session stays in step.
    let e = b
        .query_typed(
            "SELECT $1::int",
            &[(&1i32, tokio_postgres::types::Type::INT4)],
        )
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    a.simple_query("COMMIT").await.unwrap();
    assert_eq!(one(&b, "SELECT 7").await, "7");
    p.shutdown().await;
}

#[tokio::test]
async fn client_leaving_inside_a_transaction_is_rolled_back() {
    let p = start(&config(pg_port(), "pool_size = 1", "")).await;
    let setup = app(p.local_addr()).await;
    setup
        .simple_query("CREATE TABLE IF NOT EXISTS dp_rollback (v text)")
        .await
        .unwrap();
    drop(setup);
    for abrupt in [false, true] {
        let (a, _m, task) = connect_msgs(p.local_addr(), "app", "app_password", "appdb")
            .await
            .unwrap();
        a.simple_query(&format!(
            "BEGIN; INSERT INTO dp_rollback VALUES ('abrupt={abrupt}')"
        ))
        .await
        .unwrap();
        if abrupt {
            // The socket closes without a Terminate message.
            task.abort();
        } else {
            drop(a);
        }
        let b = app(p.local_addr()).await;
        // Same (only) server connection: it must be outside any transaction.
        assert_eq!(one(&b, "SELECT count(*) FROM dp_rollback").await, "0");
        assert_eq!(
            one(
                &b,
                "SELECT coalesce(txid_current_if_assigned()::text, 'none')"
            )
            .await,
            "none"
        );
        assert_eq!(
            one(&b, "SELECT current_setting('transaction_isolation')").await,
            "read committed"
        );
    }
    p.shutdown().await;
}

#[tokio::test]
async fn client_vanishing_mid_query_frees_its_server() {
    let p = start(&config(pg_port(), "pool_size = 1", "")).await;
    let (a, _m, task) = connect_msgs(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap();
    let q =
        tokio::spawn(async move { a.simple_query("SELECT pg_sleep(60) /* dp_vanish */").await });
    let su = superuser().await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%dp_vanish%' AND state = 'active' AND pid <> pg_backend_pid()";
    assert!(
        wait_until(Duration::from_secs(10), || async {
            one(&su, running).await == "1"
        })
        .await
    );
    task.abort();
    q.abort();
    // pgkeel cancels the orphaned query and the pool serves the next client.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            one(&su, running).await == "0"
        })
        .await,
        "orphaned query still running"
    );
    let b = app(p.local_addr()).await;
    assert_eq!(one(&b, "SELECT 1").await, "1");
    p.shutdown().await;
}

#[tokio::test]
async fn cancel_request_reaches_the_running_query() {
    let p = start(&config(pg_port(), "pool_size = 2", "")).await;
    let c = app(p.local_addr()).await;
    let token = c.cancel_token();
    let q = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(30) /* dp_cancel */").await;
        (r, c)
    });
    let su = superuser().await;
    let running = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%dp_cancel%' AND state = 'active' AND pid <> pg_backend_pid()";
    assert!(
        wait_until(Duration::from_secs(10), || async {
            one(&su, running).await == "1"
        })
        .await
    );
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    // 57014 is the cancel's: the 30 s sleep would have ended without error.
    let (r, c) = q.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    // The session goes on.
    assert_eq!(one(&c, "SELECT 2").await, "2");
    p.shutdown().await;
}

#[tokio::test]
async fn session_mode_keeps_state_and_resets_it_for_the_next_client() {
    let p = start(&config(
        pg_port(),
        "pool_mode = \"session\"\npool_size = 1",
        "",
    ))
    .await;
    let a = app(p.local_addr()).await;
    a.simple_query("SET application_name = 'dp-session'")
        .await
        .unwrap();
    a.simple_query("CREATE TEMP TABLE dp_tmp (x int)")
        .await
        .unwrap();
    assert_eq!(one(&a, "SHOW application_name").await, "dp-session");
    assert_eq!(one(&a, "SELECT count(*) FROM dp_tmp").await, "0");
    drop(a);
    let b = app(p.local_addr()).await;
    assert_eq!(one(&b, "SHOW application_name").await, "");
    let e = b.simple_query("SELECT * FROM dp_tmp").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    p.shutdown().await;
}

#[tokio::test]
async fn server_vanishing_mid_result_gives_an_error_not_a_hang() {
    let p = start(&config(pg_port(), "pool_size = 2", "")).await;
    let c = app(p.local_addr()).await;
    let q = tokio::spawn(async move {
        // Rows stream out, then the backend stalls mid-result.
        let r = c
            .simple_query("SELECT g, pg_sleep(CASE WHEN g = 5000 THEN 60 ELSE 0 END) /* dp_midresult */ FROM generate_series(1, 10000) g")
            .await;
        (r, c)
    });
    let su = superuser().await;
    let find = "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%dp_midresult%' AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()";
    assert!(
        wait_until(Duration::from_secs(10), || async {
            one(&su, find).await == "1"
        })
        .await
    );
    su.simple_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%dp_midresult%' AND pid <> pg_backend_pid()")
        .await
        .unwrap();
    let (r, c) = tokio::time::timeout(Duration::from_secs(10), q)
        .await
        .expect("client not left hanging")
        .unwrap();
    let e = r.unwrap_err();
    assert!(["57P01", "08006"].contains(&sqlstate(&e).as_str()), "{e}");
    // The client connection survives and the next statement runs.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            c.simple_query("SELECT 1").await.is_ok()
        })
        .await
    );
    p.shutdown().await;
}

#[tokio::test]
async fn large_results_stream_through() {
    let p = start(&config(pg_port(), "", "")).await;
    let c = app(p.local_addr()).await;
    let r = c
        .simple_query("SELECT g, repeat('x', 200) FROM generate_series(1, 200000) g")
        .await
        .unwrap();
    assert_eq!(rows(&r).len(), 200_000);
    p.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_lets_open_transactions_finish() {
    let p = start(&config(pg_port(), "shutdown_timeout = \"20s\"", "")).await;
    let addr = p.local_addr();
    let busy = app(addr).await;
    let (idle, _m, idle_task) = connect_msgs(addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    busy.simple_query("CREATE TABLE IF NOT EXISTS dp_shutdown (v int)")
        .await
        .unwrap();
    busy.simple_query("BEGIN; INSERT INTO dp_shutdown VALUES (1)")
        .await
        .unwrap();
    let stopping = tokio::spawn(p.shutdown());
    // The idle client is told and disconnected.
    assert!(
        tokio::time::timeout(Duration::from_secs(10), idle_task)
            .await
            .is_ok(),
        "idle client not closed"
    );
    assert!(idle.is_closed());
    // New connections are refused.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(addr).await.is_err()
        })
        .await
    );
    // The open transaction commits.
    busy.simple_query("COMMIT").await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("shutdown completes")
        .unwrap();
    let su = common::pg_client(pg_port(), "postgres", "postgres", "appdb").await;
    assert!(
        one(&su, "SELECT count(*) FROM dp_shutdown")
            .await
            .parse::<i64>()
            .unwrap()
            >= 1
    );
}

#[tokio::test]
async fn no_primary_is_57p03_and_not_ready() {
    // A port nobody listens on: the health check marks the server down.
    let dead = dead_port();
    let p = start(&config(dead, "", "[failover]\nhold_timeout = \"300ms\"")).await;
    let admin = p.admin_addr().unwrap();
    assert_eq!(http_get(admin, "/ready").await.0, 503);
    assert_eq!(http_get(admin, "/health").await.0, 200);
    let e = connect(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    let (code, status) = http_get(admin, "/status").await;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["topology"]["members"][0]["healthy"], false);
    assert!(v["topology"]["primary"].is_null());
    p.shutdown().await;
}

#[tokio::test]
async fn admin_endpoints_report_the_primary_and_metrics() {
    let p = start(&config(pg_port(), "", "")).await;
    let c = app(p.local_addr()).await;
    c.simple_query("SELECT 1").await.unwrap();
    let admin = p.admin_addr().unwrap();
    let (code, body) = http_get(admin, "/ready").await;
    assert_eq!(code, 200);
    assert!(body.contains(&pg_port().to_string()));
    let (code, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(code, 200);
    for m in [
        "pgkeel_clients_connected 1",
        "pgkeel_transactions_total",
        "pgkeel_server_connections",
    ] {
        assert!(metrics.contains(m), "{m} missing from /metrics");
    }
    p.shutdown().await;
}

/// The sum of a counter family over its labels.
fn errors_sum(v: &prometheus::IntCounterVec) -> u64 {
    use prometheus::core::Collector;
    v.collect()[0]
        .get_metric()
        .iter()
        .map(|s| s.get_counter().get_value() as u64)
        .sum()
}

/// Bytes in and out, request durations and server errors by SQLSTATE class,
/// as real traffic moves them: the request counters are updated before the
/// client has its answer, the byte counters as the bytes move (a session-mode
/// client's traffic shows while it is still connected).
#[tokio::test]
async fn traffic_metrics_count_bytes_request_times_and_server_errors() {
    use tokio_postgres::types::Type;
    let p = start(&config(pg_port(), "", "")).await;
    let m = p.shared().metrics.clone();
    let c = app(p.local_addr()).await;
    let received = m.client_bytes_received_total.get();
    let requests = m.query_seconds[0].get_sample_count();
    let class = |c: &str| m.server_errors_total.with_label_values(&[c]).get();
    let (div0, undefined) = (class("22"), class("42"));
    let own_errors = errors_sum(&m.errors_total);

    for _ in 0..5 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    // A simple Query "SELECT 1" is 14 bytes: type, length, text, NUL.
    assert_eq!(m.client_bytes_received_total.get() - received, 5 * 14);
    let r = c
        .query_typed("SELECT $1::int + 1", &[(&41i32, Type::INT4)])
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, i32>(0), 42);
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let e = c
        .query_typed("SELECT 1/$1::int", &[(&0i32, Type::INT4)])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "22012");
    let e = c
        .simple_query("SELECT * FROM dp_no_such_table")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42P01");
    let big = one(&c, "SELECT repeat('x', 200000)").await;
    assert_eq!(big.len(), 200_000);

    // One duration per request (a Query, or a batch up to its Sync), on the primary.
    assert_eq!(m.query_seconds[0].get_sample_count() - requests, 10);
    assert_eq!(m.query_seconds[1].get_sample_count(), 0);
    assert!(m.query_seconds[0].get_sample_sum() > 0.0);
    assert_eq!((class("22") - div0, class("42") - undefined), (2, 1));
    let own_now = errors_sum(&m.errors_total);
    assert_eq!(own_now, own_errors, "server errors are not pgkeel's own");
    // Nothing was added or held back on the way: what clients sent went to
    // the server, and what the server sent reached the client (counted just
    // after the write, so a moment after the client may have read it).
    assert!(
        wait_until(Duration::from_secs(5), || async {
            m.client_bytes_received_total.get() == m.server_bytes_sent_total.get()
                && m.server_bytes_received_total.get() == m.client_bytes_sent_total.get()
        })
        .await,
        "client in {} / server out {}, server in {} / client out {}",
        m.client_bytes_received_total.get(),
        m.server_bytes_sent_total.get(),
        m.server_bytes_received_total.get(),
        m.client_bytes_sent_total.get()
    );
    assert!(m.client_bytes_sent_total.get() > 200_000);
    let (_, text) = http_get(p.admin_addr().unwrap(), "/metrics").await;
    for line in [
        "pgkeel_server_errors_total{class=\"22\"}",
        "pgkeel_query_duration_seconds_count{role=\"primary\"}",
        "pgkeel_client_bytes_received_total",
        "pgkeel_client_bytes_sent_total",
    ] {
        assert!(text.contains(line), "{line} missing from /metrics");
    }
    drop(c);
    p.shutdown().await;

    // Session mode: one pump for the whole session, counted as it goes.
    let p = start(&config(
        pg_port(),
        "pool_mode = \"session\"\npool_size = 1",
        "",
    ))
    .await;
    let m = p.shared().metrics.clone();
    let c = app(p.local_addr()).await;
    for i in 1..=3u64 {
        c.simple_query("SELECT 1").await.unwrap();
        // 14 bytes per "SELECT 1", 16 per "SELECT 1/0".
        assert_eq!(m.client_bytes_received_total.get(), (i - 1) * 30 + 14);
        // The last "SELECT 1/0" has had its ReadyForQuery by now, too.
        assert_eq!(m.query_seconds[0].get_sample_count(), 2 * i - 1);
        let e = c.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(sqlstate(&e), "22012");
        assert_eq!(m.server_errors_total.with_label_values(&["22"]).get(), i);
    }
    assert!(
        wait_until(Duration::from_secs(5), || async {
            m.client_bytes_sent_total.get() > 0
                && m.client_bytes_sent_total.get() == m.server_bytes_received_total.get()
        })
        .await
    );
    drop(c);
    p.shutdown().await;
}

/// The backend running `marker` for a client of pgkeel, as seen by a superuser.
async fn backend_running(su: &tokio_postgres::Client, marker: &str) -> bool {
    one(
        su,
        &format!("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND state = 'active' AND pid <> pg_backend_pid()"),
    )
    .await
        == "1"
}

#[tokio::test]
async fn a_read_whose_server_dies_is_rerun_transparently() {
    let p = start(&config(pg_port(), "pool_size = 2", "")).await;
    let c = app(p.local_addr()).await;
    // Extended protocol (ParseComplete and BindComplete reach the client
    // before the server dies) and the simple protocol.
    for extended in [true, false] {
        let marker = format!("dp_rerun_{extended}");
        let sql = format!("SELECT count(*) /* {marker} */ FROM generate_series(1, 40000000)");
        let q = {
            let sql = sql.clone();
            let c2 = app(p.local_addr()).await;
            tokio::spawn(async move {
                if extended {
                    c2.query_typed(&sql, &[])
                        .await
                        .map(|r| r[0].get::<_, i64>(0).to_string())
                } else {
                    c2.simple_query(&sql).await.map(|m| rows(&m)[0][0].clone())
                }
            })
        };
        let su = superuser().await;
        assert!(
            wait_until(Duration::from_secs(10), || async {
                backend_running(&su, &marker).await
            })
            .await
        );
        let before = p.shared().metrics.retried_statements_total.get();
        su.simple_query(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%{marker}%' AND pid <> pg_backend_pid()"
        ))
        .await
        .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(60), q)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.expect("the read is re-run, not failed"), "40000000");
        assert_eq!(
            p.shared().metrics.retried_statements_total.get(),
            before + 1
        );
    }
    // A write is never re-run: its outcome is unknown, the client is told.
    c.simple_query("CREATE TABLE IF NOT EXISTS dp_norerun (v int)")
        .await
        .unwrap();
    let c2 = app(p.local_addr()).await;
    let w = tokio::spawn(async move {
        let r = c2
            .simple_query("INSERT INTO dp_norerun SELECT 1 FROM pg_sleep(30) /* dp_write_dies */")
            .await;
        (r, c2)
    });
    let su = superuser().await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            backend_running(&su, "dp_write_dies").await
        })
        .await
    );
    su.simple_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%dp_write_dies%' AND pid <> pg_backend_pid()")
        .await
        .unwrap();
    let (r, c2) = w.await.unwrap();
    let e = r.unwrap_err();
    assert_eq!(sqlstate(&e), "08006", "{e}");
    assert!(e
        .as_db_error()
        .unwrap()
        .message()
        .contains("outcome is unknown"));
    assert_eq!(one(&c2, "SELECT count(*) FROM dp_norerun").await, "0");
    p.shutdown().await;
}

#[tokio::test]
async fn a_transaction_whose_server_dies_is_reported_at_the_next_statement() {
    let p = start(&config(pg_port(), "pool_size = 2", "")).await;
    let c = app(p.local_addr()).await;
    c.simple_query("CREATE TABLE IF NOT EXISTS dp_txlost (v int)")
        .await
        .unwrap();
    let su = superuser().await;
    for ending in ["INSERT INTO dp_txlost VALUES (2)", "ROLLBACK"] {
        c.simple_query("BEGIN; INSERT INTO dp_txlost VALUES (1); SELECT 'dp_txlost_marker'")
            .await
            .unwrap();
        // The server goes away while the client sits in its transaction.
        su.simple_query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%dp_txlost_marker%' AND pid <> pg_backend_pid()")
            .await
            .unwrap();
        assert!(wait_until(Duration::from_secs(5), || async { lent(&p) == 0 }).await);
        let r = c.simple_query(ending).await;
        if ending == "ROLLBACK" {
            r.expect("ROLLBACK of a lost transaction is granted");
        } else {
            // The server ended it (no failover): its own error, 57P01.
            let e = r.unwrap_err();
            assert_eq!(sqlstate(&e), "57P01", "{e}");
        }
        // Nothing was committed, and the connection carries on.
        assert_eq!(one(&c, "SELECT count(*) FROM dp_txlost").await, "0");
    }
    p.shutdown().await;
}

#[tokio::test]
async fn session_parameters_follow_each_client_across_shared_server_connections() {
    // One server connection shared by two clients in transaction mode.
    let p = start(&config(pg_port(), "pool_size = 1", "")).await;
    let url = |app: &str| {
        format!(
            "{} application_name={app}",
            support::url(p.local_addr(), "app", "app_password", "appdb")
        )
    };
    let (a, conn) = tokio_postgres::connect(&url("alpha"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let (b, conn) = tokio_postgres::connect(&url("beta"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    for _ in 0..3 {
        assert_eq!(one(&a, "SHOW application_name").await, "alpha");
        assert_eq!(one(&b, "SHOW application_name").await, "beta");
    }
    // A client's SET stays with that client, and does not leak to the other.
    a.simple_query("SET TimeZone = 'Pacific/Auckland'")
        .await
        .unwrap();
    let default_tz = one(&b, "SHOW TimeZone").await;
    assert_ne!(default_tz, "Pacific/Auckland");
    assert_eq!(one(&a, "SHOW TimeZone").await, "Pacific/Auckland");
    assert_eq!(one(&b, "SHOW TimeZone").await, default_tz);
    a.simple_query("SET application_name = 'alpha2'")
        .await
        .unwrap();
    assert_eq!(one(&b, "SHOW application_name").await, "beta");
    assert_eq!(one(&a, "SHOW application_name").await, "alpha2");
    // The server is not SET again while nothing differs.
    one(&a, "SELECT 1").await;
    let restores = p.shared().metrics.session_restores_total.get();
    for _ in 0..3 {
        one(&a, "SELECT 1").await;
    }
    assert_eq!(p.shared().metrics.session_restores_total.get(), restores);
    one(&b, "SELECT 1").await;
    assert_eq!(
        p.shared().metrics.session_restores_total.get(),
        restores + 1,
        "switching clients restores once"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn pools_keep_min_size_close_idle_and_renew_old_connections() {
    use std::sync::atomic::Ordering::Relaxed;
    let p = start(&config(
        pg_port(),
        "pool_size = 4\nmin_pool_size = 2\nserver_idle_timeout = \"1s\"\nserver_lifetime = \"3s\"",
        "",
    ))
    .await;
    let clients: Vec<_> = futures_util::future::join_all((0..4).map(|_| app(p.local_addr()))).await;
    // Four transactions at once open four server connections.
    for c in &clients {
        c.simple_query("BEGIN").await.unwrap();
    }
    for c in &clients {
        c.simple_query("COMMIT").await.unwrap();
    }
    let pool = p
        .shared()
        .pools
        .all()
        .into_iter()
        .find(|p| p.key.database == "appdb")
        .unwrap();
    assert_eq!(pool.stats.total_connections.load(Relaxed), 4);
    // Idle past server_idle_timeout: closed down to min_pool_size, not below.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            pool.stats.total_connections.load(Relaxed) == 2
        })
        .await
    );
    // Past server_lifetime they are replaced, keeping min_pool_size open.
    let connects = pool.stats.connects.load(Relaxed);
    assert!(
        wait_until(Duration::from_secs(15), || async {
            pool.stats.connects.load(Relaxed) >= connects + 2
        })
        .await,
        "old connections were not renewed"
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            pool.stats.total_connections.load(Relaxed) == 2
        })
        .await
    );
    assert_eq!(one(&clients[0], "SELECT 1").await, "1");
    p.shutdown().await;
}
