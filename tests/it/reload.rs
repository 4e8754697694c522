//! Live reload under load: pgbench runs through pgkeel while its config file
//! is rewritten 20 times (pool size, query rules, a user added and removed,
//! invalid files in between); no pgbench client sees an error, each valid
//! change is live at once and shows in the admin console's SHOW CONFIG and
//! in /status, each invalid one changes nothing (and /status says why), and
//! SIGHUP reloads too.

use crate::common;
use crate::support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::shared_pg;
use pgkeel::ProxyHandle;
use support::*;
use tokio_postgres::SimpleQueryMessage;

/// Writes like a careful editor: a new file renamed over the old one, so
/// the watcher never sees half a file.
fn write_config(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn version(p: &ProxyHandle) -> u64 {
    p.shared().config_info.load().version
}

fn reload_errors(p: &ProxyHandle) -> u64 {
    p.shared()
        .metrics
        .config_reloads_total
        .with_label_values(&["error"])
        .get()
}

/// The console's SHOW CONFIG as key -> value (NULL as "NULL").
async fn show_config(console: &tokio_postgres::Client) -> HashMap<String, String> {
    let msgs = console.simple_query("SHOW CONFIG").await.unwrap();
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((
                r.get("key").unwrap().to_owned(),
                r.get("value").unwrap_or("NULL").to_owned(),
            )),
            _ => None,
        })
        .collect()
}

async fn status(admin: SocketAddr) -> serde_json::Value {
    let (code, body) = http_get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

async fn wait_version(p: &ProxyHandle, v: u64) {
    assert!(
        wait_until(Duration::from_secs(10), || async { version(p) >= v }).await,
        "config version stayed {} (wanted {v}); last error {:?}",
        version(p),
        p.shared().config_info.load().last_error
    );
}

fn pgbench_init(port: u16) {
    let out = std::process::Command::new("pgbench")
        .args([
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "appdb",
        ])
        .env("PGPASSWORD", "postgres")
        .output()
        .expect("pgbench runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            "appdb",
            "-qc",
        ])
        .arg("GRANT ALL ON ALL TABLES IN SCHEMA public TO app")
        .env("PGPASSWORD", "postgres")
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Transactions pgkeel completes between two rewrites under pgbench.
const TRAFFIC_PER_VERSION: u64 = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_rewrites_under_pgbench_no_client_error() {
    let pg = shared_pg();
    pgbench_init(pg.port);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.toml");
    // Every version keeps an admin user for the console (after the five
    // support users, so `users[0]` stays `app`).
    let admin_user = "[[users]]\nname = \"admin\"\npassword = \"admin_password\"\n";
    let text = |pool: u32, extra: &str| {
        config(
            pg.port,
            &format!("pool_size = {pool}"),
            &format!("{admin_user}{extra}"),
        )
        .replace("[admin]\n", "[admin]\nusers = [\"admin\"]\n")
    };
    write_config(&path, &text(4, ""));
    let p = pgkeel::Proxy::start(pgkeel::config::Config::from_file(&path).unwrap())
        .await
        .unwrap();
    p.watch_config(path.clone());
    let port = p.local_addr().port().to_string();
    let admin = p.admin_addr().unwrap();
    let console = connect(p.local_addr(), "admin", "admin_password", "pgkeel")
        .await
        .expect("admin logs in to the console");

    let bench = tokio::process::Command::new("pgbench")
        .args([
            "-n",
            "-N",
            "-c",
            "6",
            "-j",
            "2",
            "-T",
            "25",
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-U",
            "app",
            "appdb",
        ])
        .env("PGPASSWORD", "app_password")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pgbench starts");

    let temp_user = "[[users]]\nname = \"temp\"\npassword = \"temp_password\"\nserver_user = \"app\"\nserver_password = \"app_password\"\n";
    let rule = "[[query_rules]]\npattern = \"pgbench_branches\"\nroute = \"primary\"\n";
    let mut expected = version(&p);
    let mut temp_client = None;
    let mut completed = p.shared().metrics.transactions_completed();
    for i in 0..20u32 {
        // Each version carries pgbench's traffic before the next rewrite.
        let flowed = wait_until(Duration::from_secs(20), || async {
            p.shared().metrics.transactions_completed() >= completed + TRAFFIC_PER_VERSION
        })
        .await;
        assert!(flowed, "change {i}: no pgbench traffic through pgkeel");
        completed = p.shared().metrics.transactions_completed();
        if i % 5 == 3 {
            // Invalid: nothing changes, the error is counted and shown.
            let errors = reload_errors(&p);
            let before = p.shared().config.load().users[0].pool_size;
            write_config(
                &path,
                &text(4, "").replace("pool_size = 4", "pool_size = 0"),
            );
            assert!(
                wait_until(Duration::from_secs(10), || async {
                    reload_errors(&p) > errors
                })
                .await
            );
            assert_eq!(p.shared().config.load().users[0].pool_size, before);
            let err = p.shared().config_info.load().last_error.clone().unwrap();
            assert!(err.contains("proxy.pool_size"), "{err}");
            // Neither the console nor /status shows the invalid file's value.
            let shown = show_config(&console).await;
            assert_eq!(shown["proxy.pool_size"], before.to_string());
            assert_eq!(shown["users[0].pool_size"], before.to_string());
            let st = status(admin).await;
            assert_eq!(st["config"]["version"], serde_json::json!(expected));
            let shown_err = st["config"]["last_error"].as_str().unwrap_or_default();
            assert!(shown_err.contains("proxy.pool_size"), "{st}");
            continue;
        }
        let pool = 2 + i % 4;
        let mut extra = String::new();
        if (6..12).contains(&i) {
            extra.push_str(temp_user);
        }
        if i % 2 == 0 {
            extra.push_str(rule);
        }
        let written = text(pool, &extra);
        write_config(&path, &written);
        expected += 1;
        wait_version(&p, expected).await;
        let cfg = p.shared().config.load_full();
        assert_eq!(cfg.users[0].pool_size, pool);
        assert_eq!(cfg.query_rules.len(), usize::from(i % 2 == 0));
        assert!(
            p.shared()
                .pools
                .all()
                .iter()
                .filter(|pl| pl.key.user == "app")
                .all(|pl| pl.settings().size == pool),
            "pools follow pool_size"
        );
        // The admin console shows the change: pool size, rules, users.
        let shown = show_config(&console).await;
        assert_eq!(shown["proxy.pool_size"], pool.to_string(), "change {i}");
        assert_eq!(shown["users[0].pool_size"], pool.to_string(), "change {i}");
        assert_eq!(
            shown.get("query_rules[0].pattern").map(String::as_str),
            (i % 2 == 0).then_some("pgbench_branches"),
            "change {i}"
        );
        let temp_shown = shown
            .iter()
            .any(|(k, v)| k.starts_with("users[") && k.ends_with("].name") && v == "temp");
        assert_eq!(temp_shown, (6..12).contains(&i), "change {i}");
        // And /status: this file's version, no error, the pools' size.
        let st = status(admin).await;
        assert_eq!(st["config"]["version"], serde_json::json!(expected));
        // No hash of the file: it may hold passwords.
        assert!(st["config"].get("sha256").is_none(), "{st}");
        assert!(st["config"]["last_error"].is_null(), "{st}");
        let app_pools: Vec<&serde_json::Value> = st["pools"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|pl| pl["user"] == "app")
            .collect();
        assert!(!app_pools.is_empty(), "{st}");
        assert!(
            app_pools.iter().all(|pl| pl["size"] == pool),
            "change {i}: {st}"
        );
        if i == 6 {
            let c = connect(p.local_addr(), "temp", "temp_password", "appdb")
                .await
                .unwrap();
            c.simple_query("SELECT 1").await.unwrap();
            temp_client = Some(c);
        }
        if i == 12 {
            // The removed user's idle client is told at its next statement;
            // new logins are refused.
            let c = temp_client.take().unwrap();
            let e = c.simple_query("SELECT 1").await.unwrap_err();
            let db = e.as_db_error().expect("an ErrorResponse");
            assert_eq!(db.code().code(), "28000");
            assert!(
                db.message().contains("removed from pgkeel's configuration"),
                "{db:?}"
            );
            // Unknown now: refused as a wrong password is (no enumeration).
            let e = connect(p.local_addr(), "temp", "temp_password", "appdb")
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e), "28P01", "{e}");
        }
    }
    // SIGHUP reloads without a file change.
    let before = version(&p);
    unsafe { libc::kill(libc::getpid(), libc::SIGHUP) };
    wait_version(&p, before + 1).await;

    let out = bench.wait_with_output().await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pgbench failed:\n{stdout}\n{stderr}");
    assert!(
        !stderr.contains("error") && !stdout.contains("aborted"),
        "pgbench saw errors:\n{stdout}\n{stderr}"
    );
    let processed: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        processed > 100,
        "pgbench ran only {processed} transactions:\n{stdout}"
    );

    let (_, status) = http_get(p.admin_addr().unwrap(), "/status").await;
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["config"]["version"], serde_json::json!(version(&p)));
    assert!(v["config"]["loaded_at"].as_f64().is_some_and(|t| t > 0.0));
    let (_, metrics) = http_get(p.admin_addr().unwrap(), "/metrics").await;
    assert!(metrics.contains("pgkeel_config_reloads_total{result=\"ok\"}"));
    drop(console);
    p.shutdown().await;
}

#[tokio::test]
async fn keys_that_need_a_restart_keep_their_running_value() {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.toml");
    write_config(&path, &config(pg.port, "", ""));
    let p = pgkeel::Proxy::start(pgkeel::config::Config::from_file(&path).unwrap())
        .await
        .unwrap();
    let listen = p.shared().config.load().listen_addr;
    write_config(
        &path,
        &config(pg.port, "query_wait_timeout = \"7s\"", "")
            .replace("127.0.0.1:0\"\n", "127.0.0.1:1\"\n"),
    );
    let pending = p.reload(&path).unwrap();
    assert!(pending.contains(&"proxy.listen".to_string()), "{pending:?}");
    let cfg = p.shared().config.load();
    assert_eq!(cfg.listen_addr, listen, "the running address stays");
    assert_eq!(
        cfg.proxy.query_wait_timeout.0,
        Duration::from_secs(7),
        "the rest applies"
    );
    assert_eq!(p.shared().config_info.load().pending_restart, pending);
    drop(cfg);
    p.shutdown().await;
}
