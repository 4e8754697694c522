//! What drivers never send: malformed, truncated and oversized frames, odd
//! startup packets, stalled logins, too many clients. Each gets a clear
//! error and the proxy keeps serving everyone else.

use crate::common;
use crate::support;

use std::time::Duration;

use bytes::BufMut;
use support::*;

fn pg_port() -> u16 {
    common::shared_pg().port
}

/// Another client, unaffected by whatever the test did.
async fn still_serves(p: &pgkeel::ProxyHandle) {
    let c = app(p.local_addr()).await;
    let r = c.simple_query("SELECT 1").await.unwrap();
    assert!(r.iter().any(
        |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("1"))
    ));
}

#[tokio::test]
async fn unknown_message_type_is_fatal_08p01() {
    let p = start(&config(pg_port(), "", "")).await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.send_msg(b'z', b"whatever").await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    assert!(raw.closed().await);
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn impossible_length_is_fatal_08p01() {
    let p = start(&config(pg_port(), "", "")).await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.send(b"Q\x00\x00\x00\x02").await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    assert!(raw.closed().await);
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn oversized_message_is_refused_before_its_body_arrives() {
    let p = start(&config(pg_port(), "max_message_size = \"64KB\"", "")).await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    // Only the header: pgkeel must not wait for (or buffer) 100 MB.
    let mut h = bytes::BytesMut::new();
    h.put_u8(b'Q');
    h.put_i32(100 << 20);
    raw.send(&h).await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    assert!(raw.closed().await);
    // Inside a transaction too (the relay checks as well).
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN").await;
    assert_eq!(raw.until_ready().await.1, b'T');
    raw.send(&h).await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    assert!(raw.closed().await);
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn truncated_message_then_close_leaks_nothing() {
    let p = start(&config(pg_port(), "pool_size = 1", "")).await;
    // Between transactions.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.send(b"Q\x00\x00\x00\x64SELECT").await;
    drop(raw);
    // Inside a transaction: its server connection must come back rolled back.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN; CREATE TEMP TABLE bi_trunc (x int) ON COMMIT DROP")
        .await;
    assert_eq!(raw.until_ready().await.1, b'T');
    raw.send(b"Q\x00\x00\x00\x64INSERT").await;
    drop(raw);
    let c = app(p.local_addr()).await;
    let r = c
        .simple_query("SELECT coalesce(txid_current_if_assigned()::text, 'none')")
        .await
        .unwrap();
    match r
        .iter()
        .find(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .unwrap()
    {
        tokio_postgres::SimpleQueryMessage::Row(row) => assert_eq!(row.get(0), Some("none")),
        other => panic!("{other:?}"),
    }
    p.shutdown().await;
}

#[tokio::test]
async fn stalled_startup_is_closed_after_client_login_timeout() {
    // Long enough for the real login at the end (SCRAM in a debug build:
    // about 0.15 s on a busy machine), short enough to tell from the 5 s bound.
    let timeout = Duration::from_secs(2);
    let proxy = format!("client_login_timeout = \"{}s\"", timeout.as_secs());
    let p = start(&config(pg_port(), &proxy, "")).await;
    // The clock starts before the connection: pgkeel's starts at its accept,
    // later, so the close can never look early however slowly this test
    // thread is scheduled.
    let started = std::time::Instant::now();
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(b"\x00\x00").await;
    assert!(raw.closed().await, "a stalled startup must be closed");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    assert!(
        took >= timeout,
        "closed after {took:?}, before client_login_timeout"
    );
    // Stalling after the startup packet, in the middle of SCRAM, too.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&Raw::startup_packet(&[
        ("user", "app"),
        ("database", "appdb"),
    ]))
    .await;
    let (t, _) = raw.recv().await.unwrap();
    assert_eq!(t, b'R');
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn bad_startup_packets_get_clear_errors() {
    let p = start(&config(pg_port(), "", "")).await;
    // Absurd length.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(b"\x7f\x00\x00\x00\x00\x03\x00\x00").await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    // Protocol 2.0.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(b"\x00\x00\x00\x09\x00\x02\x00\x00\x00").await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "0A000".into()));
    // No user.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&Raw::startup_packet(&[("database", "appdb")]))
        .await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "28000".into()));
    // Replication connections are not proxied.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&Raw::startup_packet(&[
        ("user", "app"),
        ("replication", "database"),
    ]))
    .await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "0A000".into()));
    // A garbage password message in the middle of SCRAM.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&Raw::startup_packet(&[
        ("user", "app"),
        ("database", "appdb"),
    ]))
    .await;
    raw.recv().await.unwrap();
    raw.send_msg(b'p', b"\xff\xff").await;
    assert_eq!(raw.expect_error().await.0, "FATAL");
    // A connection that opens and closes (a port check) is fine.
    drop(Raw::connect(p.local_addr()).await);
    still_serves(&p).await;
    p.shutdown().await;
}

#[tokio::test]
async fn ssl_and_gss_requests_are_declined_then_login_proceeds() {
    let p = start(&config(pg_port(), "", "")).await;
    for code in [80_877_103i32, 80_877_104] {
        let mut raw = Raw::connect(p.local_addr()).await;
        let mut m = bytes::BytesMut::new();
        m.put_i32(8);
        m.put_i32(code);
        raw.send(&m).await;
        let mut b = [0u8; 1];
        tokio::io::AsyncReadExt::read_exact(&mut raw.stream, &mut b)
            .await
            .unwrap();
        assert_eq!(&b, b"N");
    }
    // libpq's sslmode=prefer path: SSLRequest, "N", then plain startup.
    let c = tokio_postgres::connect(
        &format!(
            "{} sslmode=prefer",
            url(p.local_addr(), "app", "app_password", "appdb")
        ),
        tokio_postgres::NoTls,
    )
    .await;
    assert!(c.is_ok());
    p.shutdown().await;
}

#[tokio::test]
async fn max_client_connections_refuses_with_53300() {
    let p = start(&config(pg_port(), "max_client_connections = 2", "")).await;
    let _a = app(p.local_addr()).await;
    let _b = app(p.local_addr()).await;
    let e = connect(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    drop(_a);
    assert!(
        wait_until(Duration::from_secs(5), || async {
            connect(p.local_addr(), "app", "app_password", "appdb")
                .await
                .is_ok()
        })
        .await
    );
    p.shutdown().await;
}
