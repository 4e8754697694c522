//! What a driver's own test suite checks that a pooler gets wrong (psycopg
//! 3's suite, docs/psycopg-suite.md): the parameters reported at startup,
//! a server that ends a connection for reasons of its own (no failover),
//! the encoding a session set.

use crate::common;
use crate::support;

use std::time::Duration;

use bytes::Buf;
use support::*;

fn pg_port() -> u16 {
    common::shared_pg().port
}

async fn superuser() -> tokio_postgres::Client {
    common::pg_client(pg_port(), "postgres", "postgres", "postgres").await
}

/// The value of ParameterStatus `name` among `msgs`.
fn parameter(msgs: &[(u8, bytes::BytesMut)], name: &str) -> Option<String> {
    msgs.iter().rev().find_map(|(t, b)| {
        let mut b = &b[..];
        let k = pgkeel::protocol::get_cstr(&mut b)?;
        let v = pgkeel::protocol::get_cstr(&mut b)?;
        (*t == b'S' && k == name).then_some(v)
    })
}

/// The first column of the first DataRow among `msgs`.
fn first_value(msgs: &[(u8, bytes::BytesMut)]) -> Option<String> {
    msgs.iter().find(|(t, _)| *t == b'D').map(|(_, b)| {
        let mut b = &b[..];
        let _columns = b.get_i16();
        let len = b.get_i32() as usize;
        String::from_utf8_lossy(&b[..len]).into_owned()
    })
}

/// (severity, SQLSTATE) of the next ErrorResponse, past a RowDescription.
async fn next_error(raw: &mut Raw) -> (String, String) {
    loop {
        let (t, b) = raw.recv().await.expect("an ErrorResponse, got EOF");
        if t == b'E' {
            let f = pgkeel::protocol::parse_error_fields(&b);
            let get = |c| {
                pgkeel::protocol::error_field(&f, c)
                    .unwrap_or("")
                    .to_owned()
            };
            return (get(b'S'), get(b'C'));
        }
        assert!(matches!(t, b'T' | b'N' | b'S'), "unexpected {}", t as char);
    }
}

async fn backend_pid(raw: &mut Raw) -> i32 {
    raw.query("SELECT pg_backend_pid()").await;
    let (msgs, _) = raw.until_ready().await;
    first_value(&msgs).unwrap().parse().unwrap()
}

#[tokio::test]
async fn startup_encodings_are_reported_as_the_server_names_them() {
    let p = start(&config(pg_port(), "", "")).await;
    for (asked, reported) in [("utf8", "UTF8"), ("utf-8", "UTF8"), ("eucjp", "EUC_JP")] {
        let (mut raw, welcome) = Raw::login_with(
            p.local_addr(),
            "app",
            "app_password",
            "appdb",
            &[("client_encoding", asked)],
        )
        .await;
        assert_eq!(
            parameter(&welcome, "client_encoding").as_deref(),
            Some(reported),
            "{asked}"
        );
        // And the server the client lands on agrees.
        raw.query("SHOW client_encoding").await;
        let (msgs, _) = raw.until_ready().await;
        assert_eq!(first_value(&msgs).as_deref(), Some(reported), "{asked}");
    }
    // An encoding PostgreSQL does not know ends the login, as it would there.
    let out = tokio::process::Command::new("psql")
        .arg(url(p.local_addr(), "app", "app_password", "appdb"))
        .args(["-c", "SELECT 1"])
        .env("PGCLIENTENCODING", "klingon")
        .output()
        .await
        .expect("psql runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("invalid value for parameter \"client_encoding\""),
        "{err}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn a_backend_the_server_ends_is_the_servers_error_not_a_failover() {
    let p = start(&config(pg_port(), "pool_size = 4", "")).await;
    let su = superuser().await;
    // Idle in a transaction: pg_terminate_backend's 57P01 at the next
    // statement (not 40001 "failed over; retry"), and the session goes on.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN").await;
    raw.until_ready().await;
    let pid = backend_pid(&mut raw).await;
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(10), || async { lent(&p) == 0 }).await);
    raw.query("SELECT 1").await;
    assert_eq!(next_error(&mut raw).await, ("ERROR".into(), "57P01".into()));
    raw.until_ready().await;
    raw.query("SELECT 1").await;
    let (msgs, _) = raw.until_ready().await;
    assert_eq!(first_value(&msgs).as_deref(), Some("1"));

    // Waiting in a transaction: the same, at once.
    raw.query("BEGIN").await;
    raw.until_ready().await;
    let pid = backend_pid(&mut raw).await;
    raw.query("SELECT pg_sleep(60)").await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await
    );
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert_eq!(next_error(&mut raw).await, ("ERROR".into(), "57P01".into()));
    raw.until_ready().await;

    // idle_in_transaction_session_timeout: its own 25P03.
    raw.query("SET idle_in_transaction_session_timeout = 100")
        .await;
    raw.until_ready().await;
    raw.query("BEGIN").await;
    raw.until_ready().await;
    raw.query("SELECT 1").await;
    raw.until_ready().await;
    assert!(wait_until(Duration::from_secs(10), || async { lent(&p) == 0 }).await);
    raw.query("SELECT 1").await;
    assert_eq!(next_error(&mut raw).await, ("ERROR".into(), "25P03".into()));
    p.shutdown().await;
}

#[tokio::test]
async fn in_session_mode_a_backend_the_server_ends_ends_the_client_as_postgresql_does() {
    let p = start(&config(
        pg_port(),
        "pool_mode = \"session\"\npool_size = 4",
        "",
    ))
    .await;
    let su = superuser().await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    let pid = backend_pid(&mut raw).await;
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The server's FATAL, then the end of the connection.
    assert_eq!(next_error(&mut raw).await, ("FATAL".into(), "57P01".into()));
    assert!(raw.closed().await);

    // Inside a transaction, mid-statement: the same.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN").await;
    raw.until_ready().await;
    let pid = backend_pid(&mut raw).await;
    raw.query("SELECT pg_sleep(60)").await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await
    );
    su.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert_eq!(next_error(&mut raw).await, ("FATAL".into(), "57P01".into()));
    assert!(raw.closed().await);
    p.shutdown().await;
}

/// The process id pgkeel gave the client at login (BackendKeyData).
fn key_pid(welcome: &[(u8, bytes::BytesMut)]) -> i32 {
    let (_, b) = welcome
        .iter()
        .find(|(t, _)| *t == b'K')
        .expect("BackendKeyData");
    (&b[..4]).get_i32()
}

/// (process id, channel) of the NotificationResponses among `msgs`.
fn notifications(msgs: &[(u8, bytes::BytesMut)]) -> Vec<(i32, String)> {
    msgs.iter()
        .filter(|(t, _)| *t == b'A')
        .map(|(_, b)| {
            let mut b = &b[..];
            let pid = b.get_i32();
            (pid, pgkeel::protocol::get_cstr(&mut b).unwrap())
        })
        .collect()
}

#[tokio::test]
async fn a_listening_clients_own_notifications_name_its_backend_pid() {
    for mode in ["transaction", "session"] {
        let p = start(&config(
            pg_port(),
            &format!("pool_mode = \"{mode}\"\npool_size = 4"),
            "",
        ))
        .await;
        let (mut raw, welcome) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
        let own = key_pid(&welcome);
        raw.query("LISTEN transparency_ch").await;
        raw.until_ready().await;
        raw.query("NOTIFY transparency_ch, 'mine'").await;
        let (msgs, _) = raw.until_ready().await;
        assert_eq!(
            notifications(&msgs),
            vec![(own, "transparency_ch".to_owned())],
            "{mode}: as PQbackendPID says"
        );
        // Another client's notification arrives (the listener is pinned)
        // with that client's server process id, not this client's.
        let other = app(p.local_addr()).await;
        other
            .batch_execute("NOTIFY transparency_ch, 'theirs'")
            .await
            .unwrap();
        let (t, b) = raw.recv().await.expect("the other client's notification");
        assert_eq!(t, b'A', "{mode}");
        assert_ne!(notifications(&[(t, b)])[0].0, own, "{mode}");
        p.shutdown().await;
    }
}

#[tokio::test]
async fn a_set_config_whose_name_is_a_parameter_follows_the_client() {
    // One server connection at a time: the next transaction lands on a
    // new one (the first is closed: pgkeel could not name the setting).
    let p = start(&config(pg_port(), "pool_size = 1", "")).await;
    let c = app(p.local_addr()).await;
    c.query(
        "SELECT set_config($1, $2, false)",
        &[&"default_transaction_isolation", &"serializable"],
    )
    .await
    .unwrap();
    let r = c
        .query_one("SHOW default_transaction_isolation", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "serializable");
    // A second client does not see it.
    let other = app(p.local_addr()).await;
    let r = other
        .query_one("SHOW default_transaction_isolation", &[])
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "read committed");
    p.shutdown().await;
}

#[tokio::test]
async fn in_session_mode_backend_pid_is_the_server_process_and_cancels_reach_it() {
    let p = start(&config(
        pg_port(),
        "pool_mode = \"session\"\npool_size = 4",
        "",
    ))
    .await;
    let (mut raw, welcome) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    let pid = key_pid(&welcome);
    assert_eq!(
        backend_pid(&mut raw).await,
        pid,
        "PQbackendPID is pg_backend_pid()"
    );
    let (_, b) = welcome.iter().find(|(t, _)| *t == b'K').unwrap();
    let secret = (&b[4..8]).get_i32();
    // A cancel with that key stops the client's query.
    raw.query("SELECT pg_sleep(60)").await;
    let su = superuser().await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await
    );
    let mut cancel = tokio::net::TcpStream::connect(p.local_addr())
        .await
        .unwrap();
    let mut req = Vec::new();
    for v in [16, 80877102, pid, secret] {
        req.extend_from_slice(&v.to_be_bytes());
    }
    tokio::io::AsyncWriteExt::write_all(&mut cancel, &req)
        .await
        .unwrap();
    assert_eq!(next_error(&mut raw).await, ("ERROR".into(), "57014".into()));
    p.shutdown().await;
}
