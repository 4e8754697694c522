//! `pgkeel import-pgbouncer` and `pgkeel import-haproxy` on configurations
//! in the shape PgBouncer's and Patroni's documentation ship
//! (tests/fixtures/import/), pointed at the shared PostgreSQL: the output
//! passes `--check-config`, and the real binary serves traffic with it. The
//! HAProxy one keeps HAProxy's ports (5000 primary, 5001 replicas), so
//! applications keep their connection strings.

use crate::common;
use crate::support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::shared_pg;
use support::*;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/import")
            .join(name),
    )
    .unwrap()
}

fn pgkeel(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgkeel"))
        .args(args)
        .output()
        .expect("pgkeel runs")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs an import command, checks its output with `--check-config`, and
/// returns it.
fn import(dir: &Path, subcommand: &str, inputs: &[(&str, String)]) -> String {
    let mut args = vec![PathBuf::from(subcommand)];
    for (name, text) in inputs {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        args.push(path);
    }
    let refs: Vec<&Path> = args.iter().map(PathBuf::as_path).collect();
    let out = pgkeel(&refs);
    assert!(
        out.status.success(),
        "{subcommand}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn check(dir: &Path, toml: &str) {
    let path = dir.join("pgkeel.toml");
    std::fs::write(&path, toml).unwrap();
    let out = pgkeel(&[Path::new("--check-config"), &path]);
    assert!(
        out.status.success(),
        "--check-config refuses the import: {}\n{toml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    match &c.simple_query(sql).await.unwrap()[1] {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_owned(),
        m => panic!("{m:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_ini_imports_and_serves() {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = fixture("pgbouncer.ini")
        .replace("port=5432", &format!("port={}", pg.port))
        .replace("listen_port = 6432", &format!("listen_port = {port}"));
    let toml = import(
        dir.path(),
        "import-pgbouncer",
        &[
            ("pgbouncer.ini", ini),
            ("userlist.txt", fixture("userlist.txt")),
        ],
    );
    for line in [
        "pool_size = 10  # from default_pool_size",
        "max_client_connections = 500",
        "query_wait_timeout = \"120s\"",
        "database = \"pgbouncer\"",
        "stats_users = [\"stats\"]",
        "#   logfile: ",
        "#   [databases] reports: pgkeel does not rename databases",
    ] {
        assert!(toml.contains(line), "{line} in\n{toml}");
    }
    // The admin HTTP listener on a free port, as nothing else in the file.
    let admin = free_port();
    let toml = toml.replacen(
        "[admin]\n",
        &format!("[admin]\nlisten = \"127.0.0.1:{admin}\"\n"),
        1,
    );
    check(dir.path(), &toml);

    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let (mut child, _file) = spawn_binary(&toml, addr).await;
    let c = app(addr).await;
    assert_eq!(one(&c, "SELECT current_database()").await, "appdb");
    // The console under PgBouncer's name, with its users.
    let console = connect(addr, "admin", "admin_password", "pgbouncer")
        .await
        .expect("admin_users reach the console");
    console.simple_query("SHOW POOLS").await.unwrap();
    let stats = connect(addr, "stats", "stats_password", "pgbouncer")
        .await
        .expect("stats_users reach the console");
    stats.simple_query("SHOW STATS").await.unwrap();
    let e = stats.simple_query("PAUSE").await.unwrap_err();
    assert_eq!(sqlstate(&e), "42501");
    // The console's SHUTDOWN stops the process, gracefully (exit 0).
    console.simple_query("SHUTDOWN").await.unwrap();
    let exited = wait_until(std::time::Duration::from_secs(60), || {
        let done = child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    assert!(exited, "pgkeel still runs after SHUTDOWN");
    assert!(child.wait().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_cfg_imports_and_keeps_its_ports() {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let cfg = fixture("haproxy.cfg")
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", pg.port))
        .replace("bind *:7000", &format!("bind 127.0.0.1:{admin}"));
    let toml = import(dir.path(), "import-haproxy", &[("haproxy.cfg", cfg)]);
    for line in [
        "listen = \"0.0.0.0:5000\"",
        "address = \"0.0.0.0:5001\"",
        "route = \"replica\"",
        "#   check port 8008: ",
    ] {
        assert!(toml.contains(line), "{line} in\n{toml}");
    }
    // What the import asks the reader to do: the real password.
    let toml = toml.replace("\"change-me\"", "\"app_password\"");
    check(dir.path(), &toml);

    let primary = SocketAddr::from(([127, 0, 0, 1], 5000));
    let (mut child, _file) = spawn_binary(&toml, primary).await;
    // The application's connection strings, unchanged: 5000 writes...
    let w = app(primary).await;
    assert_eq!(one(&w, "SELECT pg_is_in_recovery()").await, "f");
    w.batch_execute("CREATE TEMP TABLE import_t (x int) ON COMMIT DROP")
        .await
        .unwrap();
    // ...and 5001 reads (on the primary while there is no replica).
    let r = app(SocketAddr::from(([127, 0, 0, 1], 5001))).await;
    assert_eq!(one(&r, "SELECT 41 + 1").await, "42");
    // The stats page where HAProxy's was.
    let (code, body) = http_get(SocketAddr::from(([127, 0, 0, 1], admin)), "/").await;
    assert_eq!(code, 200, "{body}");
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The first ```sh block after `heading` in a docs page.
fn sh_block(page: &str, heading: &str) -> String {
    let text =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(page)).unwrap();
    let after = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in {page}"))..];
    let start = after.find("```sh\n").expect("an sh block") + "```sh\n".len();
    let end = start + after[start..].find("```").unwrap();
    after[start..end].to_owned()
}

/// The migration pages' import steps, run as written (the build step
/// aside: the test has built the binary), in a scratch directory.
#[test]
fn the_migration_pages_import_steps_run() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for (page, heading) in [
        (
            "docs/migrating-from-pgbouncer.md",
            "## 1. Import the configuration",
        ),
        ("docs/migrating-from-haproxy.md", "## 1. Import haproxy.cfg"),
    ] {
        let script: String = sh_block(page, heading)
            .lines()
            .filter(|l| !l.starts_with("cargo build"))
            .map(|l| {
                l.replace("./target/debug/pgkeel", env!("CARGO_BIN_EXE_pgkeel"))
                    .replace(
                        "tests/fixtures/",
                        &format!("{}/tests/fixtures/", repo.display()),
                    )
                    + "\n"
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{page}: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let toml = std::fs::read_to_string(dir.path().join("pgkeel.toml")).unwrap();
        assert!(toml.contains("[[servers]]"), "{page}: {toml}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("configuration is valid"));
    }
}
