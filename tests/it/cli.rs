//! The `pgkeel` binary: --check-config, --help/--version, bad config at
//! start, and a graceful stop on SIGTERM.

use crate::common;
use crate::support;

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

/// pgkeel's peak resident memory (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status");
    kb * 1024
}

/// A few hundred MB through pgkeel each way (a result, COPY out, COPY in),
/// with the client stalling mid-result: back-pressure keeps pgkeel's own
/// memory small whatever the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_results_and_copy_stream_through_in_bounded_memory() {
    use futures_util::{SinkExt, StreamExt};
    const MB: u64 = 1 << 20;
    let pg = common::shared_pg();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = support::config(pg.port, "pool_size = 2", "").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let f = write_config(&cfg);
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(f.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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
    let before = peak_rss(child.id());

    // 300 MB of rows; the client stops reading for a second midway.
    let rows = c
        .query_raw(
            "SELECT repeat('x', 1000) FROM generate_series(1, 300000)",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    futures_util::pin_mut!(rows);
    let (mut n, mut bytes) = (0u64, 0u64);
    while let Some(row) = rows.next().await {
        let row = row.unwrap();
        bytes += row.get::<_, &str>(0).len() as u64;
        n += 1;
        if n == 100_000 {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    assert_eq!((n, bytes), (300_000, 300_000_000));

    // COPY out, 200 MB.
    let out = c
        .copy_out("COPY (SELECT repeat('y', 999) FROM generate_series(1, 200000)) TO STDOUT")
        .await
        .unwrap();
    futures_util::pin_mut!(out);
    let mut copied = 0u64;
    while let Some(chunk) = out.next().await {
        copied += chunk.unwrap().len() as u64;
    }
    assert_eq!(copied, 200_000 * 1000);

    // COPY in, 200 MB.
    c.batch_execute("DROP TABLE IF EXISTS cli_big; CREATE UNLOGGED TABLE cli_big (v text)")
        .await
        .unwrap();
    let sink = c.copy_in("COPY cli_big FROM STDIN").await.unwrap();
    futures_util::pin_mut!(sink);
    let line = format!("{}\n", "z".repeat(999));
    let chunk = bytes::Bytes::from(line.repeat(64));
    for _ in 0..(200_000 / 64) {
        sink.send(chunk.clone()).await.unwrap();
    }
    assert_eq!(sink.finish().await.unwrap(), 200_000 / 64 * 64);
    c.batch_execute("DROP TABLE cli_big").await.unwrap();

    let after = peak_rss(child.id());
    eprintln!(
        "pgkeel peak RSS: {} MB before, {} MB after 700 MB through it",
        before / MB,
        after / MB
    );
    assert!(
        after < before + 48 * MB,
        "pgkeel's memory grew with the data: peak {} MB (was {} MB)",
        after / MB,
        before / MB
    );
    child.kill().unwrap();
    child.wait().unwrap();
}
