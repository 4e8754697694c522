//! The `pgkeel` binary: --check-config, --help/--version, bad config at
//! start, and a graceful stop on SIGTERM.

mod common;
mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_pgkeel");

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn check_config_accepts_the_shipped_example() {
    let out = Command::new(BIN)
        .args([
            "--check-config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_config_names_the_bad_key_and_line() {
    let cases = [
        ("[proxy]\npool_mode = \"statement\"\n", "line 2"),
        ("[proxy]\nlisten = \"0.0.0.0:54320\"\npool_sizee = 3\n", "pool_sizee"),
        ("[proxy]\npool_size = 0\n[[users]]\nname = \"a\"\npassword = \"b\"\n[[servers]]\nhost = \"h\"\n", "proxy.pool_size"),
        ("[[users]]\nname = \"a\"\npassword = \"b\"\n", "servers"),
        ("[proxy\n", "line 1"),
    ];
    for (text, want) in cases {
        let f = write_config(text);
        let out = Command::new(BIN)
            .arg("--check-config")
            .arg(f.path())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{text:?} should be rejected: {err}"
        );
        assert!(err.contains(want), "{text:?}: expected {want:?} in {err:?}");
    }
}

#[test]
fn bad_config_at_start_exits_2_with_the_key() {
    let f = write_config("[proxy]\nquery_wait_timeout = \"soon\"\n");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(f.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("duration"), "{err}");
    let out = Command::new(BIN)
        .args(["--config", "/nonexistent/pgkeel.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_and_version() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--check-config"));
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[tokio::test]
async fn sigterm_lets_the_open_transaction_commit_then_exits_0() {
    let pg = common::shared_pg();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = support::config(pg.port, "", "").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let f = write_config(&cfg);
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(f.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(addr).await.is_ok()
        })
        .await
    );
    let c = support::app(addr).await;
    c.simple_query(
        "CREATE TABLE IF NOT EXISTS cli_term (v int); BEGIN; INSERT INTO cli_term VALUES (1)",
    )
    .await
    .unwrap();
    let pid = child.id() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    c.simple_query("COMMIT").await.unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
}
