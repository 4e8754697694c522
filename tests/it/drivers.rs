//! Real drivers through pgkeel in transaction mode with `pool_size = 2`: each
//! scenario in tests/drivers/ runs 20 concurrent clients as a subprocess
//! (psycopg 3, asyncpg, node-postgres, the JDBC driver, psql and pgbench),
//! so their transactions keep landing on different server connections.
//! Each scenario asserts its own results and exits non-zero naming what
//! failed; this side asserts that pooling really happened.
//!
//! `scripts/test.sh` installs the drivers (a venv in target/drivers-venv,
//! `npm ci` in tests/drivers/node, Debian's JDBC jar). For triage,
//! `PGKEEL_DRIVERS_MODE=session` runs the scenarios through pgkeel in session
//! mode and `PGKEEL_DRIVERS_MODE=direct` straight against PostgreSQL.

use crate::common;
use crate::support;

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{config, start};
use tokio::io::AsyncReadExt;

/// Clients and transactions per client in every scenario (their defaults).
const CLIENTS: u64 = 20;
const ITERATIONS: u64 = 200;
/// Transaction mode: 20 clients share two server connections.
const POOL_SIZE: usize = 2;
/// Session mode lends a connection per client: all of them, plus the
/// scenarios' watcher, canceller and notifier connections.
const SESSION_POOL_SIZE: usize = 30;
/// A scenario that hangs is killed after this.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Transaction,
    Session,
    /// No pgkeel: the scenario against PostgreSQL itself.
    Direct,
}

/// The committed target is transaction mode; the variable is for triage.
fn mode() -> Mode {
    match std::env::var("PGKEEL_DRIVERS_MODE").as_deref() {
        Err(_) | Ok("") | Ok("transaction") => Mode::Transaction,
        Ok("session") => Mode::Session,
        Ok("direct") => Mode::Direct,
        Ok(other) => panic!("PGKEEL_DRIVERS_MODE={other}: want transaction, session or direct"),
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `path` must exist; otherwise the test fails saying how to install it.
fn installed(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} is not installed: {} is missing. scripts/test.sh installs it.",
        path.display()
    );
    path
}

fn python() -> PathBuf {
    let venv = std::env::var_os("PGKEEL_DRIVERS_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/drivers-venv"));
    installed(
        venv.join("bin/python"),
        "the Python drivers' venv (psycopg, asyncpg from tests/drivers/python/requirements.txt)",
    )
}

fn on_path(program: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(program))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{program}` is not on PATH. scripts/test.sh installs it."))
}

/// Sees the scenario's database from both sides while it runs: pgkeel's
/// pools and PostgreSQL's pg_stat_activity.
struct Watch {
    /// Most server connections pgkeel had open at once for the scenario.
    pgkeel_max: AtomicUsize,
    /// Most backends PostgreSQL had for the scenario's role and database.
    backends_max: AtomicUsize,
    /// Every backend pid that served the scenario.
    pids: std::sync::Mutex<HashSet<i32>>,
    stop: AtomicBool,
}

async fn sample(watch: Arc<Watch>, proxy: Option<Arc<pgkeel::shared::Shared>>, name: String) {
    let pg = common::shared_pg();
    let su = common::pg_client(pg.port, "postgres", "postgres", "postgres").await;
    let count = su
        .prepare("SELECT pid FROM pg_stat_activity WHERE datname = $1 AND usename = $1")
        .await
        .unwrap();
    while !watch.stop.load(Ordering::Relaxed) {
        if let Some(shared) = &proxy {
            let open: usize = shared
                .pools
                .all()
                .iter()
                .filter(|p| p.key.database == name)
                .map(|p| p.stats.total_connections.load(Ordering::Relaxed))
                .sum();
            watch.pgkeel_max.fetch_max(open, Ordering::Relaxed);
        }
        let rows = su.query(&count, &[&name]).await.unwrap();
        watch.backends_max.fetch_max(rows.len(), Ordering::Relaxed);
        watch
            .pids
            .lock()
            .unwrap()
            .extend(rows.iter().map(|r| r.get::<_, i32>(0)));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the scenario's whole process group (a driver's helpers, psql's
/// background clients) unless it was reaped.
struct Group(Option<i32>);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

/// Creates a role and database for `name`, starts pgkeel in `mode` in front
/// of the shared PostgreSQL, runs `program args` with the PG* variables
/// pointing at it, and asserts that it passed and that pooling happened.
async fn run_scenario(name: &str, program: PathBuf, args: &[OsString]) {
    let mode = mode();
    let pg = common::shared_pg();
    let su = common::pg_client(pg.port, "postgres", "postgres", "postgres").await;
    let password = format!("{name}_password");
    // Two calls: a multi-statement query is one implicit transaction, where
    // CREATE DATABASE may not run.
    su.batch_execute(&format!("CREATE ROLE {name} LOGIN PASSWORD '{password}'"))
        .await
        .unwrap();
    su.batch_execute(&format!("CREATE DATABASE {name} OWNER {name}"))
        .await
        .unwrap();

    let (proxy, port) = match mode {
        Mode::Direct => (None, pg.port),
        Mode::Transaction | Mode::Session => {
            let (pool_mode, size) = match mode {
                Mode::Session => ("session", SESSION_POOL_SIZE),
                _ => ("transaction", POOL_SIZE),
            };
            let p = start(&config(
                pg.port,
                &format!("pool_mode = \"{pool_mode}\"\npool_size = {size}\n"),
                &format!("[[users]]\nname = \"{name}\"\npassword = \"{password}\"\n"),
            ))
            .await;
            let port = p.local_addr().port();
            (Some(p), port)
        }
    };

    let watch = Arc::new(Watch {
        pgkeel_max: AtomicUsize::new(0),
        backends_max: AtomicUsize::new(0),
        pids: Default::default(),
        stop: AtomicBool::new(false),
    });
    let sampler = tokio::spawn(sample(
        watch.clone(),
        proxy.as_ref().map(|p| p.shared().clone()),
        name.to_owned(),
    ));

    let mut cmd = tokio::process::Command::new(&program);
    cmd.args(args)
        .current_dir(repo())
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", name)
        .env("PGPASSWORD", &password)
        .env("PGDATABASE", name)
        .env("DRIVER_CLIENTS", CLIENTS.to_string())
        .env("DRIVER_ITERATIONS", ITERATIONS.to_string())
        .env_remove("PGSERVICE")
        .env_remove("PGOPTIONS")
        .env_remove("PGAPPNAME")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", program.display()));
    let mut group = Group(child.id().map(|id| id as i32));
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let run = async {
        let (status, _, _) = tokio::join!(
            child.wait(),
            out.read_to_string(&mut stdout),
            err.read_to_string(&mut stderr)
        );
        status
    };
    let status = tokio::time::timeout(SCENARIO_TIMEOUT, run).await;
    watch.stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    let status = match status {
        Ok(s) => {
            // Reaped: its group id may be reused, never kill it now.
            group.0 = None;
            s.unwrap()
        }
        Err(_) => {
            drop(group);
            panic!(
                "{name} ({mode:?} mode) did not finish within {SCENARIO_TIMEOUT:?}; killed.\n\
                 --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
            )
        }
    };
    // Pooling as both sides saw it: printed first, so a failing scenario
    // shows it too.
    let pgkeel_max = watch.pgkeel_max.load(Ordering::Relaxed);
    let backends_max = watch.backends_max.load(Ordering::Relaxed);
    let pids = watch.pids.lock().unwrap().len();
    let checkouts: u64 = proxy.as_ref().map_or(0, |p| {
        p.shared()
            .pools
            .all()
            .iter()
            .filter(|pool| pool.key.database == name)
            .map(|pool| pool.stats.checkouts.load(Ordering::Relaxed))
            .sum()
    });
    let pooling = format!(
        "{name}: at most {pgkeel_max} server connections open in pgkeel and {backends_max} \
         backends in PostgreSQL at once, {pids} distinct backends, {checkouts} checkouts"
    );
    assert!(
        status.success(),
        "{name} failed ({mode:?} mode, {status}).\n\
         --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}\n{pooling}"
    );
    println!("{name} ({mode:?} mode):\n{stdout}{stderr}{pooling}");

    if let Some(p) = proxy {
        let limit = if mode == Mode::Session {
            SESSION_POOL_SIZE
        } else {
            POOL_SIZE
        };
        assert!(
            (1..=limit).contains(&pgkeel_max),
            "{name}: pgkeel had {pgkeel_max} server connections open at once, want 1..={limit}"
        );
        assert!(
            (1..=limit).contains(&backends_max),
            "{name}: PostgreSQL saw {backends_max} backends at once, want 1..={limit}"
        );
        if mode == Mode::Transaction {
            // Every transaction of every client borrowed a connection:
            // thousands of loans over two connections is what pooling is.
            assert!(
                checkouts >= CLIENTS * ITERATIONS,
                "{name}: only {checkouts} checkouts for {CLIENTS} clients x {ITERATIONS} transactions"
            );
        }
        p.shutdown().await;
    }
}

fn script(path: &str) -> OsString {
    let p = repo().join(path);
    assert!(Path::new(&p).exists(), "{} is missing", p.display());
    p.into_os_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_prepare_threshold_0() {
    let python = python();
    run_scenario(
        "drv_psycopg",
        python,
        &[script("tests/drivers/python/psycopg_scenario.py")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asyncpg_named_statements() {
    let python = python();
    run_scenario(
        "drv_asyncpg",
        python,
        &[script("tests/drivers/python/asyncpg_scenario.py")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_named_queries() {
    installed(
        repo().join("tests/drivers/node/node_modules/pg"),
        "node-postgres (npm ci in tests/drivers/node)",
    );
    run_scenario(
        "drv_node",
        on_path("node"),
        &[script("tests/drivers/node/scenario.js")],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_prepare_threshold_1() {
    let jar = installed(
        std::env::var_os("PGKEEL_DRIVERS_JDBC_JAR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/share/java/postgresql.jar")),
        "the PostgreSQL JDBC driver (apt-get install libpostgresql-jdbc-java)",
    );
    run_scenario(
        "drv_jdbc",
        on_path("java"),
        &[
            "-cp".into(),
            jar.into_os_string(),
            script("tests/drivers/java/Scenario.java"),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_and_pgbench_prepared() {
    on_path("psql");
    on_path("pgbench");
    run_scenario(
        "drv_psql",
        on_path("bash"),
        &[script("tests/drivers/psql/scenario.sh")],
    )
    .await;
}
