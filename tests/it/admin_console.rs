//! The admin console (`psql -U admin pgkeel`): every SHOW command through
//! tokio-postgres and the real psql, typed result sets, 42501 for users not
//! in `[admin] users`, simple queries only, PAUSE/RESUME holding and
//! releasing clients, KILL ending clients without returning a dirty server
//! connection, and RELOAD.

use crate::common;
use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Buf;
use common::{pg_client, shared_pg};
use pgkeel::ProxyHandle;
use support::*;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN_USER: &str = "[[users]]\nname = \"admin\"\npassword = \"admin_password\"\n";

/// The support config with an `admin` user allowed in the console.
fn admin_config(pg_port: u16, proxy: &str) -> String {
    config(pg_port, proxy, ADMIN_USER).replace("[admin]\n", "[admin]\nusers = [\"admin\"]\n")
}

async fn admin(addr: SocketAddr) -> Client {
    connect(addr, "admin", "admin_password", "pgkeel")
        .await
        .expect("admin logs in to the console")
}

type Rows = Vec<HashMap<String, Option<String>>>;

/// Runs one console command; returns its column names and rows.
async fn show(c: &Client, cmd: &str) -> (Vec<String>, Rows) {
    let msgs = c
        .simple_query(cmd)
        .await
        .unwrap_or_else(|e| panic!("{cmd}: {e:?}"));
    let mut cols = Vec::new();
    let mut rows = Vec::new();
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(d) => {
                cols = d.iter().map(|c| c.name().to_owned()).collect()
            }
            SimpleQueryMessage::Row(r) => rows.push(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => {}
        }
    }
    (cols, rows)
}

fn get<'a>(row: &'a HashMap<String, Option<String>>, col: &str) -> &'a str {
    row.get(col)
        .unwrap_or_else(|| panic!("no column {col} in {row:?}"))
        .as_deref()
        .unwrap_or("NULL")
}

/// The error a console command returns: (SQLSTATE, message).
async fn console_error(c: &Client, cmd: &str) -> (String, String) {
    let e = c.simple_query(cmd).await.expect_err("the command fails");
    let db = e.as_db_error().unwrap_or_else(|| panic!("{cmd}: {e:?}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// A row of SHOW CLIENTS matching `pred`, once one does (polled as
/// `wait_until` polls, for up to 10 s).
async fn wait_client(
    c: &Client,
    what: &str,
    pred: impl Fn(&HashMap<String, Option<String>>) -> bool,
) -> HashMap<String, Option<String>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, rows) = show(c, "SHOW CLIENTS").await;
        if let Some(r) = rows.into_iter().find(|r| pred(r)) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no client {what} in SHOW CLIENTS"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first column of the first DataRow in `msgs` (raw protocol).
fn first_value(msgs: &[(u8, bytes::BytesMut)]) -> String {
    let (_, body) = msgs.iter().find(|(t, _)| *t == b'D').expect("a DataRow");
    let mut b = &body[2..];
    let len = b.get_i32() as usize;
    String::from_utf8_lossy(&b[..len]).into_owned()
}

/// Type OIDs of a result's columns, by name (raw protocol).
fn column_types(msgs: &[(u8, bytes::BytesMut)]) -> HashMap<String, u32> {
    let (_, body) = msgs
        .iter()
        .find(|(t, _)| *t == b'T')
        .expect("a RowDescription");
    let mut b = &body[..];
    let n = b.get_i16();
    let mut out = HashMap::new();
    for _ in 0..n {
        let end = b.iter().position(|&c| c == 0).unwrap();
        let name = String::from_utf8_lossy(&b[..end]).into_owned();
        b.advance(end + 1);
        let _table = b.get_i32();
        let _col = b.get_i16();
        let oid = b.get_u32();
        b.advance(2 + 4 + 2);
        out.insert(name, oid);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_show_command_answers_typed_rows() {
    let pg = shared_pg();
    let p = start(&admin_config(pg.port, "")).await;
    let addr = p.local_addr();
    // Two server connections: one lent to `busy`, one idle.
    let idle = app(addr).await;
    idle.simple_query("BEGIN; SELECT 1").await.unwrap();
    let busy = app(addr).await;
    let rows = busy
        .simple_query("BEGIN; SELECT pg_backend_pid()")
        .await
        .unwrap();
    idle.simple_query("COMMIT").await.unwrap();
    let busy_pid = rows
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap();
    let c = admin(addr).await;
    // The session returns its server and goes idle only after relaying
    // COMMIT's answer: wait for that before counting clients and servers.
    wait_client(&c, "idle after its COMMIT", |r| {
        get(r, "user") == "app" && get(r, "state") == "idle"
    })
    .await;

    // SHOW CLIENTS: both app clients and the console itself.
    let (cols, rows) = show(&c, "SHOW CLIENTS").await;
    for col in [
        "type",
        "user",
        "database",
        "state",
        "addr",
        "port",
        "connect_time",
        "request_time",
        "wait",
        "wait_us",
        "application_name",
        "id",
        "link",
        "server",
        "server_pid",
        "member",
    ] {
        assert!(
            cols.iter().any(|c| c == col),
            "SHOW CLIENTS lacks {col}: {cols:?}"
        );
    }
    let apps: Vec<_> = rows.iter().filter(|r| get(r, "user") == "app").collect();
    assert_eq!(apps.len(), 2, "{rows:?}");
    assert!(apps.iter().all(|r| get(r, "database") == "appdb"));
    assert!(apps.iter().all(|r| get(r, "addr") == "127.0.0.1"));
    let active = apps
        .iter()
        .find(|r| get(r, "state") == "active")
        .expect("the client in a transaction is active");
    assert_eq!(get(active, "server_pid"), busy_pid);
    assert_eq!(get(active, "server"), format!("127.0.0.1:{}", pg.port));
    assert_eq!(get(active, "member"), format!("127.0.0.1:{}", pg.port));
    let idle_row = apps.iter().find(|r| get(r, "state") == "idle").unwrap();
    assert_eq!(get(idle_row, "link"), "NULL");
    assert!(get(idle_row, "connect_time").ends_with(" UTC"));
    let me = rows.iter().find(|r| get(r, "user") == "admin").unwrap();
    assert_eq!(
        (get(me, "database"), get(me, "state")),
        ("pgkeel", "active")
    );

    // SHOW POOLS: PgBouncer's columns first, one row per database and
    // user; SHOW MEMBER_POOLS the same per member, with its role.
    let (cols, _) = show(&c, "show pools;").await;
    assert_eq!(
        &cols[..6],
        [
            "database",
            "user",
            "cl_active",
            "cl_waiting",
            "cl_active_cancel_req",
            "cl_waiting_cancel_req"
        ]
    );
    let (_, rows) = show(&c, "show member_pools;").await;
    let pool = rows
        .iter()
        .find(|r| get(r, "database") == "appdb" && get(r, "user") == "app")
        .expect("the app pool");
    assert_eq!(get(pool, "cl_active"), "1");
    assert_eq!(get(pool, "cl_idle"), "1");
    assert_eq!(get(pool, "cl_waiting"), "0");
    assert_eq!(get(pool, "sv_active"), "1");
    let idle_servers: u32 =
        get(pool, "sv_idle").parse::<u32>().unwrap() + get(pool, "sv_used").parse::<u32>().unwrap();
    assert_eq!(idle_servers, 1, "{pool:?}");
    assert_eq!(get(pool, "role"), "primary");
    assert_eq!(get(pool, "port"), pg.port.to_string());
    assert_eq!(get(pool, "pool_mode"), "transaction");
    assert_eq!(get(pool, "paused"), "0");
    assert_eq!(get(pool, "pool_size"), "20");
    assert_eq!(get(pool, "maxwait"), "0");

    // SHOW SERVERS: the lent connection points at its client.
    let (cols, rows) = show(&c, "SHOW SERVERS").await;
    assert!(cols.iter().any(|c| c == "remote_pid"));
    let lent = rows
        .iter()
        .find(|r| get(r, "state") == "active")
        .expect("an active server");
    assert_eq!(get(lent, "remote_pid"), busy_pid);
    assert_eq!(get(lent, "link"), get(active, "ptr"));
    assert_eq!(get(lent, "client_id"), get(active, "id"));
    assert_eq!(get(lent, "role"), "primary");
    assert!(rows
        .iter()
        .any(|r| matches!(get(r, "state"), "idle" | "used") && get(r, "link") == "NULL"));

    // SHOW STATS: totals from the metrics.
    busy.simple_query("COMMIT").await.unwrap();
    // A transaction is counted once its server is released, which follows
    // the answer to COMMIT: wait for both before reading the totals.
    let metrics = &p.shared().metrics;
    let counted = wait_until(Duration::from_secs(10), || async {
        metrics.transactions_completed() >= 2
    })
    .await;
    assert!(counted, "{} transactions", metrics.transactions_completed());
    // Per database, the console's own row first (as PgBouncer's).
    let (cols, rows) = show(&c, "SHOW STATS").await;
    let completed = metrics.transactions_completed();
    assert_eq!(get(&rows[0], "database"), "pgkeel", "{rows:?}");
    assert_eq!(cols[0], "database");
    for col in ["total_xact_count", "total_query_count", "total_wait_time"] {
        assert!(cols.iter().any(|c| c == col), "{cols:?}");
    }
    let appdb = rows
        .iter()
        .find(|r| get(r, "database") == "appdb")
        .expect("an appdb row");
    let xacts: u64 = get(appdb, "total_xact_count").parse().unwrap();
    assert!(xacts >= 2, "{rows:?}");
    assert_eq!(xacts, completed, "{rows:?}");
    let stat = |col: &str| -> u64 { get(appdb, col).parse().unwrap() };
    for col in [
        "total_received",
        "total_sent",
        "total_query_time",
        "total_xact_time",
    ] {
        assert!(stat(col) > 0, "{col}: {rows:?}");
    }
    assert_eq!(
        stat("total_received"),
        p.shared().metrics.client_bytes_received_total.get()
    );
    // SHOW TOTALS: name/value rows, PgBouncer's then pgkeel's.
    let (_, rows) = show(&c, "SHOW TOTALS").await;
    let total = |name: &str| -> String {
        rows.iter()
            .find(|r| get(r, "name") == name)
            .map(|r| get(r, "value").to_owned())
            .unwrap_or_else(|| panic!("no {name} in {rows:?}"))
    };
    assert_eq!(total("total_xact_count"), completed.to_string());
    assert_eq!(total("clients_connected"), "3");

    // SHOW TOPOLOGY: the one server, primary and healthy.
    let (_, rows) = show(&c, "SHOW TOPOLOGY").await;
    assert_eq!(rows.len(), 1);
    let m = &rows[0];
    assert_eq!(get(m, "host"), "127.0.0.1");
    assert_eq!((get(m, "role"), get(m, "state")), ("primary", "up"));
    assert_eq!((get(m, "healthy"), get(m, "primary")), ("t", "t"));
    assert!(get(m, "lsn").contains('/'), "{m:?}");

    // SHOW FAILOVERS: none yet, but the columns are there.
    let (cols, rows) = show(&c, "SHOW FAILOVERS").await;
    assert!(rows.is_empty());
    assert_eq!(cols[..3], ["kind", "started_at", "ended_at"]);

    // SHOW CONFIG: every key, passwords masked.
    let (cols, rows) = show(&c, "SHOW CONFIG").await;
    assert_eq!(cols, ["key", "value", "default", "changeable"]);
    let key = |k: &str| {
        rows.iter()
            .find(|r| get(r, "key") == k)
            .unwrap_or_else(|| panic!("no {k}"))
    };
    assert_eq!(get(key("proxy.pool_size"), "value"), "20");
    assert_eq!(get(key("proxy.pool_size"), "changeable"), "yes");
    assert_eq!(get(key("proxy.listen"), "changeable"), "no");
    assert_eq!(get(key("admin.users"), "value"), "[\"admin\"]");
    assert_eq!(get(key("admin.database"), "default"), "pgkeel");
    assert_eq!(get(key("health.password"), "value"), "********");
    assert_eq!(get(key("users[0].password"), "value"), "********");
    assert_eq!(get(key("users[0].server_password"), "value"), "********");
    let everything = format!("{rows:?}");
    for pw in [
        "app_password",
        "admin_password",
        "md5_password",
        "scram_password",
        "trust_password",
        "clear_password",
    ] {
        assert!(!everything.contains(pw), "SHOW CONFIG shows {pw}");
    }

    let (_, rows) = show(&c, "Show Version").await;
    assert_eq!(
        get(&rows[0], "version"),
        format!("pgkeel {}", env!("CARGO_PKG_VERSION"))
    );
    let (_, rows) = show(&c, "SHOW HELP").await;
    assert!(rows.iter().any(|r| get(r, "command") == "KILL <id>"));

    // Mistakes are errors, and the console stays usable.
    let (code, msg) = console_error(&c, "SHOW POLS").await;
    assert_eq!(code, "42601");
    assert!(msg.contains("SHOW POOLS") && msg.contains("KILL"), "{msg}");
    let (code, _) = console_error(&c, "SELECT 1").await;
    assert_eq!(code, "42601");
    let (code, _) = console_error(&c, "KILL 999999").await;
    assert_eq!(code, "42704");
    let (code, _) = console_error(&c, "RELOAD").await;
    assert_eq!(code, "55000", "started without a file: nothing to reload");
    let e = c.query("SHOW POOLS", &[]).await.unwrap_err();
    assert_eq!(sqlstate(&e), "0A000", "extended protocol: {e}");
    show(&c, "SHOW VERSION").await;

    // Several commands in one query each answer.
    let msgs = c.simple_query("SHOW VERSION; SHOW VERSION").await.unwrap();
    let complete = msgs
        .iter()
        .filter(|m| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .count();
    assert_eq!(complete, 2);

    drop((idle, busy, c));
    p.shutdown().await;
}

#[tokio::test]
async fn result_sets_are_typed_like_pgbouncer() {
    let pg = shared_pg();
    let p = start(&admin_config(pg.port, "")).await;
    let c = app(p.local_addr()).await;
    c.simple_query("SELECT 1").await.unwrap();
    let (mut raw, _) = Raw::login(p.local_addr(), "admin", "admin_password", "pgkeel").await;
    raw.query("SHOW POOLS").await;
    let (msgs, status) = raw.until_ready().await;
    assert_eq!(status, b'I');
    let types = column_types(&msgs);
    assert_eq!(types["database"], 25, "text");
    for col in ["cl_active", "cl_waiting", "sv_active", "sv_idle", "maxwait"] {
        assert_eq!(types[col], 23, "{col} is int4");
    }
    raw.query("SHOW STATS").await;
    let (msgs, _) = raw.until_ready().await;
    assert_eq!(
        column_types(&msgs)["total_xact_count"],
        1700,
        "numeric, as PgBouncer's"
    );
    raw.query("SHOW CLIENTS").await;
    let (msgs, _) = raw.until_ready().await;
    let types = column_types(&msgs);
    assert_eq!(
        (types["port"], types["id"], types["connect_time"]),
        (23, 20, 25)
    );
    raw.query("SHOW TOPOLOGY").await;
    let (msgs, _) = raw.until_ready().await;
    assert_eq!(column_types(&msgs)["healthy"], 16, "bool");

    // Extended protocol: one error, then nothing until Sync, which answers.
    raw.send_msg(b'P', b"\0SHOW POOLS\0\0\0").await;
    raw.send_msg(b'B', b"\0\0\0\0\0\0\0\0").await;
    raw.send_msg(b'E', b"\0\0\0\0\0").await;
    raw.send_msg(b'S', b"").await;
    assert_eq!(raw.expect_error().await, ("ERROR".into(), "0A000".into()));
    let (msgs, status) = raw.until_ready().await;
    assert!(msgs.is_empty(), "one error only: {msgs:?}");
    assert_eq!(status, b'I');
    raw.query("SHOW VERSION").await;
    let (msgs, _) = raw.until_ready().await;
    assert!(first_value(&msgs).starts_with("pgkeel "));
    drop(c);
    p.shutdown().await;
}

/// psql, as an operator runs it.
async fn psql(port: u16, user: &str, password: &str, cmd: &str) -> std::process::Output {
    tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-c", cmd, "pgkeel"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_shows_pools_clients_and_version() {
    let pg = shared_pg();
    let p = start(&admin_config(pg.port, "")).await;
    let port = p.local_addr().port();
    let c = app(p.local_addr()).await;
    c.simple_query("SELECT 1").await.unwrap();

    let out = psql(port, "admin", "admin_password", "SHOW VERSION").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("pgkeel {}", env!("CARGO_PKG_VERSION"))
    );

    let out = psql(port, "admin", "admin_password", "show pools;").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with("appdb|app|"))
        .unwrap_or_else(|| panic!("no appdb pool in {stdout}"))
        .split('|')
        .collect();
    // database|user|cl_active|cl_waiting|cl_active_cancel_req|cl_waiting_cancel_req|sv_active|...
    assert_eq!(&row[2..7], ["0", "0", "0", "0", "0"], "{stdout}");

    let out = psql(port, "admin", "admin_password", "SHOW CLIENTS").await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("C|app|appdb|idle|127.0.0.1|")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("C|admin|pgkeel|active|")),
        "psql sees itself: {stdout}"
    );

    let out = psql(port, "admin", "admin_password", "SHOW NOTHING").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown admin console command"), "{stderr}");

    // Not an admin: refused with 42501 and a clear message.
    let out = psql(port, "app", "app_password", "SHOW POOLS").await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("[admin] users"), "{stderr}");
    drop(c);
    p.shutdown().await;
}

#[tokio::test]
async fn only_admin_users_get_the_console() {
    let pg = shared_pg();
    let p = start(&admin_config(pg.port, "")).await;
    let e = connect(p.local_addr(), "app", "app_password", "pgkeel")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    assert!(
        e.as_db_error()
            .unwrap()
            .message()
            .contains("\"app\" is not in [admin] users"),
        "{e}"
    );
    // The password is checked first.
    let e = connect(p.local_addr(), "admin", "wrong", "pgkeel")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    // The same admin user on a real database gets a pooled session.
    let e = connect(p.local_addr(), "admin", "admin_password", "postgres")
        .await
        .expect_err("admin has no role on the server");
    assert_eq!(sqlstate(&e), "28P01", "pooled, so the server decides: {e}");
    p.shutdown().await;

    // No [admin] users (the default): nobody gets in.
    let p = start(&config(pg.port, "", "")).await;
    let e = connect(p.local_addr(), "app", "app_password", "pgkeel")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e}");
    p.shutdown().await;
}

async fn held(p: &ProxyHandle) -> i64 {
    p.shared().metrics.held_clients.get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_new_transactions_until_resume() {
    let pg = shared_pg();
    let p = start(&admin_config(pg.port, "")).await;
    let addr = p.local_addr();
    let c = admin(addr).await;
    let client = std::sync::Arc::new(app(addr).await);
    client.simple_query("SELECT 1").await.unwrap();

    // PAUSE of one database holds its next statement; others run on.
    c.simple_query("PAUSE appdb").await.unwrap();
    let (_, pools) = show(&c, "SHOW POOLS").await;
    assert!(pools
        .iter()
        .filter(|r| get(r, "database") == "appdb")
        .all(|r| get(r, "paused") == "1"));
    let other = connect(addr, "app", "app_password", "postgres")
        .await
        .unwrap();
    other.simple_query("SELECT 1").await.unwrap();
    let q = {
        let client = client.clone();
        tokio::spawn(async move { client.simple_query("SELECT 42").await })
    };
    wait_client(&c, "held in appdb", |r| {
        get(r, "database") == "appdb" && get(r, "state") == "held"
    })
    .await;
    assert_eq!(held(&p).await, 1);
    assert!(!q.is_finished(), "a paused database's statement waits");
    let (_, pools) = show(&c, "SHOW POOLS").await;
    let pool = pools
        .iter()
        .find(|r| get(r, "database") == "appdb")
        .unwrap();
    assert_eq!(get(pool, "cl_held"), "1", "{pool:?}");
    let (_, status) = http_get(p.admin_addr().unwrap(), "/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["paused"]["databases"], serde_json::json!(["appdb"]));

    let (code, _) = console_error(&c, "PAUSE appdb").await;
    assert_eq!(code, "55000", "already paused");
    c.simple_query("resume appdb;").await.unwrap();
    let rows = q
        .await
        .unwrap()
        .expect("the held statement runs after RESUME");
    assert!(matches!(&rows[1], SimpleQueryMessage::Row(r) if r.get(0) == Some("42")));
    assert_eq!(held(&p).await, 0);
    let (code, _) = console_error(&c, "RESUME appdb").await;
    assert_eq!(code, "55000", "not paused");

    // PAUSE of everything waits for the transaction in flight to end.
    client.simple_query("BEGIN; SELECT 1").await.unwrap();
    let pause = tokio::spawn(async move {
        let c2 = admin(addr).await;
        c2.simple_query("PAUSE").await.map(|_| c2)
    });
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.shared().pause.current().all
        })
        .await
    );
    assert!(!pause.is_finished(), "PAUSE waits for the open transaction");
    client.simple_query("COMMIT").await.unwrap();
    let c2 = pause.await.unwrap().expect("PAUSE returns once it ended");
    let q = {
        let client = client.clone();
        tokio::spawn(async move { client.simple_query("SELECT 1").await })
    };
    assert!(
        wait_until(Duration::from_secs(10), || async { held(&p).await == 1 }).await,
        "paused: the next transaction is held"
    );
    assert!(!q.is_finished());
    c2.simple_query("RESUME").await.unwrap();
    q.await.unwrap().expect("runs after RESUME");
    assert!(!p.shared().pause.current().all);
    drop((c, c2, other, client));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_clients_and_never_returns_a_dirty_server() {
    let pg = shared_pg();
    let direct = pg_client(pg.port, "postgres", "postgres", "appdb").await;
    direct
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kill_probe (x int); GRANT ALL ON kill_probe TO app; TRUNCATE kill_probe",
        )
        .await
        .unwrap();
    // One server connection: whoever comes next gets the killed client's.
    let p = start(&admin_config(pg.port, "pool_size = 1")).await;
    let addr = p.local_addr();
    let c = admin(addr).await;

    // Idle in a transaction with an uncommitted write.
    let (mut a, _) = Raw::login(addr, "app", "app_password", "appdb").await;
    a.query("BEGIN; INSERT INTO kill_probe VALUES (1); SELECT pg_backend_pid()")
        .await;
    let (msgs, status) = a.until_ready().await;
    assert_eq!(status, b'T');
    let pid = first_value(&msgs);
    let row = wait_client(&c, "in a transaction", |r| get(r, "server_pid") == pid).await;
    let id = get(&row, "id").to_owned();
    assert_eq!(get(&row, "state"), "active");
    c.simple_query(&format!("KILL {id}")).await.unwrap();
    assert_eq!(a.expect_error().await, ("FATAL".into(), "57P01".into()));
    assert!(a.closed().await);
    assert_eq!(lent(&p), 0);
    let (_, rows) = show(&c, "SHOW CLIENTS").await;
    assert!(
        rows.iter().all(|r| get(r, "id") != id),
        "gone from SHOW CLIENTS"
    );
    // Its server connection was rolled back and reused, clean.
    let b = app(addr).await;
    let rows = b
        .simple_query(
            "SELECT pg_backend_pid(), (SELECT count(*) FROM kill_probe), pg_current_xact_id_if_assigned() IS NULL",
        )
        .await
        .unwrap();
    let SimpleQueryMessage::Row(r) = &rows[1] else {
        panic!("{rows:?}")
    };
    assert_eq!(r.get(0), Some(pid.as_str()), "the same server connection");
    assert_eq!(
        r.get(1),
        Some("0"),
        "the uncommitted insert was rolled back"
    );
    assert_eq!(r.get(2), Some("t"), "no transaction left open");

    // Mid-query: the query is cancelled and the server connection closed.
    let (mut m, _) = Raw::login(addr, "app", "app_password", "appdb").await;
    m.query("SELECT pg_backend_pid(), pg_sleep(60)").await;
    let row = wait_client(&c, "running pg_sleep", |r| {
        get(r, "state") == "active" && get(r, "user") == "app" && get(r, "server_pid") != "NULL"
    })
    .await;
    let busy_pid: i32 = get(&row, "server_pid").parse().unwrap();
    c.simple_query(&format!("KILL {}", get(&row, "id")))
        .await
        .unwrap();
    assert_eq!(m.expect_error().await, ("FATAL".into(), "57P01".into()));
    assert!(m.closed().await);
    // Generous: on a loaded machine the cancel and the close take a while;
    // a connection returned to the pool would stay forever.
    assert!(
        wait_until(Duration::from_secs(30), || async {
            direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&busy_pid],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 0
        })
        .await,
        "the busy server connection was closed, not returned"
    );
    assert_eq!(lent(&p), 0);
    b.simple_query("SELECT 1").await.expect("the pool works on");

    // Held (its database paused): FATAL at once, no ERROR first.
    c.simple_query("PAUSE appdb").await.unwrap();
    let (mut h, _) = Raw::login(addr, "app", "app_password", "appdb").await;
    h.query("SELECT 1").await;
    let row = wait_client(&c, "held", |r| get(r, "state") == "held").await;
    c.simple_query(&format!("KILL {}", get(&row, "id")))
        .await
        .unwrap();
    assert_eq!(h.expect_error().await, ("FATAL".into(), "57P01".into()));
    assert!(h.closed().await);
    assert!(wait_until(Duration::from_secs(5), || async { held(&p).await == 0 }).await);
    c.simple_query("RESUME appdb").await.unwrap();

    let (_, rows) = show(&c, "SHOW CLIENTS").await;
    let me = rows.iter().find(|r| get(r, "user") == "admin").unwrap();
    let (code, _) = console_error(&c, &format!("KILL {}", get(me, "id"))).await;
    assert_eq!(code, "55000", "not yourself");
    drop((b, c));
    p.shutdown().await;
}

fn write_config(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_a_valid_file_and_rejects_an_invalid_one() {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.toml");
    write_config(&path, &admin_config(pg.port, "pool_size = 5"));
    let p = pgkeel::Proxy::start(pgkeel::config::Config::from_file(&path).unwrap())
        .await
        .unwrap();
    // Known but not watched: only RELOAD reloads it.
    p.config_file(&path);
    let c = admin(p.local_addr()).await;
    let value = |rows: &Rows, k: &str| {
        get(rows.iter().find(|r| get(r, "key") == k).unwrap(), "value").to_owned()
    };

    // Valid: pool size changes, and the admin users too (app joins).
    write_config(
        &path,
        &admin_config(pg.port, "pool_size = 7")
            .replace("users = [\"admin\"]", "users = [\"admin\", \"app\"]"),
    );
    assert_eq!(
        p.shared().config.load().users[0].pool_size,
        5,
        "not watched"
    );
    c.simple_query("RELOAD").await.unwrap();
    assert_eq!(p.shared().config.load().users[0].pool_size, 7);
    let (_, rows) = show(&c, "SHOW CONFIG").await;
    assert_eq!(value(&rows, "proxy.pool_size"), "7");
    let app_admin = connect(p.local_addr(), "app", "app_password", "pgkeel")
        .await
        .expect("app is an admin now");
    show(&app_admin, "SHOW VERSION").await;

    // Invalid: an error naming the key and line; nothing changes.
    let errors = p
        .shared()
        .metrics
        .config_reloads_total
        .with_label_values(&["error"])
        .get();
    write_config(&path, &admin_config(pg.port, "pool_size = 0"));
    let (code, msg) = console_error(&c, "reload").await;
    assert_eq!(code, "F0000");
    assert!(
        msg.contains("proxy.pool_size") && msg.contains("line"),
        "{msg}"
    );
    assert_eq!(p.shared().config.load().users[0].pool_size, 7);
    let (_, rows) = show(&c, "SHOW CONFIG").await;
    assert_eq!(value(&rows, "proxy.pool_size"), "7");
    assert_eq!(
        p.shared()
            .metrics
            .config_reloads_total
            .with_label_values(&["error"])
            .get(),
        errors + 1
    );
    // A restart-only key: applied later, named now.
    write_config(
        &path,
        &admin_config(pg.port, "pool_size = 7\nmax_client_connections = 5"),
    );
    let msgs = c.simple_query("RELOAD").await.unwrap();
    assert!(matches!(
        msgs.last(),
        Some(SimpleQueryMessage::CommandComplete(_))
    ));
    assert_eq!(
        p.shared().config_info.load().pending_restart,
        vec!["proxy.max_client_connections".to_string()]
    );
    // app left [admin] users: its console session ends at its next command.
    let e = app_admin.simple_query("SHOW VERSION").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501", "{e:?}");
    drop((c, app_admin));
    p.shutdown().await;
}
