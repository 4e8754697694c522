//! pgkeel's admin console as a drop-in for PgBouncer's: a real PgBouncer
//! (Debian's 1.18) runs beside pgkeel in front of the shared PostgreSQL;
//! every SHOW command PgBouncer has is described on both (through psycopg2,
//! as exporters connect) and pgkeel's columns must start with PgBouncer's,
//! same names, order and types. The real `prometheus-pgbouncer-exporter`
//! scrapes both: `pgbouncer_up 1`, the same metric names, per-database
//! stats and per-pool gauges. Then runbook-shaped psql scripts, the
//! read-only `stats_users`, and RECONNECT, WAIT_CLOSE, DISABLE/ENABLE,
//! KILL db and SHUTDOWN with PgBouncer's meaning.

use crate::common;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{shared_pg, TiedProcess};
use support::*;

const WITHIN: Duration = Duration::from_secs(30);

/// Every SHOW command PgBouncer 1.18 has (SHOW TOTALS is name/value rows).
const SHOW: [&str; 12] = [
    "SHOW STATS",
    "SHOW STATS_TOTALS",
    "SHOW STATS_AVERAGES",
    "SHOW TOTALS",
    "SHOW POOLS",
    "SHOW DATABASES",
    "SHOW LISTS",
    "SHOW CLIENTS",
    "SHOW SERVERS",
    "SHOW USERS",
    "SHOW CONFIG",
    "SHOW MEM",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn exporter_venv() -> PathBuf {
    let venv = repo().join("target/exporter-venv");
    assert!(
        venv.join("bin/pgbouncer-exporter").exists(),
        "the PgBouncer exporter is not installed in {}: scripts/install-drivers.sh installs it",
        venv.display()
    );
    venv
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// PgBouncer refuses to run as root: as `postgres` then.
fn postgres_ids() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "running as root needs a `postgres` user");
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

const USERS: &str = "
[[users]]
name = \"admin\"
password = \"admin_password\"
[[users]]
name = \"stats\"
password = \"stats_password\"
";

/// pgkeel with PgBouncer's console database name and both kinds of console users.
fn pgkeel_config(pg_port: u16) -> String {
    config(pg_port, "", USERS).replace(
        "[admin]\n",
        "[admin]\ndatabase = \"pgbouncer\"\nusers = [\"admin\"]\nstats_users = [\"stats\"]\n",
    )
}

/// A real PgBouncer in `dir`, in front of `pg_port`, with the same users.
fn start_pgbouncer(dir: &Path, pg_port: u16) -> (TiedProcess, u16) {
    let port = free_port();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\nappdb = host=127.0.0.1 port={pg_port}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = md5\nauth_file = {users}\nadmin_users = admin\nstats_users = stats\n\
             pool_mode = transaction\nlogfile = {log}\n",
            users = dir.join("userlist.txt").display(),
            log = dir.join("pgbouncer.log").display(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("userlist.txt"),
        "\"app\" \"app_password\"\n\"admin\" \"admin_password\"\n\"stats\" \"stats_password\"\n",
    )
    .unwrap();
    let mut cmd = Command::new("pgbouncer");
    // Quiet: its log goes to the file only.
    cmd.arg("-q").arg(&ini);
    if let Some((uid, gid)) = postgres_ids() {
        for f in ["", "pgbouncer.ini", "userlist.txt"] {
            std::os::unix::fs::chown(dir.join(f), Some(uid), Some(gid)).unwrap();
        }
        cmd.uid(uid).gid(gid);
    }
    (TiedProcess::spawn(cmd, libc::SIGTERM), port)
}

async fn listening(port: u16) -> bool {
    wait_until(WITHIN, || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await
}

type Columns = BTreeMap<String, Vec<(String, u32)>>;

/// Each command's (column, type OID) through psycopg2.
fn describe(port: u16, user: &str, password: &str) -> Columns {
    let out = Command::new(exporter_venv().join("bin/python"))
        .arg(repo().join("tests/console/describe.py"))
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} password={password} dbname=pgbouncer"
        ))
        .args(SHOW)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "describe.py on port {port}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("describe.py prints JSON")
}

/// The exporter scraping the console at `port`, on a port of its own.
fn start_exporter(dir: &Path, name: &str, port: u16) -> (TiedProcess, SocketAddr) {
    let listen = free_port();
    let yml = dir.join(format!("{name}.yml"));
    std::fs::write(
        &yml,
        format!(
            "exporter_host: 127.0.0.1\nexporter_port: {listen}\npgbouncers:\n  - dsn: postgresql://admin:admin_password@127.0.0.1:{port}/pgbouncer\n    connect_timeout: 5\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(exporter_venv().join("bin/pgbouncer-exporter"));
    cmd.arg("--config")
        .arg(&yml)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
    (
        TiedProcess::spawn(cmd, libc::SIGTERM),
        SocketAddr::from(([127, 0, 0, 1], listen)),
    )
}

/// A scrape once it has `pgbouncer_up` (the exporter answers only after its first collection).
async fn scrape(addr: SocketAddr) -> String {
    let body = std::sync::Mutex::new(String::new());
    let ok = wait_until(WITHIN, || async {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            return false;
        }
        let got = http_get(addr, "/metrics").await.1;
        let up = got.contains("pgbouncer_up");
        *body.lock().unwrap() = got;
        up
    })
    .await;
    let body = body.into_inner().unwrap();
    assert!(ok, "no pgbouncer_up from the exporter at {addr}: {body}");
    body
}

fn metric_names(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter(|l| l.starts_with("pgbouncer_"))
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn columns_and_exporter_metrics_match_a_real_pgbouncer() {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let (mut bouncer, bouncer_port) = start_pgbouncer(dir.path(), pg.port);
    assert!(listening(bouncer_port).await, "PgBouncer did not start");
    let p = start(&pgkeel_config(pg.port)).await;
    let pgkeel_port = p.local_addr().port();

    // The same traffic through both, a client left connected on each.
    let through_bouncer = connect(
        SocketAddr::from(([127, 0, 0, 1], bouncer_port)),
        "app",
        "app_password",
        "appdb",
    )
    .await
    .expect("app logs in through PgBouncer");
    let through_pgkeel = app(p.local_addr()).await;
    for c in [&through_bouncer, &through_pgkeel] {
        c.simple_query("SELECT 1").await.unwrap();
    }

    // Every SHOW: PgBouncer's columns, in its order, with its types, first.
    let theirs = describe(bouncer_port, "admin", "admin_password");
    let ours = describe(pgkeel_port, "admin", "admin_password");
    for cmd in SHOW {
        let (t, o) = (&theirs[cmd], &ours[cmd]);
        assert!(
            o.len() >= t.len() && o[..t.len()] == t[..],
            "{cmd}: PgBouncer's columns {t:?}\n  are not the start of pgkeel's {o:?}"
        );
    }
    // The read-only user may look.
    let as_stats = describe(pgkeel_port, "stats", "stats_password");
    assert_eq!(as_stats["SHOW POOLS"], ours["SHOW POOLS"]);

    // The exporter: up on both, the same metric names.
    let (mut e1, bouncer_exporter) = start_exporter(dir.path(), "bouncer", bouncer_port);
    let (mut e2, pgkeel_exporter) = start_exporter(dir.path(), "pgkeel", pgkeel_port);
    let theirs = scrape(bouncer_exporter).await;
    let ours = scrape(pgkeel_exporter).await;
    assert!(
        theirs.lines().any(|l| l == "pgbouncer_up 1.0"),
        "PgBouncer's scrape: {theirs}"
    );
    assert!(
        ours.lines().any(|l| l == "pgbouncer_up 1.0"),
        "pgkeel's scrape is not up: {ours}\nexporter log: {}",
        std::fs::read_to_string(dir.path().join("pgkeel.log")).unwrap_or_default()
    );
    assert_eq!(metric_names(&ours), metric_names(&theirs), "{ours}");
    for prefix in [
        "pgbouncer_stats_queries_total{",
        "pgbouncer_stats_transactions_total{",
        "pgbouncer_stats_received_bytes_total{",
    ] {
        let line = ours
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains("database=\"appdb\""))
            .unwrap_or_else(|| panic!("no {prefix}database=\"appdb\"}} in {ours}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v >= 1.0, "{line}");
    }
    assert!(
        ours.lines().any(
            |l| l.starts_with("pgbouncer_pools_client_active_connections{")
                && l.contains("database=\"appdb\"")
                && l.contains("user=\"app\"")
        ),
        "no appdb/app pool gauge in {ours}"
    );
    assert!(
        ours.lines()
            .any(|l| l.starts_with("pgbouncer_config_max_client_conn ")),
        "{ours}"
    );
    e1.stop();
    e2.stop();
    drop(through_bouncer);
    bouncer.stop();
    drop(through_pgkeel);
    p.shutdown().await;
}

async fn psql(port: u16, user: &str, password: &str, script: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.args([
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-v",
        "VERBOSITY=verbose",
    ])
    .args(["-h", "127.0.0.1", "-p"])
    .arg(port.to_string())
    .args(["-U", user, "-d", "pgbouncer"]);
    for c in script {
        cmd.args(["-c", c]);
    }
    cmd.env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("psql runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runbooks_and_read_only_users() {
    let pg = shared_pg();
    let p = start(&pgkeel_config(pg.port)).await;
    let port = p.local_addr().port();
    let c = app(p.local_addr()).await;
    c.simple_query("SELECT 1").await.unwrap();

    // "Drain a database for maintenance": look, pause, look, resume.
    let out = psql(
        port,
        "admin",
        "admin_password",
        &[
            "SHOW POOLS",
            "PAUSE appdb",
            "SHOW DATABASES",
            "RESUME appdb",
            "SHOW STATS",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.lines().any(|l| l.starts_with("appdb|app|")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("pgbouncer|pgbouncer|")),
        "the console's own pool row: {stdout}"
    );
    // SHOW DATABASES while paused: paused = 1 (the 12th column).
    let db = stdout
        .lines()
        .find(|l| l.starts_with("appdb|127.0.0.1|"))
        .unwrap_or_else(|| panic!("no appdb database row in {stdout}"));
    assert_eq!(db.split('|').nth(11), Some("1"), "{db}");
    c.simple_query("SELECT 1").await.expect("resumed");

    // stats_users: SHOW yes, anything that acts 42501.
    let out = psql(
        port,
        "stats",
        "stats_password",
        &["SHOW POOLS", "SHOW CONFIG", "SHOW USERS", "SHOW LISTS"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for line in [
        "max_client_conn|10000|10000|yes",
        "admin|transaction|20|admin|admin",
        "stats|transaction|20|stats|stats",
        "app|transaction|20|app|",
        "pools|1",
        // The app client and this console session.
        "used_clients|2",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} in {stdout}");
    }
    for cmd in [
        "PAUSE",
        "RESUME",
        "RELOAD",
        "KILL appdb",
        "RECONNECT",
        "DISABLE appdb",
        "SHUTDOWN",
    ] {
        let out = psql(port, "stats", "stats_password", &[cmd]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd} as a stats user");
        assert!(stderr.contains("42501"), "{cmd}: {stderr}");
    }
    // A user in neither list: 42501 at login.
    let out = psql(port, "app", "app_password", &["SHOW POOLS"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("is not in [admin] users or stats_users"),
        "{stderr}"
    );
    p.shutdown().await;
}

async fn backend_pid(c: &tokio_postgres::Client) -> String {
    match &c.simple_query("SELECT pg_backend_pid()").await.unwrap()[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
        m => panic!("{m:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_disable_kill_and_shutdown_act_like_pgbouncer() {
    let pg = shared_pg();
    let p = start(&pgkeel_config(pg.port)).await;
    let addr = p.local_addr();
    let console = std::sync::Arc::new(
        connect(addr, "admin", "admin_password", "pgbouncer")
            .await
            .unwrap(),
    );
    let a = app(addr).await;
    let b = app(addr).await;
    let before = backend_pid(&a).await;

    // RECONNECT: the idle connection goes now; one lent to an open
    // transaction goes when it ends, and WAIT_CLOSE waits for that.
    b.simple_query("BEGIN").await.unwrap();
    let b_pid = backend_pid(&b).await;
    console.simple_query("RECONNECT appdb").await.unwrap();
    let wait = {
        let console = console.clone();
        tokio::spawn(async move { console.simple_query("WAIT_CLOSE appdb").await })
    };
    let after = backend_pid(&a).await;
    assert_ne!(before, after, "a fresh connection after RECONNECT");
    assert_ne!(after, b_pid);
    assert!(
        !wait.is_finished(),
        "WAIT_CLOSE waits for the open transaction"
    );
    b.simple_query("COMMIT").await.unwrap();
    wait.await
        .unwrap()
        .expect("WAIT_CLOSE returns once it is closed");
    assert_ne!(backend_pid(&b).await, b_pid);

    // DISABLE: new logins refused (55000), clients already in go on.
    console.simple_query("DISABLE appdb").await.unwrap();
    let e = connect(addr, "app", "app_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "55000", "{e:?}");
    a.simple_query("SELECT 1").await.unwrap();
    console.simple_query("ENABLE appdb").await.unwrap();
    let c = app(addr).await;

    // KILL db: its clients end (57P01) and the database is paused.
    console.simple_query("KILL appdb").await.unwrap();
    for client in [&a, &b, &c] {
        let e = client.simple_query("SELECT 1").await.unwrap_err();
        assert!(e.is_closed() || sqlstate(&e) == "57P01", "{e:?}");
    }
    let d = app(addr).await;
    let q = tokio::spawn(async move {
        let r = d.simple_query("SELECT 1").await.map(|_| ());
        (d, r)
    });
    let held = wait_until(WITHIN, || async {
        p.shared().metrics.held_clients.get() == 1
    })
    .await;
    assert!(
        held,
        "a new transaction on a killed database waits for RESUME"
    );
    console.simple_query("RESUME appdb").await.unwrap();
    let (_d, r) = q.await.unwrap();
    r.expect("runs after RESUME");

    // SHUTDOWN asks whoever runs pgkeel to stop it.
    console.simple_query("SHUTDOWN").await.unwrap();
    tokio::time::timeout(WITHIN, p.stop_requested())
        .await
        .expect("SHUTDOWN reaches the runner");
    p.shutdown().await;
}
