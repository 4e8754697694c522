//! Query logging, from the real binary's output: `[log] log_queries` logs
//! each Query and Parse with the client, route and member, never a Bind's
//! parameter values or a password; it reloads without a restart; a
//! `[[query_rules]]` entry with `log = true` logs the statements it routes;
//! and `[log] format = "json"` makes the same lines JSON objects.

use crate::common;
use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{shared_pg, TiedProcess};
use support::*;
use tokio_postgres::types::Type;

const BIN: &str = env!("CARGO_BIN_EXE_pgkeel");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Renamed into place, so the watcher never reads half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Running {
    process: TiedProcess,
    addr: SocketAddr,
    admin: SocketAddr,
    log: std::path::PathBuf,
}

impl Running {
    /// The binary's output so far.
    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    async fn config_version(&self) -> u64 {
        let (_, body) = http_get(self.admin, "/status").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["config"]["version"].as_u64().unwrap()
    }
}

/// Starts the binary on `config_path` (its `[log]` table is `log`) with its
/// output in `dir`; returns once it accepts connections.
async fn start(dir: &Path, config_path: &Path, log: &str) -> Running {
    let pg = shared_pg();
    let (port, admin_port) = (free_port(), free_port());
    let rule = "[[query_rules]]\npattern = \"ql_rule_marker\"\nroute = \"primary\"\nlog = true\n";
    let text = config(pg.port, "", &format!("{log}\n{rule}"))
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{port}\""),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"127.0.0.1:{admin_port}\""),
            1,
        );
    write_config(config_path, &text);
    let log_path = dir.join("pgkeel.out");
    let out = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config_path)
        .env_remove("RUST_LOG")
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    let process = TiedProcess::spawn(cmd, libc::SIGTERM);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let up = wait_until(Duration::from_secs(20), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && tokio::net::TcpStream::connect(admin).await.is_ok()
    })
    .await;
    let running = Running {
        process,
        addr,
        admin,
        log: log_path,
    };
    assert!(up, "pgkeel did not start:\n{}", running.output());
    running
}

/// The output's lines that mention `marker`.
fn lines_with(output: &str, marker: &str) -> Vec<String> {
    output
        .lines()
        .filter(|l| l.contains(marker))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn log_queries_logs_each_statement_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.toml");
    let mut p = start(dir.path(), &path, "[log]\nlog_queries = true").await;
    let c = app(p.addr).await;
    let member = format!("127.0.0.1:{}", shared_pg().port);

    // A simple Query: logged before it reaches the server, so by the time
    // the client has its answer the line is written.
    c.simple_query("SELECT 'ql_simple_marker'").await.unwrap();
    let out = p.output();
    let lines = lines_with(&out, "ql_simple_marker");
    assert_eq!(lines.len(), 1, "{out}");
    let line = &lines[0];
    for part in [
        "INFO pgkeel::querylog: query ",
        "peer=127.0.0.1:",
        "user=\"app\"",
        "database=\"appdb\"",
        "route=\"primary\"",
        &format!("member=\"{member}\""),
        "query=\"SELECT 'ql_simple_marker'\"",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }

    // Extended protocol: the Parse's text, never the Bind's values.
    let r = c
        .query_typed(
            "SELECT $1::text AS ql_extended_marker",
            &[(&"ql_param_secret", Type::TEXT)],
        )
        .await
        .unwrap();
    assert_eq!(r[0].get::<_, &str>(0), "ql_param_secret");
    let out = p.output();
    let lines = lines_with(&out, "ql_extended_marker");
    assert_eq!(lines.len(), 1, "{out}");
    assert!(
        lines[0].contains("INFO pgkeel::querylog: parse ")
            && lines[0].contains("statement=\"\"")
            && lines[0].contains("query=\"SELECT $1::text AS ql_extended_marker\""),
        "{}",
        lines[0]
    );
    assert!(
        !out.contains("ql_param_secret"),
        "a parameter value was logged"
    );

    // A bare BEGIN pgkeel answered itself is logged when it goes to the
    // server, ahead of the statement it went with.
    c.simple_query("BEGIN").await.unwrap();
    c.simple_query("SELECT 'ql_tx_marker'").await.unwrap();
    c.simple_query("COMMIT").await.unwrap();
    let out = p.output();
    let queries: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("pgkeel::querylog: query "))
        .filter_map(|l| l.split(" query=").nth(1))
        .collect();
    assert_eq!(
        queries[queries.len() - 3..],
        ["\"BEGIN\"", "\"SELECT 'ql_tx_marker'\"", "\"COMMIT\""],
        "{out}"
    );

    // A statement that mentions a password is logged without its literals.
    c.simple_query("SELECT 'ql_pw_secret' AS password")
        .await
        .unwrap();
    let out = p.output();
    assert!(!out.contains("ql_pw_secret"), "{out}");
    assert!(out.contains("query=\"select ? as password\""), "{out}");

    // A rule with `log = true` logs what it routes, with its index.
    // (Rules match the normalized text, literals out: the marker is a name.)
    c.simple_query("SELECT 1 AS ql_rule_marker").await.unwrap();
    let out = p.output();
    let rule_line = lines_with(&out, "query rule matched");
    assert_eq!(rule_line.len(), 1, "{out}");
    for part in [
        "rule=0",
        "route=\"primary\"",
        "user=\"app\"",
        "query=\"SELECT 1 AS ql_rule_marker\"",
    ] {
        assert!(rule_line[0].contains(part), "{part} not in {rule_line:?}");
    }

    // Off by a reload: no restart, the same client, no more query lines.
    let before = p.config_version().await;
    let text = std::fs::read_to_string(&path).unwrap();
    write_config(
        &path,
        &text.replace("log_queries = true", "log_queries = false"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.config_version().await > before
        })
        .await,
        "the reload did not happen:\n{}",
        p.output()
    );
    c.simple_query("SELECT 'ql_after_reload_marker'")
        .await
        .unwrap();
    let out = p.output();
    assert!(
        lines_with(&out, "ql_after_reload_marker").is_empty(),
        "{out}"
    );
    assert!(
        !out.contains("keys only change at a restart"),
        "log_queries needs no restart:\n{out}"
    );
    // The rule still logs: it does not depend on log_queries.
    c.simple_query("SELECT 2 AS ql_rule_marker").await.unwrap();
    assert_eq!(lines_with(&p.output(), "query rule matched").len(), 2);

    drop(c);
    p.process.stop();
}

#[tokio::test]
async fn json_format_makes_each_query_line_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.toml");
    let mut p = start(
        dir.path(),
        &path,
        "[log]\nformat = \"json\"\nlog_queries = true",
    )
    .await;
    let c = app(p.addr).await;
    c.simple_query("SELECT 'ql_json_marker'").await.unwrap();
    let out = p.output();
    let lines = lines_with(&out, "ql_json_marker");
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("a JSON line");
    assert_eq!(v["level"], "INFO");
    assert_eq!(v["target"], "pgkeel::querylog");
    let f = &v["fields"];
    assert_eq!(f["message"], "query");
    assert_eq!(f["query"], "SELECT 'ql_json_marker'");
    assert_eq!(f["user"], "app");
    assert_eq!(f["database"], "appdb");
    assert_eq!(f["route"], "primary");
    assert_eq!(f["member"], format!("127.0.0.1:{}", shared_pg().port));
    assert!(f["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{v}");
    // Every line of the output is JSON, the connection lines too.
    for line in out.lines().filter(|l| !l.is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    }
    drop(c);
    p.process.stop();
}
