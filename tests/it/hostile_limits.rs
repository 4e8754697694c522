//! Limits against hostile and careless clients: the login budget (in total
//! and per source address) apart from the session slots, a peer that never
//! reads, idle / idle-in-transaction / query timeouts with a clean pool
//! afterwards, per-user and per-database caps, the admin console's reserved
//! slots, unknown roles indistinguishable from wrong passwords, the
//! auth-failure delay, the admin HTTP token, header timeout and connection
//! cap, and secrets kept off the config file (through the real binary and
//! psql). Roles and tables are named `hl_*`.

use crate::common;
use crate::support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use pgkeel::auth::scram::{ClientCredential, ClientExchange};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const WAIT: Duration = Duration::from_secs(20);

fn pg_port() -> u16 {
    common::shared_pg().port
}

fn counter(p: &pgkeel::ProxyHandle, reason: &str) -> u64 {
    p.shared()
        .metrics
        .limit_refusals_total
        .with_label_values(&[reason])
        .get()
}

fn message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_default()
}

fn logins(p: &pgkeel::ProxyHandle) -> i64 {
    p.shared().metrics.login_connections.get()
}

/// A TCP connection from another loopback address (Linux routes 127/8 to lo).
async fn connect_from(src: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{src}:0").parse().unwrap()).unwrap();
    s.connect(to).await.expect("tcp connect")
}

async fn one_row(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    c.simple_query(sql)
        .await
        .unwrap()
        .into_iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_owned)),
            _ => None,
        })
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pre_auth_sockets_do_not_stop_a_normal_login() {
    let proxy =
        "max_client_connections = 20\nmax_login_connections = 100\nmax_logins_per_address = 50";
    let p = start(&config(pg_port(), proxy, "")).await;
    // 1,000 sockets that connect and never speak, from one address.
    let mut idle = Vec::new();
    for _ in 0..1000 {
        idle.push(connect_from("127.0.0.2", p.local_addr()).await);
    }
    assert!(
        wait_until(WAIT, || async {
            counter(&p, "max_logins_per_address") >= 950 && logins(&p) == 50
        })
        .await,
        "refused {} per address, {} logging in",
        counter(&p, "max_logins_per_address"),
        logins(&p)
    );
    // One more from that address: refused at accept, with 53300.
    let mut extra = Raw {
        stream: connect_from("127.0.0.2", p.local_addr()).await,
        buf: BytesMut::new(),
    };
    let (sev, code) = extra.expect_error().await;
    assert_eq!((sev.as_str(), code.as_str()), ("FATAL", "53300"));
    // Everyone else logs in and queries, while the 1,000 stay open.
    let c = app(p.local_addr()).await;
    assert_eq!(one_row(&c, "SELECT 41 + 1").await.as_deref(), Some("42"));
    // The per-address table holds only addresses with logins in flight.
    assert_eq!(p.shared().limits.login_addresses(), 1);
    drop(idle);
    assert!(wait_until(WAIT, || async { logins(&p) == 0 }).await);
    assert_eq!(p.shared().limits.login_addresses(), 0);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_loses_its_login_slot() {
    let proxy = "max_login_connections = 1\nclient_login_timeout = \"3s\"";
    let p = start(&config(pg_port(), proxy, "")).await;
    // A startup packet, then nothing: the peer never reads pgkeel's SASL
    // challenge and never answers it. (PostgreSQL allows one SSLRequest per
    // connection, as pgkeel does, so a request flood no longer fills the
    // socket; a write that cannot complete is bounded by the same deadline,
    // see listener.rs's unit test.)
    let s = TcpSocket::new_v4().unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    let stuck = s.connect(p.local_addr()).await.unwrap();
    let (_read_half, mut write_half) = stuck.into_split();
    let startup = Raw::startup_packet(&[("user", "app"), ("database", "appdb")]);
    let writer = tokio::spawn(async move {
        let _ = write_half.write_all(&startup).await;
        // Held open, silent.
        std::future::pending::<()>().await;
        write_half
    });
    assert!(wait_until(WAIT, || async { logins(&p) == 1 }).await);
    // While it holds the budget, nobody else can log in.
    let mut other = Raw::connect(p.local_addr()).await;
    assert_eq!(other.expect_error().await.1, "53300");
    // At client_login_timeout its place is given back, though it still has
    // not read anything and its socket is open.
    assert!(
        wait_until(WAIT, || async { logins(&p) == 0 }).await,
        "the peer kept its login slot"
    );
    let c = app(p.local_addr()).await;
    assert_eq!(one_row(&c, "SELECT 1").await.as_deref(), Some("1"));
    writer.abort();
    p.shutdown().await;
}

/// pool_size = 1, so the next client gets the very server connection the
/// timed-out one had.
fn timeout_config(proxy: &str) -> String {
    config(pg_port(), &format!("pool_size = 1\n{proxy}"), "")
}

async fn hl_table() {
    let su = common::pg_client(pg_port(), "postgres", "postgres", "appdb").await;
    su.batch_execute(
        "CREATE TABLE IF NOT EXISTS hl_rows (n int); GRANT ALL ON hl_rows TO app; TRUNCATE hl_rows",
    )
    .await
    .unwrap();
}

/// The next client on the same pool finds no transaction left open and
/// none of the timed-out client's rows.
async fn pool_is_clean(p: &pgkeel::ProxyHandle) {
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("SELECT count(*) FROM hl_rows").await;
    let (msgs, status) = raw.until_ready().await;
    assert_eq!(status, b'I', "a transaction was left open: {msgs:?}");
    let row = msgs.iter().find(|(t, _)| *t == b'D').expect("a row");
    assert!(row.1.ends_with(b"0"), "rows leaked: {:?}", row.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_idle_in_transaction_timeouts_end_the_client_cleanly() {
    hl_table().await;
    let p = start(&timeout_config(
        "client_idle_timeout = \"1s\"\nidle_transaction_timeout = \"1s\"",
    ))
    .await;
    // Idle outside a transaction: 57P05, as idle_session_timeout.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    assert_eq!(
        raw.expect_error().await,
        ("FATAL".to_owned(), "57P05".to_owned())
    );
    assert!(raw.closed().await);
    // Idle inside a transaction on the server: 25P03, and the transaction
    // is rolled back before its connection serves anyone else.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN; INSERT INTO hl_rows VALUES (1)").await;
    assert_eq!(raw.until_ready().await.1, b'T');
    assert_eq!(
        raw.expect_error().await,
        ("FATAL".to_owned(), "25P03".to_owned())
    );
    assert!(raw.closed().await);
    pool_is_clean(&p).await;
    // Idle after a BEGIN pgkeel answered itself (no server yet): 25P03 too.
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN").await;
    assert_eq!(raw.until_ready().await.1, b'T');
    assert_eq!(raw.expect_error().await.1, "25P03");
    assert!(counter(&p, "client_idle_timeout") >= 1);
    assert!(counter(&p, "idle_transaction_timeout") >= 2);
    pool_is_clean(&p).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_in_transaction_in_session_mode_too() {
    hl_table().await;
    let p = start(&timeout_config(
        "pool_mode = \"session\"\nidle_transaction_timeout = \"1s\"",
    ))
    .await;
    let (mut raw, _) = Raw::login(p.local_addr(), "app", "app_password", "appdb").await;
    raw.query("BEGIN; INSERT INTO hl_rows VALUES (2)").await;
    assert_eq!(raw.until_ready().await.1, b'T');
    assert_eq!(raw.expect_error().await.1, "25P03");
    pool_is_clean(&p).await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_cancels_on_the_server_and_the_session_goes_on() {
    let p = start(&timeout_config("query_timeout = \"1s\"")).await;
    let c = app(p.local_addr()).await;
    let e = c.simple_query("SELECT pg_sleep(60)").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57014", "{e}");
    // The same client goes on, on a connection at rest.
    assert_eq!(
        one_row(&c, "SELECT 'after'").await.as_deref(),
        Some("after")
    );
    assert_eq!(counter(&p, "query_timeout"), 1);
    // Quick statements are not touched.
    for _ in 0..20 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(counter(&p, "query_timeout"), 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_database_caps_are_53300() {
    let proxy = "max_user_connections = 2\nmax_db_connections = 3";
    let p = start(&config(pg_port(), proxy, "")).await;
    let a = app(p.local_addr()).await;
    let b = app(p.local_addr()).await;
    let e = connect(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(
        message(&e).contains("too many connections for role \"app\""),
        "{e}"
    );
    let s = connect(p.local_addr(), "scramuser", "scram_password", "appdb")
        .await
        .unwrap();
    let e = connect(p.local_addr(), "scramuser", "scram_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    assert!(message(&e).contains("for database \"appdb\""), "{e}");
    assert_eq!(
        (
            counter(&p, "max_user_connections"),
            counter(&p, "max_db_connections")
        ),
        (1, 1)
    );
    // A place given back is free again.
    drop(a);
    assert!(
        wait_until(WAIT, || async {
            connect(p.local_addr(), "app", "app_password", "appdb")
                .await
                .is_ok()
        })
        .await
    );
    drop((b, s));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_console_has_reserved_slots_at_max_clients() {
    let proxy = "max_client_connections = 2\nadmin_reserved_connections = 1";
    let cfg = config(pg_port(), proxy, "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nusers = [\"scramuser\"]",
    );
    let p = start(&cfg).await;
    let _a = app(p.local_addr()).await;
    let _b = app(p.local_addr()).await;
    let e = connect(p.local_addr(), "app", "app_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    // The operator still gets in, and sees the clients.
    let console = connect(p.local_addr(), "scramuser", "scram_password", "pgkeel")
        .await
        .expect("admin console at max_client_connections");
    let rows = console.simple_query("SHOW CLIENTS").await.unwrap();
    assert!(rows.len() >= 2);
    // The reserve is the reserve: one more console is refused.
    let e = connect(p.local_addr(), "scramuser", "scram_password", "pgkeel")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300", "{e}");
    p.shutdown().await;
}

/// One SCRAM login attempt, raw: the authentication codes pgkeel sent, its
/// server-first message with the nonce taken out, and the final error.
async fn attempt(
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> (Vec<i32>, String, Vec<(u8, String)>) {
    let mut raw = Raw::connect(addr).await;
    raw.send(&Raw::startup_packet(&[
        ("user", user),
        ("database", "appdb"),
    ]))
    .await;
    let mut codes = Vec::new();
    let mut first = String::new();
    let mut scram = None;
    loop {
        let (t, body) = raw.recv().await.expect("a message");
        match t {
            b'R' => {
                let code = (&body[..4]).get_i32();
                codes.push(code);
                match code {
                    10 => {
                        let (ex, f) = ClientExchange::start(pgkeel::auth::scram::Binding::None);
                        scram = Some(ex);
                        let mut m = BytesMut::new();
                        m.put_slice(b"SCRAM-SHA-256\0");
                        m.put_i32(f.len() as i32);
                        m.put_slice(f.as_bytes());
                        raw.send_msg(b'p', &m).await;
                    }
                    11 => {
                        let sf = String::from_utf8(body[4..].to_vec()).unwrap();
                        // r=<nonce>,s=<salt>,i=<iterations>: the shape, not the nonce.
                        first = sf.split(',').skip(1).collect::<Vec<_>>().join(",");
                        let fin = scram
                            .as_mut()
                            .unwrap()
                            .respond(&body[4..], ClientCredential::Password(password))
                            .unwrap();
                        raw.send_msg(b'p', fin.as_bytes()).await;
                    }
                    c => panic!("unexpected auth code {c}"),
                }
            }
            b'E' => {
                let fields = pgkeel::protocol::parse_error_fields(&body)
                    .into_iter()
                    .map(|(k, v)| (k, v.replace(user, "<user>")))
                    .collect();
                assert!(raw.closed().await);
                return (codes, first, fields);
            }
            t => panic!("unexpected message {}", t as char),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_roles_look_like_wrong_passwords() {
    let p = start(&config(pg_port(), "", "")).await;
    let known = attempt(p.local_addr(), "app", "wrong").await;
    let unknown = attempt(p.local_addr(), "hl_nobody", "wrong").await;
    assert_eq!(known.0, vec![10, 11]);
    assert_eq!(unknown.0, known.0, "same exchange");
    assert_eq!(unknown.2, known.2, "same error, same words");
    assert_eq!(pgkeel::protocol::error_field(&known.2, b'C'), Some("28P01"));
    // Same shape of challenge (salt length, iterations), and an unknown
    // role's salt stays the same from one try to the next, as a real one's.
    let shape = |s: &str| {
        s.split(',')
            .map(|a| {
                if a.starts_with("s=") {
                    a.len()
                } else {
                    a.len() + 1000
                }
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&unknown.1), shape(&known.1));
    assert!(known.1.ends_with(",i=4096") && unknown.1.ends_with(",i=4096"));
    let again = attempt(p.local_addr(), "hl_nobody", "other").await;
    assert_eq!(again.1, unknown.1);
    assert_ne!(
        attempt(p.local_addr(), "hl_nobody2", "x").await.1,
        unknown.1
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_passwords_wait_out_auth_failure_delay_holding_the_address_budget() {
    let proxy = "auth_failure_delay = \"1h\"\nmax_logins_per_address = 1";
    let p = start(&config(pg_port(), proxy, "")).await;
    let guess = tokio::spawn({
        let addr = p.local_addr();
        async move {
            let s = connect_from("127.0.0.3", addr).await;
            let _ = tokio::time::timeout(Duration::from_secs(3600), async move {
                let mut raw = Raw {
                    stream: s,
                    buf: BytesMut::new(),
                };
                raw.send(&Raw::startup_packet(&[
                    ("user", "app"),
                    ("database", "appdb"),
                ]))
                .await;
                let (ex, f) = ClientExchange::start(pgkeel::auth::scram::Binding::None);
                let mut ex = ex;
                raw.recv().await;
                let mut m = BytesMut::new();
                m.put_slice(b"SCRAM-SHA-256\0");
                m.put_i32(f.len() as i32);
                m.put_slice(f.as_bytes());
                raw.send_msg(b'p', &m).await;
                let (_, body) = raw.recv().await.unwrap();
                let fin = ex
                    .respond(&body[4..], ClientCredential::Password("wrong"))
                    .unwrap();
                raw.send_msg(b'p', fin.as_bytes()).await;
                // Stays here: the answer is held back.
                let mut b = [0u8; 1];
                raw.stream.read(&mut b).await
            })
            .await;
        }
    });
    assert!(
        wait_until(WAIT, || async {
            p.shared().metrics.auth_failure_delayed.get() == 1
        })
        .await
    );
    // While it waits, its address has no second try...
    let mut second = Raw {
        stream: connect_from("127.0.0.3", p.local_addr()).await,
        buf: BytesMut::new(),
    };
    assert_eq!(second.expect_error().await.1, "53300");
    // ...and the guess has had no answer: the delay holds it back.
    assert!(!guess.is_finished());
    // Other addresses log in as usual.
    let c = app(p.local_addr()).await;
    assert_eq!(one_row(&c, "SELECT 1").await.as_deref(), Some("1"));
    guess.abort();
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_http_token_open_health_and_a_metrics_listener() {
    let cfg = config(pg_port(), "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nhttp_token = \"hl-token-7f3a\"\nmetrics_listen = \"127.0.0.1:0\"",
    );
    let p = start(&cfg).await;
    let admin = p.admin_addr().unwrap();
    assert_eq!(http_get_as(admin, "/status", None).await.0, 401);
    assert_eq!(http_get_as(admin, "/status", Some("wrong")).await.0, 401);
    assert_eq!(http_get_as(admin, "/metrics", None).await.0, 401);
    let (code, status) = http_get_as(admin, "/status", Some("hl-token-7f3a")).await;
    assert_eq!(code, 200, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    // A version and a reload time, no hash of a file that holds passwords.
    assert!(v["config"]["version"].as_u64().is_some(), "{v}");
    assert!(v["config"].get("sha256").is_none(), "{v}");
    assert!(!status.contains("hl-token-7f3a"));
    assert_eq!(
        http_get_as(admin, "/metrics", Some("hl-token-7f3a"))
            .await
            .0,
        200
    );
    // Load balancers need no token.
    assert_eq!(http_get_as(admin, "/health", None).await.0, 200);
    assert_eq!(http_get_as(admin, "/ready", None).await.0, 200);
    // The metrics listener serves /metrics alone, without a token.
    let m = p.metrics_addr().unwrap();
    let (code, body) = http_get_as(m, "/metrics", None).await;
    assert_eq!(code, 200);
    assert!(body.contains("pgkeel_http_unauthorized_total 3"), "{body}");
    assert_eq!(http_get_as(m, "/status", None).await.0, 404);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_http_headers_are_dropped_and_connections_capped() {
    let cfg = config(pg_port(), "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nhttp_header_timeout = \"1s\"",
    );
    let p = start(&cfg).await;
    let mut slow = Raw::connect(p.admin_addr().unwrap()).await;
    slow.send(b"GET /status HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await;
    assert!(slow.closed().await, "a half-sent request stayed open");
    p.shutdown().await;

    // The cap, with a header timeout long enough not to interfere.
    let cfg = config(pg_port(), "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\nhttp_header_timeout = \"1h\"\nmax_http_connections = 2",
    );
    let p = start(&cfg).await;
    let admin = p.admin_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut r = Raw::connect(admin).await;
        r.send(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").await;
        // Answered, and kept alive: each holds a place.
        let mut b = [0u8; 512];
        assert!(r.stream.read(&mut b).await.unwrap() > 0);
        held.push(r);
    }
    let mut third = Raw::connect(admin).await;
    assert!(third.closed().await, "a third connection was served");
    drop(held);
    assert!(
        wait_until(WAIT, || async {
            let mut s = TcpStream::connect(admin).await.unwrap();
            s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out).await;
            out.contains(" 200 ")
        })
        .await
    );
    p.shutdown().await;
}

/// The real binary with `env`, its log captured in a file.
async fn binary_with_env(
    cfg: &str,
    addr: SocketAddr,
    env: &[(&str, &str)],
) -> (
    std::process::Child,
    tempfile::NamedTempFile,
    tempfile::NamedTempFile,
) {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(cfg.as_bytes()).unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkeel"));
    cmd.arg("--config")
        .arg(file.path())
        .envs(env.iter().copied())
        .stdout(log.reopen().unwrap())
        .stderr(log.reopen().unwrap());
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("pgkeel starts");
    assert!(
        wait_until(WAIT, || async { TcpStream::connect(addr).await.is_ok() }).await,
        "pgkeel did not listen on {addr}"
    );
    (child, file, log)
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_from_env_and_files_never_show() {
    const ENV_SECRET: &str = "hl-env-secret-91b2";
    const FILE_SECRET: &str = "hl-file-secret-5c7d";
    let su = common::pg_client(pg_port(), "postgres", "postgres", "postgres").await;
    for (role, pw) in [("hl_env_role", ENV_SECRET), ("hl_file_role", FILE_SECRET)] {
        su.batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$; SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{pw}'"
        ))
        .await
        .unwrap();
    }
    // The file holds the server's own SCRAM verifier: pgkeel checks the
    // client against it and logs in to the server with the client's proof.
    let verifier: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'hl_file_role'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let mut secret_file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut secret_file, format!("{verifier}\n").as_bytes()).unwrap();
    let (addr, admin) = (free_addr(), free_addr());
    let cfg = format!(
        r#"
[proxy]
listen = "{addr}"
[admin]
listen = "{admin}"
users = ["hl_env_role"]
[log]
level = "debug"
[health]
user = "postgres"
password = "postgres"
[[users]]
name = "hl_env_role"
password_env = "HL_ENV_PASSWORD"
[[users]]
name = "hl_file_role"
password_file = "{}"
[[servers]]
host = "127.0.0.1"
port = {}
"#,
        secret_file.path().display(),
        pg_port()
    );
    let (mut child, _cfg, log) =
        binary_with_env(&cfg, addr, &[("HL_ENV_PASSWORD", ENV_SECRET)]).await;
    let c = connect(addr, "hl_env_role", ENV_SECRET, "appdb")
        .await
        .expect("the password from the environment works");
    assert_eq!(
        one_row(&c, "SELECT current_user").await.as_deref(),
        Some("hl_env_role")
    );
    let e = connect(addr, "hl_env_role", "wrong", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    // psql against the verifier from the file.
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(addr.port().to_string())
        .args(["-U", "hl_file_role", "-c", "SELECT current_user", "appdb"])
        .env("PGPASSWORD", FILE_SECRET)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hl_file_role");
    // Nowhere to be seen: /status, SHOW CONFIG, the log.
    let (_, status) = http_get(admin, "/status").await;
    let console = connect(addr, "hl_env_role", ENV_SECRET, "pgkeel")
        .await
        .unwrap();
    let shown: String = console
        .simple_query("SHOW CONFIG")
        .await
        .unwrap()
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(shown.contains("hl_file_role"), "{shown}");
    drop((c, console));
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(log.path()).unwrap();
    assert!(logged.contains("client connected"), "{logged}");
    for secret in [ENV_SECRET, FILE_SECRET, verifier.as_str()] {
        assert!(!status.contains(secret), "/status shows a secret");
        assert!(!shown.contains(secret), "SHOW CONFIG shows a secret");
        assert!(!logged.contains(secret), "the log shows a secret");
    }
}

/// The kernel's timer for a TCP socket (`/proc/net/tcp`'s `tr`: 2 is the
/// keepalive timer) by its local and remote ports.
fn tcp_timer(local_port: u16, remote_port: u16) -> Option<u8> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next()?, 16).ok();
        (port(f[1])? == local_port && port(f[2])? == remote_port)
            .then(|| u8::from_str_radix(f[5].split(':').next()?, 16).ok())
            .flatten()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_keepalive_on_client_and_server_sockets() {
    for (keepalive, timer) in [(true, 2), (false, 0)] {
        let proxy = format!("pool_mode = \"session\"\ntcp_keepalive = {keepalive}");
        let p = start(&config(pg_port(), &proxy, "")).await;
        let c = app(p.local_addr()).await;
        // Session mode: this server connection stays the client's.
        let server_port: u16 = one_row(&c, "SELECT inet_client_port()")
            .await
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            wait_until(WAIT, || async {
                tcp_timer(server_port, pg_port()) == Some(timer)
            })
            .await,
            "keepalive {keepalive}: server socket timer {:?}",
            tcp_timer(server_port, pg_port())
        );
        // The client's socket, as pgkeel accepted it.
        let client = TcpStream::connect(p.local_addr()).await.unwrap();
        let port = client.local_addr().unwrap().port();
        assert!(
            wait_until(WAIT, || async {
                tcp_timer(p.local_addr().port(), port) == Some(timer)
            })
            .await,
            "keepalive {keepalive}: client socket timer {:?}",
            tcp_timer(p.local_addr().port(), port)
        );
        drop((c, client));
        p.shutdown().await;
    }
}
