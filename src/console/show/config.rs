//! SHOW CONFIG: PgBouncer's keys that have a pgkeel counterpart first
//! (`max_client_conn`, `default_pool_size`...: exporters read them), then
//! every key of the running configuration by its pgkeel name, with its
//! default and whether a reload can change it. Passwords are masked.

use std::collections::HashMap;

use serde_json::Value;

use super::super::{text, ResultSet, Type};
use super::pool_mode;
use crate::config::Config;
use crate::shared::Shared;

const MASK: &str = "********";

/// Never show a password: keys named like one, and passwords inside URLs.
fn mask(key: &str, v: Option<String>) -> Option<String> {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.contains("password") || last.contains("secret") || last.ends_with("_token") {
        return v.map(|_| MASK.to_owned());
    }
    v.map(|s| mask_url_password(&s))
}

/// `http://user:pw@host` → `http://user:********@host`, wherever it occurs.
fn mask_url_password(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail.find(['/', '"', ',', ' ', ']']).unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Flattens a serialized section into `key = value` pairs
/// (`routing.weights.pg2`, `servers[0].host`).
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, Option<String>)>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object()) => {
            for (i, v) in a.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Null => out.push((prefix.to_owned(), None)),
        Value::String(s) => out.push((prefix.to_owned(), Some(s.clone()))),
        other => out.push((prefix.to_owned(), Some(other.to_string()))),
    }
}

fn section<T: serde::Serialize>(name: &str, v: &T) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    flatten(
        name,
        &serde_json::to_value(v).expect("config sections serialize"),
        &mut out,
    );
    out
}

/// Every key of the running configuration, its default and whether a
/// reload can change it. Passwords are masked.
pub(in crate::console) fn config(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let mut rs = ResultSet::new(&[
        ("key", Type::Text),
        ("value", Type::Text),
        ("default", Type::Text),
        ("changeable", Type::Text),
    ]);
    for (key, value, default, changeable) in pgbouncer_keys(&cfg) {
        rs.push(vec![
            text(key),
            text(value),
            text(default),
            text(changeable),
        ]);
    }
    for (key, value, default) in config_rows(&cfg) {
        let changeable = if crate::reload::needs_restart(&key) {
            "no"
        } else {
            "yes"
        };
        let (value, default) = (mask(&key, value), mask(&key, default));
        rs.push(vec![text(key), value, default, text(changeable)]);
    }
    rs
}

/// PgBouncer's names for the settings pgkeel has too, in PgBouncer's
/// units (seconds, bytes; 0 is "no limit"): (key, value, default, changeable).
fn pgbouncer_keys(cfg: &Config) -> Vec<(&'static str, String, String, &'static str)> {
    let d = crate::config::ProxyConfig::default();
    let p = &cfg.proxy;
    let port = |listen: &str| listen.rsplit(':').next().unwrap_or("").to_owned();
    let host = |listen: &str| {
        listen
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned()
    };
    let secs = |x: &crate::config::Dur| x.0.as_secs().to_string();
    vec![
        ("listen_addr", host(&p.listen), host(&d.listen), "no"),
        ("listen_port", port(&p.listen), port(&d.listen), "no"),
        (
            "pool_mode",
            pool_mode(p.pool_mode).into(),
            pool_mode(d.pool_mode).into(),
            "yes",
        ),
        (
            "default_pool_size",
            p.pool_size.to_string(),
            d.pool_size.to_string(),
            "yes",
        ),
        (
            "min_pool_size",
            p.min_pool_size.to_string(),
            d.min_pool_size.to_string(),
            "yes",
        ),
        (
            "max_client_conn",
            p.max_client_connections.to_string(),
            d.max_client_connections.to_string(),
            "yes",
        ),
        // pgkeel limits per pool (member × database × user), never per user or database.
        ("max_user_connections", "0".into(), "0".into(), "no"),
        ("max_db_connections", "0".into(), "0".into(), "no"),
        (
            "server_idle_timeout",
            secs(&p.server_idle_timeout),
            secs(&d.server_idle_timeout),
            "yes",
        ),
        (
            "server_lifetime",
            secs(&p.server_lifetime),
            secs(&d.server_lifetime),
            "yes",
        ),
        (
            "server_connect_timeout",
            secs(&p.connect_timeout),
            secs(&d.connect_timeout),
            "yes",
        ),
        (
            "query_wait_timeout",
            secs(&p.query_wait_timeout),
            secs(&d.query_wait_timeout),
            "yes",
        ),
        (
            "client_login_timeout",
            secs(&p.client_login_timeout),
            secs(&d.client_login_timeout),
            "yes",
        ),
        (
            "server_reset_query",
            p.server_reset_query.clone(),
            d.server_reset_query.clone(),
            "yes",
        ),
        (
            "max_packet_size",
            p.max_message_size.0.to_string(),
            d.max_message_size.0.to_string(),
            "yes",
        ),
        (
            "admin_users",
            cfg.admin.users.join(","),
            String::new(),
            "yes",
        ),
        (
            "stats_users",
            cfg.admin.stats_users.join(","),
            String::new(),
            "yes",
        ),
    ]
}

type Row = (String, Option<String>, Option<String>);

/// (key, value, default) for each key; array entries have no default.
fn config_rows(cfg: &Config) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut with_defaults = |current: Vec<(String, Option<String>)>,
                             defaults: Vec<(String, Option<String>)>| {
        let defaults: HashMap<_, _> = defaults.into_iter().collect();
        for (k, v) in current {
            let d = defaults.get(&k).cloned().flatten();
            rows.push((k, v, d));
        }
    };
    with_defaults(
        section("proxy", &cfg.proxy),
        section("proxy", &crate::config::ProxyConfig::default()),
    );
    with_defaults(
        section("admin", &cfg.admin),
        section("admin", &crate::config::AdminConfig::default()),
    );
    with_defaults(
        section("log", &cfg.log),
        section("log", &crate::config::LogConfig::default()),
    );
    with_defaults(
        section("health", &cfg.health),
        section("health", &crate::config::HealthConfig::default()),
    );
    if let Some(e) = &cfg.etcd {
        with_defaults(
            section("etcd", e),
            section("etcd", &crate::config::EtcdConfig::default()),
        );
    }
    with_defaults(
        section("failover", &cfg.failover),
        section("failover", &crate::config::FailoverConfig::default()),
    );
    with_defaults(
        section("routing", &cfg.routing),
        section("routing", &crate::config::RoutingConfig::default()),
    );
    with_defaults(
        section("tls", &cfg.tls),
        section("tls", &crate::config::TlsConfig::default()),
    );
    // The validated users keep only what is needed; their secrets are never shown.
    let users: Vec<Value> = cfg
        .users
        .iter()
        .map(|u| {
            serde_json::json!({
                "name": u.name,
                "password": MASK,
                "server_user": u.server_user,
                "server_password": u.server_password.as_ref().map(|_| MASK),
                "pool_size": u.pool_size,
                "pool_mode": pool_mode(u.pool_mode),
            })
        })
        .collect();
    let listeners: Vec<Value> = cfg
        .listeners
        .iter()
        .map(|(a, r)| serde_json::json!({ "address": a.to_string(), "route": r }))
        .collect();
    for (name, v) in [
        ("users", serde_json::to_value(users)),
        ("servers", serde_json::to_value(&cfg.servers)),
        ("listeners", serde_json::to_value(listeners)),
        ("query_rules", serde_json::to_value(&cfg.query_rules)),
        ("notify", serde_json::to_value(&cfg.notify)),
    ] {
        let v = v.expect("config tables serialize");
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            let mut out = Vec::new();
            flatten(name, &v, &mut out);
            rows.extend(out.into_iter().map(|(k, v)| (k, v, None)));
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgbouncer_keys_use_pgbouncer_units() {
        let cfg = Config::from_toml_str(
            "[proxy]\nlisten = \"127.0.0.1:6432\"\nmax_client_connections = 500\nserver_idle_timeout = \"120s\"\n[[users]]\nname = \"a\"\npassword = \"b\"\n[[servers]]\nhost = \"h\"\n",
        )
        .unwrap();
        let keys = pgbouncer_keys(&cfg);
        let get = |k: &str| keys.iter().find(|r| r.0 == k).unwrap().1.clone();
        assert_eq!(get("listen_addr"), "127.0.0.1");
        assert_eq!(get("listen_port"), "6432");
        assert_eq!(get("max_client_conn"), "500");
        assert_eq!(get("max_user_connections"), "0");
        assert_eq!(get("server_idle_timeout"), "120");
        assert_eq!(get("default_pool_size"), "20");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(mask("etcd.password", text("pw")), text(MASK));
        assert_eq!(mask("health.password", None), None);
        assert_eq!(
            mask("notify[0].webhook", text("http://u:secret@h:80/x")),
            text("http://u:********@h:80/x")
        );
        assert_eq!(
            mask(
                "etcd.endpoints",
                text("[\"http://a:b@h:1\",\"http://h:2\"]")
            ),
            text("[\"http://a:********@h:1\",\"http://h:2\"]")
        );
        assert_eq!(mask("x.url", text("http://h:1/p")), text("http://h:1/p"));
    }

    #[test]
    fn config_rows_cover_sections_and_tables() {
        let src = r#"
[admin]
users = ["app"]
[etcd]
scope = "demo"
username = "e"
password = "etcd_pw"
[routing]
weights = { pg2 = 2 }
[[users]]
name = "app"
password = "app_pw"
[[notify]]
webhook = "http://hook:pw@127.0.0.1:9/x"
"#;
        let cfg = Config::from_toml_str(src).unwrap();
        let rows = config_rows(&cfg);
        let get = |k: &str| {
            rows.iter()
                .find(|r| r.0 == k)
                .unwrap_or_else(|| panic!("{k}"))
        };
        assert_eq!(get("proxy.pool_size").1.as_deref(), Some("20"));
        assert_eq!(get("proxy.pool_size").2.as_deref(), Some("20"));
        assert_eq!(get("proxy.query_wait_timeout").1.as_deref(), Some("30s"));
        assert_eq!(get("proxy.max_message_size").1.as_deref(), Some("256MB"));
        assert_eq!(get("admin.users").1.as_deref(), Some("[\"app\"]"));
        assert_eq!(get("admin.users").2.as_deref(), Some("[]"));
        assert_eq!(get("routing.weights.pg2").1.as_deref(), Some("2"));
        assert_eq!(get("etcd.scope").1.as_deref(), Some("demo"));
        assert_eq!(get("users[0].name").1.as_deref(), Some("app"));
        assert!(get("users[0].password").2.is_none());
        assert!(crate::reload::needs_restart("etcd.scope"));
        assert!(!crate::reload::needs_restart("admin.users"));
        assert!(crate::reload::needs_restart("log.format"));
        assert!(!crate::reload::needs_restart("log.log_queries"));
        assert_eq!(get("log.log_queries").1.as_deref(), Some("false"));
        let all: String = rows
            .iter()
            .map(|r| format!("{}={:?}", r.0, mask(&r.0, r.1.clone())))
            .collect();
        assert!(
            !all.contains("app_pw") && !all.contains("etcd_pw") && !all.contains(":pw@"),
            "{all}"
        );
    }
}
