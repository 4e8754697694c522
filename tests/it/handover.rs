//! An upgrade that keeps client connections, through the real binaries:
//! pgkeel A serves pgbench (persistent connections, prepared statements,
//! transaction mode) and a few clients with settings, prepared statements
//! and an open transaction; pgkeel B starts beside it with `--takeover`
//! (the same binary: the protocol between them carries a version, so an
//! old and a new binary work the same way), receives A's listening sockets
//! and then its idle clients; A exits. No transaction fails, no client
//! connection closes, new connections all succeed during the switch, the
//! clients keep their settings, prepared statements and cancel keys.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::{self, shared_pg, TiedProcess};
use crate::support::{self, connect, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_pgkeel");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One pgkeel process, its output in a file.
struct Pgkeel {
    process: TiedProcess,
    log: PathBuf,
}

impl Pgkeel {
    fn start(config: &Path, log: PathBuf, takeover: bool) -> Pgkeel {
        Pgkeel::start_stopped_by(config, log, takeover, libc::SIGTERM)
    }

    /// `stop` sends `signal` (SIGKILL: a process that dies mid-handover).
    fn start_stopped_by(config: &Path, log: PathBuf, takeover: bool, signal: i32) -> Pgkeel {
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(config);
        if takeover {
            cmd.arg("--takeover");
        }
        cmd.env("RUST_LOG", "info")
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        Pgkeel {
            process: TiedProcess::spawn(cmd, signal),
            log,
        }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The table pgbench's script works on, this module's own.
async fn create_table() {
    let pg = shared_pg();
    let c = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    c.batch_execute(
        "DROP TABLE IF EXISTS handover_accounts;
         CREATE TABLE handover_accounts (id int PRIMARY KEY, n bigint NOT NULL DEFAULT 0);
         INSERT INTO handover_accounts SELECT g FROM generate_series(1, 100) g;
         GRANT ALL ON handover_accounts TO app;",
    )
    .await
    .unwrap();
}

const SCRIPT: &str = "\\set id random(1, 100)
BEGIN;
UPDATE handover_accounts SET n = n + 1 WHERE id = :id;
SELECT n FROM handover_accounts WHERE id = :id;
END;
";

/// A config in `dir` for two processes taking turns on one port (and one
/// admin port), with `extra` appended; its addresses.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    socket: PathBuf,
    addr: SocketAddr,
    admin: SocketAddr,
}

fn setup(extra: &str) -> Setup {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let socket = dir.path().join("pgkeel.handover");
    let proxy = format!(
        "handover_socket = \"{}\"\nhandover_timeout = \"60s\"\nshutdown_timeout = \"5s\"",
        socket.display()
    );
    let text = support::config(pg.port, &proxy, extra)
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{admin_port}\"\nusers = [\"app\"]"),
            1,
        );
    let config = dir.path().join("pgkeel.toml");
    std::fs::write(&config, text).unwrap();
    Setup {
        config,
        socket,
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
        admin: format!("127.0.0.1:{admin_port}").parse().unwrap(),
        dir,
    }
}

impl Setup {
    /// The first process, once it accepts and listens for a takeover.
    async fn start_old(&self) -> Pgkeel {
        let a = Pgkeel::start(&self.config, self.dir.path().join("a.out"), false);
        assert!(
            wait_until(Duration::from_secs(20), || async {
                tokio::net::TcpStream::connect(self.addr).await.is_ok() && self.socket.exists()
            })
            .await,
            "pgkeel A did not start:\n{}",
            a.output()
        );
        a
    }

    /// The second, with `--takeover`, once the first stopped accepting.
    async fn take_over(&self, a: &Pgkeel) -> Pgkeel {
        self.take_over_with(a, &self.config).await
    }

    /// The same, on another configuration file.
    async fn take_over_with(&self, a: &Pgkeel, config: &Path) -> Pgkeel {
        self.take_over_as(a, config, "b.out").await
    }

    /// The same, with its output in `log`.
    async fn take_over_as(&self, a: &Pgkeel, config: &Path, log: &str) -> Pgkeel {
        self.take_over_stopped_by(a, config, log, libc::SIGTERM)
            .await
    }

    async fn take_over_stopped_by(
        &self,
        a: &Pgkeel,
        config: &Path,
        log: &str,
        signal: i32,
    ) -> Pgkeel {
        let b = Pgkeel::start_stopped_by(config, self.dir.path().join(log), true, signal);
        assert!(
            wait_until(Duration::from_secs(20), || async {
                a.output().contains("handover: the new process accepts")
            })
            .await,
            "no handover:\nA:\n{}\nB:\n{}",
            a.output(),
            b.output()
        );
        b
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_under_pgbench_keeps_every_client_and_transaction() {
    let pg = shared_pg();
    create_table().await;
    let setup = setup("");
    let Setup {
        addr, admin, dir, ..
    } = &setup;
    let (addr, admin, port) = (*addr, *admin, addr.port());
    let script = dir.path().join("handover.sql");
    std::fs::write(&script, SCRIPT).unwrap();
    let a = setup.start_old().await;

    // Clients of A with state that must move: settings (a reported one
    // and another), a protocol-level and an SQL-level prepared statement.
    let settings = connect(addr, "app", "app_password", "appdb").await.unwrap();
    settings
        .batch_execute("SET TimeZone = 'Asia/Tokyo'; SET statement_timeout = '123s'")
        .await
        .unwrap();
    settings
        .batch_execute("PREPARE handover_plus(int) AS SELECT $1 + 1")
        .await
        .unwrap();
    let stmt = settings
        .prepare("SELECT n FROM handover_accounts WHERE id = $1")
        .await
        .unwrap();
    settings.query_one(&stmt, &[&1i32]).await.unwrap();
    // A client whose query is cancelled once it lives on B.
    let cancelled = connect(addr, "app", "app_password", "appdb").await.unwrap();
    cancelled.simple_query("SELECT 1").await.unwrap();
    // A client inside a transaction when the handover starts: it moves
    // once the transaction ends.
    let busy = connect(addr, "app", "app_password", "appdb").await.unwrap();
    busy.batch_execute("BEGIN; UPDATE handover_accounts SET n = n + 1 WHERE id = 100")
        .await
        .unwrap();

    let bench = tokio::process::Command::new("pgbench")
        .args(["-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "20"])
        .arg("-f")
        .arg(&script)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "app",
            "appdb",
        ])
        .env("PGPASSWORD", "app_password")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench starts");
    // pgbench's transactions flow through A before the upgrade.
    let pg_client = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    let total = || async {
        let r = pg_client
            .query_one("SELECT sum(n)::bigint FROM handover_accounts", &[])
            .await
            .unwrap();
        r.get::<_, i64>(0)
    };
    let before = total().await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            total().await > before + 50
        })
        .await,
        "no pgbench traffic through A"
    );

    // New connections keep coming during the switch: every one succeeds.
    let stop = Arc::new(AtomicBool::new(false));
    let (opened, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let newcomers = {
        let (stop, opened, failed) = (stop.clone(), opened.clone(), failed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match connect(addr, "app", "app_password", "appdb").await {
                    Ok(c) if c.simple_query("SELECT 1").await.is_ok() => {
                        opened.fetch_add(1, Ordering::SeqCst);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };

    // B takes the listeners: A says so once B accepts.
    let b = setup.take_over(&a).await;
    // The open transaction ends on A; its client then moves too.
    busy.batch_execute("COMMIT").await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async { !a.process.running() }).await,
        "A did not exit:\n{}",
        a.output()
    );
    stop.store(true, Ordering::SeqCst);
    newcomers.await.unwrap();
    let a_out = a.output();
    assert!(a_out.contains("handover done"), "{a_out}");
    assert!(b.process.running(), "B exited:\n{}", b.output());
    // pgbench's four connections are B's now (its console lists them).
    let console = connect(addr, "app", "app_password", "pgkeel")
        .await
        .unwrap();
    let on_b = console
        .simple_query("SHOW CLIENTS")
        .await
        .unwrap()
        .into_iter()
        .filter(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                r.get("application_name") == Some("pgbench")
            }
            _ => false,
        })
        .count();
    assert_eq!(on_b, 4, "pgbench clients on B:\nA:\n{a_out}");

    // Every client of A lives on B, with its state.
    for c in [&settings, &cancelled, &busy] {
        assert!(!c.is_closed(), "a client connection closed:\n{a_out}");
    }
    let row = |msgs: Vec<tokio_postgres::SimpleQueryMessage>| {
        msgs.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap().to_owned()),
                _ => None,
            })
            .unwrap()
    };
    assert_eq!(
        row(settings.simple_query("SHOW TimeZone").await.unwrap()),
        "Asia/Tokyo"
    );
    assert_eq!(
        row(settings
            .simple_query("SHOW statement_timeout")
            .await
            .unwrap()),
        "123s"
    );
    assert_eq!(
        row(settings
            .simple_query("EXECUTE handover_plus(41)")
            .await
            .unwrap()),
        "42"
    );
    settings.query_one(&stmt, &[&1i32]).await.unwrap();
    busy.simple_query("SELECT 1").await.unwrap();
    // Its cancel key works on B: the statement it runs there is cancelled.
    let token = cancelled.cancel_token();
    let sleeping = tokio::spawn(async move { cancelled.simple_query("SELECT pg_sleep(60)").await });
    let sleeping_seen = wait_until(Duration::from_secs(10), || async {
        let r = pg_client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(60)' AND state = 'active'",
                &[],
            )
            .await
            .unwrap();
        r.get::<_, i64>(0) > 0
    })
    .await;
    assert!(sleeping_seen, "the query to cancel never ran");
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err}"
    );

    let out = bench.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "pgbench failed:\n{stdout}\n{stderr}\nA:\n{a_out}"
    );
    assert!(
        stdout.contains("number of failed transactions: 0 ")
            && !stdout.contains("aborted")
            && !stderr.contains("error"),
        "pgbench saw failures:\n{stdout}\n{stderr}"
    );
    assert_eq!(failed.load(Ordering::SeqCst), 0, "new connections failed");
    assert!(opened.load(Ordering::SeqCst) > 0);
    // A moved its clients (pgbench's 4, the 3 above, newcomers) rather
    // than leaving them to finish.
    let moved: u64 = a_out
        .lines()
        .find(|l| l.contains("handover done"))
        .and_then(|l| l.split("moved=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(moved >= 7, "moved {moved}:\n{a_out}");
    // B is the one serving: its admin endpoint answers (A's copy is closed).
    let (code, _) = support::http_get(admin, "/health").await;
    assert_eq!(code, 200);
    drop(b);
}

async fn pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get::<_, i32>(0)
}

/// Clients that cannot move (session mode here) finish on the old process,
/// which serves them until they leave, and exits then; the others move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_mode_client_finishes_on_the_old_process() {
    let setup = setup(
        "[[users]]\nname = \"handover_session\"\npassword = \"hs_password\"\nserver_user = \"app\"\nserver_password = \"app_password\"\npool_mode = \"session\"\n",
    );
    let a = setup.start_old().await;
    let addr = setup.addr;
    let stays = connect(addr, "handover_session", "hs_password", "appdb")
        .await
        .unwrap();
    let server_pid = pid(&stays).await;
    let moves = connect(addr, "app", "app_password", "appdb").await.unwrap();
    moves.simple_query("SELECT 1").await.unwrap();
    let b = setup.take_over(&a).await;
    // The transaction-mode client moves; the session-mode one is still
    // served by A, on the same server connection.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            b.output()
                .contains("client taken over from the old process")
        })
        .await,
        "nothing moved:\nA:\n{}\nB:\n{}",
        a.output(),
        b.output()
    );
    moves.simple_query("SELECT 1").await.unwrap();
    assert_eq!(pid(&stays).await, server_pid);
    assert!(
        a.process.running(),
        "A left its session-mode client:\n{}",
        a.output()
    );
    // New logins, session mode too, go to B.
    let newcomer = connect(addr, "handover_session", "hs_password", "appdb")
        .await
        .unwrap();
    newcomer.simple_query("SELECT 1").await.unwrap();
    // Its CancelRequest reaches B, which passes it back to A.
    let token = stays.cancel_token();
    let stays = Arc::new(stays);
    let sleeping = {
        let stays = stays.clone();
        tokio::spawn(async move {
            stays
                .simple_query("SELECT pg_sleep(60) -- handover_stays")
                .await
        })
    };
    let pg = shared_pg();
    let watcher = common::pg_client(pg.port, "postgres", "postgres", "appdb").await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60) -- handover_stays' AND state = 'active'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, i64>(0)
                > 0
        })
        .await,
        "the query to cancel never ran"
    );
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let err = sleeping.await.unwrap().unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("57014"),
        "{err}"
    );
    drop(stays);
    assert!(
        wait_until(Duration::from_secs(20), || async { !a.process.running() }).await,
        "A did not exit after its last client left:\n{}",
        a.output()
    );
    assert!(
        a.output().contains("moved=1 refused=0 stayed=0"),
        "{}",
        a.output()
    );
    assert!(!moves.is_closed() && !newcomer.is_closed());
    moves.simple_query("SELECT 1").await.unwrap();
}

/// A process of another protocol version is refused before anything
/// moves: the running one serves on and still listens for a takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_of_another_version_is_refused_and_nothing_changes() {
    use pgkeel::handover::wire::{self, Message, VERSION};
    let setup = setup("");
    let a = setup.start_old().await;
    let client = connect(setup.addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    let peer = tokio::net::UnixStream::connect(&setup.socket)
        .await
        .unwrap();
    let hello = Message::Hello {
        version: VERSION + 1,
        pid: std::process::id(),
    };
    wire::send(&peer, &hello, &[]).await.unwrap();
    let (answer, fds) = wire::recv(&peer).await.unwrap();
    assert!(fds.is_empty(), "sockets were sent to an incompatible peer");
    match answer {
        Message::Refused { reason } => assert!(reason.contains("version"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    client.simple_query("SELECT 1").await.unwrap();
    let newcomer = connect(setup.addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    newcomer.simple_query("SELECT 1").await.unwrap();
    assert!(a.process.running() && setup.socket.exists());
    // A compatible takeover still works afterwards.
    let _b = setup.take_over(&a).await;
    assert!(
        wait_until(Duration::from_secs(20), || async { !a.process.running() }).await,
        "A did not exit:\n{}",
        a.output()
    );
    client.simple_query("SELECT 1").await.unwrap();
    newcomer.simple_query("SELECT 1").await.unwrap();
}

/// A client the new process refuses (its configuration no longer has the
/// user) goes on on the old process, which exits once it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_the_new_process_refuses_goes_on_on_the_old_one() {
    let gone = "[[users]]\nname = \"handover_gone\"\npassword = \"hg_password\"\nserver_user = \"app\"\nserver_password = \"app_password\"\n";
    let setup = setup(gone);
    let b_config = setup.dir.path().join("b.toml");
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&b_config, text.replace(gone, "")).unwrap();
    let a = setup.start_old().await;
    let refused = connect(setup.addr, "handover_gone", "hg_password", "appdb")
        .await
        .unwrap();
    refused
        .batch_execute("SET application_name = 'handover_refused'")
        .await
        .unwrap();
    let moves = connect(setup.addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    let _b = setup.take_over_with(&a, &b_config).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            a.output().contains("the new process refused a client")
        })
        .await,
        "no refusal:\n{}",
        a.output()
    );
    // Still A's, with its setting.
    let msgs = refused.simple_query("SHOW application_name").await.unwrap();
    assert!(
        msgs.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("handover_refused"))),
        "{msgs:?}"
    );
    moves.simple_query("SELECT 1").await.unwrap();
    assert!(
        a.process.running(),
        "A left a client it kept:\n{}",
        a.output()
    );
    drop(refused);
    assert!(
        wait_until(Duration::from_secs(20), || async { !a.process.running() }).await,
        "A did not exit after its last client left:\n{}",
        a.output()
    );
    assert!(
        a.output().contains("moved=1 refused=1 stayed=0"),
        "{}",
        a.output()
    );
    moves.simple_query("SELECT 1").await.unwrap();
}

/// `--takeover` with no process to take over from says so and exits 1.
#[test]
fn a_takeover_with_nobody_to_take_over_from_fails_clearly() {
    let setup = setup("");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&setup.config)
        .arg("--takeover")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("no pgkeel process to take over from"),
        "{text}"
    );
    // Nothing was bound: the port is free.
    assert!(std::net::TcpListener::bind(setup.addr).is_ok());
}

/// A TLS client's session keys cannot move: it finishes on the old
/// process, whose TLS session goes on, while a plain client moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_finishes_on_the_old_process() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (certs.path().join("c.pem"), certs.path().join("c.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).unwrap();
    let setup = setup("");
    let text = std::fs::read_to_string(&setup.config).unwrap().replace(
        "[tls]\n",
        &format!("[tls]\ncert = {cert_path:?}\nkey = {key_path:?}\n"),
    );
    std::fs::write(&setup.config, text).unwrap();
    let a = setup.start_old().await;
    // Encrypted, the certificate unchecked (sslmode=require).
    let unchecked = pgkeel::tls::Tls::build(&pgkeel::config::TlsConfig {
        server_tls_mode: pgkeel::config::ServerTlsMode::Require,
        ..Default::default()
    })
    .unwrap()
    .server;
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(setup.addr.port())
        .user("app")
        .password("app_password")
        .dbname("appdb")
        .ssl_mode(tokio_postgres::config::SslMode::Require);
    let (tls_client, conn) = cfg
        .connect(pgkeel::tls::postgres::MakeRustls::new(unchecked))
        .await
        .unwrap();
    tokio::spawn(conn);
    tls_client.simple_query("SELECT 1").await.unwrap();
    let plain = connect(setup.addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    plain.simple_query("SELECT 1").await.unwrap();
    let b = setup.take_over(&a).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            b.output()
                .contains("client taken over from the old process")
        })
        .await,
        "nothing moved:\nA:\n{}\nB:\n{}",
        a.output(),
        b.output()
    );
    // Still served by A over its TLS session (moved, the session would break).
    tls_client.simple_query("SELECT 1").await.unwrap();
    assert!(
        a.process.running(),
        "A left its TLS client:\n{}",
        a.output()
    );
    drop(tls_client);
    assert!(
        wait_until(Duration::from_secs(20), || async { !a.process.running() }).await,
        "A did not exit after its TLS client left:\n{}",
        a.output()
    );
    assert!(
        a.output().contains("moved=1 refused=0 stayed=0"),
        "{}",
        a.output()
    );
    plain.simple_query("SELECT 1").await.unwrap();
}

/// The process that took over listens for the next upgrade: a client
/// moves twice (A, B, C) with its settings and statements.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_upgrades_in_a_row_move_a_client_twice() {
    let setup = setup("");
    let a = setup.start_old().await;
    let c = connect(setup.addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    c.batch_execute("SET search_path = handover_twice, public")
        .await
        .unwrap();
    let stmt = c.prepare("SELECT $1::int * 2").await.unwrap();
    let b = setup.take_over(&a).await;
    assert!(
        wait_until(Duration::from_secs(20), || async { !a.process.running() }).await,
        "A did not exit:\n{}",
        a.output()
    );
    // B listens on the handover socket once A gave up the path.
    assert!(
        wait_until(Duration::from_secs(20), || async { setup.socket.exists() }).await,
        "B does not listen for a takeover:\n{}",
        b.output()
    );
    let next = setup.take_over_as(&b, &setup.config, "c.out").await;
    assert!(
        wait_until(Duration::from_secs(20), || async { !b.process.running() }).await,
        "B did not exit:\n{}",
        b.output()
    );
    assert!(b.output().contains("moved=1"), "{}", b.output());
    let n: i32 = c.query_one(&stmt, &[&21i32]).await.unwrap().get(0);
    assert_eq!(n, 42);
    let r = c.simple_query("SHOW search_path").await.unwrap();
    assert!(
        r.iter().any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("handover_twice, public"))),
        "{r:?}"
    );
    assert!(next.process.running());
}

/// The new process dies mid-handover: the old one accepts again and keeps
/// the clients it still has; a later takeover works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_process_accepts_again_when_the_new_one_dies_midway() {
    let setup = setup(
        "[[users]]\nname = \"handover_kept\"\npassword = \"hk_password\"\nserver_user = \"app\"\nserver_password = \"app_password\"\npool_mode = \"session\"\n",
    );
    let a = setup.start_old().await;
    // Keeps A handing over (it cannot move).
    let kept = connect(setup.addr, "handover_kept", "hk_password", "appdb")
        .await
        .unwrap();
    let mut b = setup
        .take_over_stopped_by(&a, &setup.config, "b.out", libc::SIGKILL)
        .await;
    b.process.stop();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            a.output().contains("handover abandoned: accepting again")
        })
        .await,
        "A did not take its sockets back:\n{}",
        a.output()
    );
    // New logins land on A again; its own client is still served.
    let newcomer = connect(setup.addr, "app", "app_password", "appdb")
        .await
        .unwrap();
    newcomer.simple_query("SELECT 1").await.unwrap();
    kept.simple_query("SELECT 1").await.unwrap();
    assert!(a.process.running() && setup.socket.exists());
    // A takeover after that moves the newcomer; A exits once `kept` leaves.
    let c = setup.take_over_as(&a, &setup.config, "c.out").await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            c.output()
                .contains("client taken over from the old process")
        })
        .await,
        "nothing moved:\nA:\n{}\nC:\n{}",
        a.output(),
        c.output()
    );
    drop(kept);
    assert!(
        wait_until(Duration::from_secs(20), || async { !a.process.running() }).await,
        "A did not exit:\n{}",
        a.output()
    );
    newcomer.simple_query("SELECT 1").await.unwrap();
}
