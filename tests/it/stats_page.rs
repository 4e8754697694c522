//! The stats page (`GET /` on the admin listener) in a real headless
//! Chromium: after its script ran, every number it shows (each element
//! with a `data-field`, a path into `/status`) equals `/status`; the live
//! member and pool are in its tables; and a screenshot is taken
//! (`PGKEEL_STATS_SCREENSHOT=path` keeps it, as docs/stats-page.png was made).

use crate::common;
use crate::support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use common::shared_pg;
use support::*;

fn chromium() -> &'static str {
    for c in ["chromium", "chromium-browser", "google-chrome"] {
        if Command::new("which")
            .arg(c)
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return c;
        }
    }
    panic!("Chromium is not installed (scripts/test.sh installs Debian's chromium)");
}

/// Runs headless Chromium on `url` with `args`, its profile in `dir`,
/// letting the page's script run (fetch /status, render) before it acts.
fn headless(dir: &Path, url: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", dir.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `/status` at `path` (dots; numbers index arrays) as the page writes it.
fn shown(status: &serde_json::Value, path: &str) -> String {
    let v = path
        .split('.')
        .try_fold(status, |v, k| match k.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(k),
        });
    match v {
        None | Some(serde_json::Value::Null) => "–".into(),
        Some(serde_json::Value::String(s)) if s.is_empty() => "–".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn same(page: &str, status: &str) -> bool {
    match (page.parse::<f64>(), status.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => page == status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_what_status_says_in_chromium() {
    let pg = shared_pg();
    let p = start(&config(pg.port, "", "")).await;
    let admin: SocketAddr = p.admin_addr().unwrap();
    let c = app(p.local_addr()).await;
    for _ in 0..3 {
        c.simple_query("SELECT 1").await.unwrap();
    }
    let (code, html) = http_get(admin, "/").await;
    assert_eq!(code, 200);
    assert!(html.starts_with("<!DOCTYPE html>"));

    let dir = tempfile::tempdir().unwrap();
    let url = format!("http://{admin}/");
    let out = headless(dir.path(), &url, &["--dump-dom"]);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    // Nothing moves meanwhile: the page's /status and this one agree.
    let (_, status) = http_get(admin, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();

    assert!(
        dom.contains("<span id=\"error\" class=\"err\"></span>"),
        "the page could not read /status: {dom}"
    );
    assert!(
        !dom.contains("id=\"updated\">never<"),
        "the page never refreshed: {dom}"
    );
    let field = regex::Regex::new(r#"data-field="([^"]+)"[^>]*>([^<]*)<"#).unwrap();
    let mut compared = Vec::new();
    for m in field.captures_iter(&dom) {
        let (path, page) = (&m[1], &m[2]);
        let want = shown(&status, path);
        assert!(
            same(page, &want),
            "the page shows {path} = {page:?}, /status says {want:?}"
        );
        compared.push(path.to_owned());
    }
    for path in [
        "clients_by_state.idle",
        "traffic.transactions_total",
        "config.version",
        "topology.members.0.lag_bytes",
        "pools.0.connections",
    ] {
        assert!(
            compared.iter().any(|c| c == path),
            "{path} not on the page: {compared:?}"
        );
    }
    assert_eq!(shown(&status, "clients_by_state.idle"), "1");
    assert!(
        shown(&status, "traffic.transactions_total")
            .parse::<u64>()
            .unwrap()
            >= 3
    );
    // The live member and pool, in their tables.
    let member = format!("127.0.0.1:{}", pg.port);
    assert!(dom.contains(&format!("<td>{member}</td>")), "{dom}");
    assert!(dom.contains("<td>appdb</td>"), "{dom}");
    assert!(dom.contains("class=\"role-primary\">primary<"), "{dom}");

    // A screenshot of the same page.
    let png = dir.path().join("stats-page.png");
    headless(
        dir.path(),
        &url,
        &[
            &format!("--screenshot={}", png.display()),
            "--window-size=1280,900",
            "--hide-scrollbars",
        ],
    );
    let bytes = std::fs::read(&png).expect("chromium wrote the screenshot");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    if let Some(keep) = std::env::var_os("PGKEEL_STATS_SCREENSHOT") {
        std::fs::copy(&png, keep).unwrap();
    }
    drop(c);
    p.shutdown().await;
}
