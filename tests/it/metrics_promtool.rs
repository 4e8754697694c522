//! Monitoring, checked with Prometheus's own tool: /metrics after real
//! traffic passes `promtool check metrics` (static mode with a streaming
//! replica, and etcd mode); the examples (scrape config, alerting rules and
//! their unit tests, the Grafana dashboard's queries) pass promtool; and
//! every metric name the examples and docs use is one pgkeel exports, and
//! every family it exports is in the docs, so neither drifts from the code.

use crate::common;
use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{shared_pg, start_etcd, start_replica};
use pgkeel::ProxyHandle;
use support::*;
use tokio_postgres::SimpleQueryMessage;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn examples() -> PathBuf {
    repo().join("examples")
}

/// Runs promtool; returns whether it succeeded and everything it printed.
fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (apt-get install prometheus; scripts/test.sh does)");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(text.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `promtool check metrics` must pass without a single complaint.
fn assert_promtool_clean(exposition: &str, what: &str) {
    let (ok, out) = promtool(&["check", "metrics"], Some(exposition));
    assert!(
        ok && out.trim().is_empty(),
        "promtool check metrics on {what}: {out}\n--- exposition ---\n{exposition}"
    );
}

/// One parsed sample: name, labels, value.
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The text exposition format, as far as pgkeel writes it.
struct Exposition {
    /// Family name -> type, from `# TYPE` lines.
    families: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut families = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE line");
                families.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("sample line");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.strip_suffix('}').expect("closing brace"))),
                None => (series, BTreeMap::new()),
            };
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("sample value"),
            });
        }
        Exposition { families, samples }
    }

    fn names(&self) -> BTreeSet<&str> {
        self.samples.iter().map(|s| s.name.as_str()).collect()
    }

    /// Samples of `name` whose labels include `labels`.
    fn find<'a>(&'a self, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The one sample of `name` with `labels`; panics if there is not exactly one.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(name, labels);
        assert_eq!(
            found.len(),
            1,
            "{name}{labels:?}: expected one sample, found {}",
            found.len()
        );
        found[0].value
    }

    fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).iter().map(|s| s.value).sum()
    }
}

fn parse_labels(mut s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"").expect("label=\"value\"");
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().expect("closing quote") {
                (_, '\\') => match chars.next().expect("escaped char").1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        out.insert(key.to_owned(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    out
}

/// Every `pgkeel_*` token in `text`.
fn metric_tokens(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("pgkeel_") {
        let start = i + at;
        // Part of a longer identifier (e.g. `my_pgkeel_x`): not a metric name.
        let inside =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start + "pgkeel_".len();
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        // `pgkeel_*` in prose is a pattern, not a name.
        if !inside && end > start + "pgkeel_".len() {
            out.insert(text[start..end].to_owned());
        }
        i = end;
    }
    out
}

async fn metrics(p: &ProxyHandle) -> String {
    let (code, body) = http_get(p.admin_addr().unwrap(), "/metrics").await;
    assert_eq!(code, 200, "{body}");
    body
}

fn rows(msgs: &[SimpleQueryMessage]) -> Vec<Vec<String>> {
    msgs.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Waits until the topology has a primary and a replica that takes reads.
async fn wait_for_roles(p: &ProxyHandle) {
    let ok = wait_until(Duration::from_secs(30), || async {
        let t = p.shared().topology.load();
        t.primary.is_some() && t.members.iter().any(|m| m.serves_reads())
    })
    .await;
    assert!(
        ok,
        "no primary and readable replica: {:?}",
        p.shared().topology.load()
    );
}

/// A refused login, reads, writes, both kinds of transaction, a server
/// error and a pgkeel error (53300: the pool of 2 is taken and
/// query_wait_timeout passes). Returns the four clients it opened, still
/// connected, once no server connection is lent any more.
async fn traffic(p: &ProxyHandle, table: &str) -> Vec<tokio_postgres::Client> {
    let addr = p.local_addr();
    // First, so that its connection is long closed when metrics are read.
    let e = connect(addr, "app", "wrong_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    let c = app(addr).await;
    c.simple_query(&format!("CREATE TABLE IF NOT EXISTS {table} (x int)"))
        .await
        .unwrap();
    c.simple_query(&format!("INSERT INTO {table} VALUES (1)"))
        .await
        .unwrap();
    let mut on_replica = 0;
    for _ in 0..6 {
        let r = rows(&c.simple_query("SELECT pg_is_in_recovery()").await.unwrap());
        on_replica += usize::from(r[0][0] == "t");
    }
    assert!(on_replica > 0, "no read reached the replica");
    c.simple_query("BEGIN READ ONLY").await.unwrap();
    let r = rows(&c.simple_query("SELECT pg_is_in_recovery()").await.unwrap());
    assert_eq!(r[0][0], "t", "a read-only transaction runs on the replica");
    c.simple_query("COMMIT").await.unwrap();
    c.simple_query(&format!("BEGIN; INSERT INTO {table} VALUES (2); COMMIT"))
        .await
        .unwrap();
    let e = c.simple_query("SELECT 1/0").await.unwrap_err();
    assert_eq!(sqlstate(&e), "22012");

    // Two open write transactions take the primary's pool of 2; a third
    // writer waits query_wait_timeout and gets 53300 from pgkeel.
    let (c1, c2, c3) = (app(addr).await, app(addr).await, app(addr).await);
    for t in [&c1, &c2] {
        t.simple_query("BEGIN").await.unwrap();
        t.simple_query(&format!("INSERT INTO {table} VALUES (3)"))
            .await
            .unwrap();
    }
    let e = c3
        .simple_query(&format!("INSERT INTO {table} VALUES (4)"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "53300");
    for t in [&c1, &c2] {
        t.simple_query("COMMIT").await.unwrap();
    }
    // The client has its answer a moment before pgkeel takes the
    // connection back.
    assert!(wait_until(Duration::from_secs(10), || async { lent(p) == 0 }).await);
    vec![c, c1, c2, c3]
}

/// What the traffic above must have left in the metrics of `p`, whose
/// members are called `primary` and `replica`.
fn check_values(m: &Exposition, primary: &str, replica: &str) {
    let v = |name: &str, labels: &[(&str, &str)]| m.value(name, labels);
    assert_eq!(v("pgkeel_primary_available", &[]), 1.0);
    assert_eq!(v("pgkeel_primary_info", &[("member", primary)]), 1.0);
    assert_eq!(m.find("pgkeel_primary_info", &[]).len(), 1);
    assert_eq!(v("pgkeel_failover_in_progress", &[]), 0.0);
    assert_eq!(v("pgkeel_members", &[]), 2.0);
    assert_eq!(v("pgkeel_members_up", &[]), 2.0);
    assert_eq!(
        v(
            "pgkeel_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    for role in ["primary", "replica"] {
        let txns = v("pgkeel_transactions_total", &[("role", role)]);
        assert!(txns > 0.0, "no {role} transactions");
        assert!(v("pgkeel_queries_total", &[("role", role)]) > 0.0);
        // One duration per completed transaction.
        assert_eq!(
            v(
                "pgkeel_transaction_duration_seconds_count",
                &[("role", role)]
            ),
            txns
        );
    }
    for role in ["primary", "replica"] {
        // Every request forwarded had its ReadyForQuery, and its duration.
        assert_eq!(
            v("pgkeel_query_duration_seconds_count", &[("role", role)]),
            v("pgkeel_queries_total", &[("role", role)]),
            "{role}"
        );
    }
    for bytes in [
        "pgkeel_client_bytes_received_total",
        "pgkeel_client_bytes_sent_total",
        "pgkeel_server_bytes_received_total",
        "pgkeel_server_bytes_sent_total",
    ] {
        assert!(v(bytes, &[]) > 0.0, "{bytes}");
    }
    // SELECT 1/0 (22012) is the server's error, not pgkeel's.
    assert!(v("pgkeel_server_errors_total", &[("class", "22")]) >= 1.0);
    assert!(m
        .find("pgkeel_errors_total", &[("sqlstate", "22012")])
        .is_empty());
    assert!(v("pgkeel_errors_total", &[("sqlstate", "53300")]) >= 1.0);
    // Known codes exist at 0 before they first happen (rate() needs that).
    assert_eq!(v("pgkeel_errors_total", &[("sqlstate", "57P03")]), 0.0);
    assert!(
        v(
            "pgkeel_client_login_failures_total",
            &[("sqlstate", "28P01")]
        ) >= 1.0
    );
    assert!(v("pgkeel_pool_wait_seconds_count", &[]) >= 1.0);
    for lag in ["pgkeel_replica_lag_bytes", "pgkeel_replica_lag_seconds"] {
        assert_eq!(m.find(lag, &[("member", replica)]).len(), 1, "{lag}");
        assert!(m.find(lag, &[("member", primary)]).is_empty(), "{lag}");
    }
    // Pools on both members, with their roles; nothing lent, nobody waiting.
    for (member, role) in [(primary, "primary"), (replica, "replica")] {
        let labels = [("member", member), ("role", role), ("user", "app")];
        assert_eq!(m.sum("pgkeel_pool_size", &labels), 2.0, "{member}");
        let idle = [labels.as_slice(), &[("state", "idle")]].concat();
        assert!(m.sum("pgkeel_pool_server_connections", &idle) >= 1.0);
        let active = [labels.as_slice(), &[("state", "active")]].concat();
        assert_eq!(m.sum("pgkeel_pool_server_connections", &active), 0.0);
        assert_eq!(m.sum("pgkeel_pool_clients_waiting", &labels), 0.0);
    }
    // Four clients stay connected, between transactions.
    assert_eq!(v("pgkeel_clients_connected", &[]), 4.0);
    assert_eq!(v("pgkeel_clients", &[("state", "idle")]), 4.0);
    for state in ["active", "waiting", "held"] {
        assert_eq!(v("pgkeel_clients", &[("state", state)]), 0.0, "{state}");
    }
}

fn member_json(port: u16, role: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:1/patroni","state":"running","role":"{role}","xlog_location":0,"timeline":1}}"#
    )
}

const PROXY: &str = "pool_size = 2\nquery_wait_timeout = \"500ms\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_the_examples_use_them() {
    let pg = shared_pg();
    let replica = start_replica(pg);

    // Static mode: the shared server and its replica as [[servers]].
    let extra = format!(
        "[[servers]]\nhost = \"127.0.0.1\"\nport = {}\n",
        replica.port
    );
    let p = start(&config(pg.port, PROXY, &extra)).await;
    wait_for_roles(&p).await;
    let clients = traffic(&p, "metrics_static").await;
    let static_text = metrics(&p).await;
    assert_promtool_clean(&static_text, "static mode");
    let static_m = Exposition::parse(&static_text);
    check_values(
        &static_m,
        &format!("127.0.0.1:{}", pg.port),
        &format!("127.0.0.1:{}", replica.port),
    );
    // No etcd in static mode, so no etcd metrics (and no etcd alert).
    assert!(
        static_m
            .names()
            .iter()
            .all(|n| !n.starts_with("pgkeel_etcd_")),
        "etcd metrics in static mode"
    );
    prometheus_scrapes(&p).await;
    drop(clients);
    p.shutdown().await;

    // etcd mode: the same two servers, described by Patroni-style keys in a
    // real etcd (the keys Patroni would write, written by the test).
    let mut etcd = start_etcd();
    let scope = format!("metrics-{}", std::process::id());
    let prefix = format!("/service/{scope}/");
    let mut kv = etcd_client::Client::connect([etcd.url()], None)
        .await
        .unwrap();
    for (key, value) in [
        ("members/pg-a", member_json(pg.port, "master")),
        ("members/pg-b", member_json(replica.port, "replica")),
        ("leader", "pg-a".to_owned()),
    ] {
        kv.put(format!("{prefix}{key}"), value, None).await.unwrap();
    }
    let etcd_config = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
{PROXY}
[admin]
listen = "127.0.0.1:0"
[health]
user = "postgres"
password = "postgres"
interval = "200ms"
[etcd]
endpoints = ["{}"]
scope = "{scope}"
dial_timeout = "1s"
[[users]]
name = "app"
password = "app_password"
"#,
        etcd.url()
    );
    let p = start(&etcd_config).await;
    wait_for_roles(&p).await;
    let clients = traffic(&p, "metrics_etcd").await;
    let etcd_text = metrics(&p).await;
    assert_promtool_clean(&etcd_text, "etcd mode");
    let etcd_m = Exposition::parse(&etcd_text);
    check_values(&etcd_m, "pg-a", "pg-b");
    assert_eq!(etcd_m.value("pgkeel_etcd_connected", &[]), 1.0);
    assert_eq!(etcd_m.value("pgkeel_etcd_watch_restarts_total", &[]), 0.0);

    // etcd gone: the gauge the etcd alert watches drops to 0.
    etcd.stop();
    let down = wait_until(Duration::from_secs(20), || async {
        Exposition::parse(&metrics(&p).await).value("pgkeel_etcd_connected", &[]) == 0.0
    })
    .await;
    assert!(down, "pgkeel_etcd_connected stayed 1 with etcd stopped");
    drop(clients);
    p.shutdown().await;
    drop(etcd);
    drop(replica);

    // Every name the examples use is exported (in one mode or the other):
    // a sample name, or in prose a family name.
    let exported: BTreeSet<&str> = static_m.names().union(&etcd_m.names()).copied().collect();
    let families: BTreeSet<&str> = static_m
        .families
        .keys()
        .chain(etcd_m.families.keys())
        .map(String::as_str)
        .collect();
    let files = [
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "grafana/pgkeel-dashboard.json",
    ];
    for file in files {
        let text = std::fs::read_to_string(examples().join(file)).unwrap();
        let unknown: Vec<String> = metric_tokens(&text)
            .into_iter()
            .filter(|t| !exported.contains(t.as_str()) && !families.contains(t.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "examples/{file} uses metrics pgkeel does not export: {unknown:?}"
        );
    }
    // The dashboard's queries select samples (`_bucket`, not the family).
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(examples().join("grafana/pgkeel-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    for e in &exprs {
        for t in metric_tokens(e) {
            assert!(
                exported.contains(t.as_str()),
                "dashboard query selects {t}: {e}"
            );
        }
    }
    // The docs (README and docs/) name only real metrics, and list every family.
    let mut readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for page in std::fs::read_dir(repo().join("docs")).unwrap() {
        let page = page.unwrap().path();
        if page.extension().is_some_and(|e| e == "md") {
            readme.push_str(&std::fs::read_to_string(page).unwrap());
        }
    }
    let mentioned = metric_tokens(&readme);
    let unknown: Vec<&String> = mentioned
        .iter()
        .filter(|t| !exported.contains(t.as_str()) && !families.contains(t.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "the docs mention metrics pgkeel does not export: {unknown:?}"
    );
    let missing: Vec<&&str> = families
        .iter()
        .filter(|f| !mentioned.contains(**f))
        .collect();
    assert!(missing.is_empty(), "the docs do not list {missing:?}");
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET from Prometheus's HTTP API; the JSON answer's `data`.
async fn prom_api(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (code, body) = http_get(addr, path).await;
    let v: serde_json::Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("{path}: HTTP {code}, not JSON ({e}): {body}"));
    assert_eq!(v["status"], "success", "{path}: {body}");
    v["data"].clone()
}

async fn prom_query(addr: SocketAddr, q: &str) -> Vec<serde_json::Value> {
    let data = prom_api(addr, &format!("/api/v1/query?query={}", url_encode(q))).await;
    data["result"].as_array().cloned().unwrap_or_default()
}

/// A real Prometheus with the example configuration, pointed at `p`: it
/// scrapes it, loads the alerting rules, answers every dashboard query, and
/// no alert is pending or firing for a healthy static-mode instance.
async fn prometheus_scrapes(p: &ProxyHandle) {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(examples().join("prometheus/prometheus.yml")).unwrap();
    let rules = examples().join("prometheus/alerts.yml");
    let mut config = example.clone();
    for (from, to) in [
        ("127.0.0.1:9930", p.admin_addr().unwrap().to_string()),
        ("scrape_interval: 10s", "scrape_interval: 1s".to_owned()),
        (
            "evaluation_interval: 10s",
            "evaluation_interval: 1s".to_owned(),
        ),
        ("  - alerts.yml", format!("  - {}", rules.display())),
    ] {
        assert!(config.contains(from), "prometheus.yml has no `{from}`");
        config = config.replace(from, &to);
    }
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = dead_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    let mut prometheus = common::TiedProcess::spawn(cmd, libc::SIGTERM);
    let log_path = dir.path().join("prometheus.log");
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();

    // Three scrapes, so that rate() has samples to work with.
    let scraped = wait_until(Duration::from_secs(30), || async {
        // http_get insists on a listener: until Prometheus has bound, no.
        tokio::net::TcpStream::connect(addr).await.is_ok()
            && http_get(addr, "/-/ready").await.0 == 200
            && prom_query(
                addr,
                r#"count_over_time(up{job="pgkeel"}[1m]) >= 3 and up == 1"#,
            )
            .await
            .len()
                == 1
    })
    .await;
    assert!(scraped, "Prometheus did not scrape pgkeel:\n{}", log());

    // Every alert loaded, and each evaluated without error.
    let names = alert_names(&std::fs::read_to_string(&rules).unwrap());
    let healthy = wait_until(Duration::from_secs(10), || async {
        let data = prom_api(addr, "/api/v1/rules").await;
        let loaded: Vec<&serde_json::Value> = data["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect();
        loaded.len() == names.len() && loaded.iter().all(|r| r["health"] == "ok")
    })
    .await;
    assert!(
        healthy,
        "rules not all loaded and healthy: {}",
        prom_api(addr, "/api/v1/rules").await
    );

    let text = std::fs::read_to_string(examples().join("grafana/pgkeel-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    let mut with_data = 0;
    for e in &exprs {
        let q = e
            .replace("$__rate_interval", "1m")
            .replace("$instance", ".*");
        with_data += usize::from(!prom_query(addr, &q).await.is_empty());
    }
    // Some panels show only what is not zero (errors, failovers): most have data.
    assert!(
        with_data * 2 > exprs.len(),
        "{with_data} of {} dashboard queries returned data",
        exprs.len()
    );

    let alerts = prom_api(addr, "/api/v1/alerts").await;
    assert_eq!(
        alerts["alerts"].as_array().map(Vec::len),
        Some(0),
        "alerts on a healthy pgkeel: {alerts}"
    );
    prometheus.stop();
}

/// The gauges the no-primary and failover alerts watch, through real
/// events: a replica alone (no primary, and no failover since there never
/// was one), promoted (a primary), then stopped (a failover begins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_gauges_follow_promotion_and_loss() {
    let pg = shared_pg();
    let mut replica = Some(start_replica(pg));
    let port = replica.as_ref().unwrap().port;
    let p = start(&config(port, "", "")).await;
    let gauges = || async {
        let m = Exposition::parse(&metrics(&p).await);
        (
            m.value("pgkeel_primary_available", &[]),
            m.find("pgkeel_primary_info", &[])
                .iter()
                .map(|s| s.labels["member"].clone())
                .collect::<Vec<_>>(),
            m.value("pgkeel_failover_in_progress", &[]),
            m.value("pgkeel_members_up", &[]),
        )
    };
    let member = format!("127.0.0.1:{port}");
    let seen_replica = wait_until(Duration::from_secs(10), || async {
        p.shared()
            .topology
            .load()
            .members
            .iter()
            .any(|m| m.serves_reads())
    })
    .await;
    assert!(seen_replica);
    assert_eq!(gauges().await, (0.0, vec![], 0.0, 1.0));

    let su = common::pg_client(port, "postgres", "postgres", "postgres").await;
    su.simple_query("SELECT pg_promote()").await.unwrap();
    let promoted = wait_until(Duration::from_secs(20), || async {
        gauges().await == (1.0, vec![member.clone()], 0.0, 1.0)
    })
    .await;
    assert!(promoted, "after promotion: {:?}", gauges().await);

    drop(su);
    drop(replica.take());
    let lost = wait_until(Duration::from_secs(20), || async {
        gauges().await == (0.0, vec![], 1.0, 0.0)
    })
    .await;
    assert!(lost, "after the primary stopped: {:?}", gauges().await);
    p.shutdown().await;
}

/// `pgkeel_config_last_reload_successful` (the reload alert's gauge) drops
/// to 0 on an invalid file and comes back with a valid one.
#[tokio::test]
async fn reload_gauge_follows_the_last_reload() {
    let pg = shared_pg();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pgkeel.toml");
    let good = config(pg.port, "", "");
    std::fs::write(&path, &good).unwrap();
    let p = pgkeel::Proxy::start(pgkeel::config::Config::from_file(&path).unwrap())
        .await
        .unwrap();
    let gauge = || async {
        Exposition::parse(&metrics(&p).await).value("pgkeel_config_last_reload_successful", &[])
    };
    assert_eq!(gauge().await, 1.0);
    std::fs::write(&path, good.replace("[proxy]", "[proxy]\npool_size = 0")).unwrap();
    assert!(p.reload(&path).is_err());
    assert_eq!(gauge().await, 0.0);
    std::fs::write(&path, &good).unwrap();
    p.reload(&path).unwrap();
    assert_eq!(gauge().await, 1.0);
    p.shutdown().await;
}

/// Alert names in alerts.yml, in order.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

#[test]
fn prometheus_examples_pass_promtool() {
    let dir = examples().join("prometheus");
    let path = |f: &str| dir.join(f).display().to_string();
    for args in [
        ["check", "config", &path("prometheus.yml")],
        ["check", "rules", &path("alerts.yml")],
        ["test", "rules", &path("alerts_test.yml")],
    ] {
        let (ok, out) = promtool(&args, None);
        assert!(ok, "promtool {args:?}: {out}");
    }

    // Each alert has a test case where it fires and one where it does not.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    let mut current: Option<String> = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname: ") {
            current = Some(name.to_owned());
        } else if let (Some(name), Some(rest)) = (&current, line.strip_prefix("exp_alerts:")) {
            if rest.trim() == "[]" {
                quiet.insert(name.clone());
            } else {
                fires.insert(name.clone());
            }
        }
    }
    let names = alert_names(&rules);
    assert!(names.len() >= 8, "alerts: {names:?}");
    for name in &names {
        assert!(fires.contains(name), "no test where {name} fires");
        assert!(quiet.contains(name), "no test where {name} stays quiet");
    }
    for required in [
        "PgkeelDown",
        "PgkeelNoPrimary",
        "PgkeelFailoverTooLong",
        "PgkeelClientsHeld",
        "PgkeelPoolSaturated",
        "PgkeelClientsWaitingForPool",
        "PgkeelEtcdWatchDown",
        "PgkeelHighErrorRate",
        "PgkeelReplicaLagHigh",
        "PgkeelConfigReloadFailed",
    ] {
        assert!(names.iter().any(|n| n == required), "{required} missing");
    }
}

/// Every PromQL expression of the dashboard parses: they become recording
/// rules in a scratch rule file that `promtool check rules` reads.
#[test]
fn dashboard_queries_parse() {
    let text = std::fs::read_to_string(examples().join("grafana/pgkeel-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert!(
        dash["templating"]["list"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["type"] == "datasource"),
        "the dashboard has a datasource variable"
    );
    let mut exprs = Vec::new();
    collect_exprs(&dash, &mut exprs);
    assert!(exprs.len() >= 20, "{} expressions", exprs.len());
    // Grafana's variables, as Grafana would fill them in.
    let rules: Vec<serde_json::Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let e = e
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            serde_json::json!({ "record": format!("dashboard:expr_{i}"), "expr": e })
        })
        .collect();
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let dir = tempfile::tempdir().unwrap();
    // JSON is YAML: promtool reads it as a rule file.
    let path = dir.path().join("dashboard_rules.yml");
    std::fs::write(&path, file.to_string()).unwrap();
    let (ok, out) = promtool(&["check", "rules", &path.display().to_string()], None);
    assert!(ok, "dashboard queries: {out}");
    assert!(
        out.contains(&format!("{} rules found", exprs.len())),
        "{out}"
    );
    // Panels' datasource is the variable, so the dashboard imports anywhere.
    for panel in dash["panels"].as_array().unwrap() {
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${datasource}",
                "panel {}",
                panel["title"]
            );
        }
    }
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}
