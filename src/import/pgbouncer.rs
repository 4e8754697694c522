//! pgbouncer.ini (and its userlist.txt) → pgkeel TOML.
//!
//! `[databases]` entries name the servers (each distinct host and port one
//! `[[servers]]` entry; pgkeel serves every database of its servers, so
//! the entries themselves need nothing more unless they rename or pin);
//! `[pgbouncer]` settings map to `[proxy]` and `[admin]` by meaning, in
//! pgkeel's units; userlist.txt lines become `[[users]]`.

use std::collections::BTreeMap;

use super::{quote, Imported};

/// An ini file: section → (key, value) in order. `;` and `#` start comments.
pub fn parse_ini(text: &str) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_ascii_lowercase();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone())
                .or_default()
                .push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

/// A `[databases]` connection string: `host=h port=5432 dbname='x y'`.
pub fn parse_connstr(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().to_owned();
        let after = rest[eq + 1..].trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('\'') {
            let end = q.find('\'').unwrap_or(q.len());
            (q[..end].to_owned(), q.get(end + 1..).unwrap_or(""))
        } else {
            let end = after.find(char::is_whitespace).unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        out.push((key, value));
        rest = tail.trim_start();
    }
    out
}

/// userlist.txt: `"user" "password"` per line.
pub fn parse_userlist(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split('"').skip(1).step_by(2);
            Some((parts.next()?.to_owned(), parts.next()?.to_owned()))
        })
        .collect()
}

/// PgBouncer seconds (`600`, `0.5`) as a pgkeel duration.
fn duration(v: &str) -> Option<String> {
    let secs: f64 = v.parse().ok()?;
    if secs < 0.0 {
        return None;
    }
    Some(if secs.fract() == 0.0 {
        quote(&format!("{}s", secs as u64))
    } else {
        quote(&format!("{}ms", (secs * 1000.0).round() as u64))
    })
}

fn list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn toml_list(items: &[String]) -> String {
    format!(
        "[{}]",
        items
            .iter()
            .map(|s| quote(s))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Settings that have no counterpart, and why.
const NO_COUNTERPART: &[(&str, &str)] = &[
    (
        "logfile",
        "pgkeel logs to stderr (run it under systemd or redirect)",
    ),
    (
        "pidfile",
        "pgkeel does not daemonize; the service manager keeps its pid",
    ),
    ("unix_socket_dir", "pgkeel listens on TCP only"),
    ("unix_socket_mode", "pgkeel listens on TCP only"),
    ("unix_socket_group", "pgkeel listens on TCP only"),
    (
        "auth_file",
        "read from the userlist given on the command line; users live in [[users]]",
    ),
    (
        "auth_hba_file",
        "pgkeel has no hba file: every [[users]] entry may log in",
    ),
    (
        "auth_query",
        "pgkeel has no auth_query: list users in [[users]] (SCRAM verifiers work)",
    ),
    (
        "auth_user",
        "pgkeel has no auth_query: list users in [[users]]",
    ),
    (
        "reserve_pool_size",
        "pgkeel has no reserve pool: size pool_size for the peak",
    ),
    ("reserve_pool_timeout", "pgkeel has no reserve pool"),
    (
        "max_db_connections",
        "pgkeel limits each pool (member × database × user), not databases",
    ),
    (
        "max_user_connections",
        "pgkeel limits each pool (member × database × user), not users",
    ),
    (
        "server_check_query",
        "pgkeel checks idle connections with a socket peek, not a query",
    ),
    (
        "server_check_delay",
        "pgkeel checks every idle connection before lending it",
    ),
    (
        "server_round_robin",
        "replicas are balanced by [routing] balance",
    ),
    (
        "ignore_startup_parameters",
        "pgkeel accepts every startup parameter and restores it on each server",
    ),
    (
        "server_login_retry",
        "pgkeel retries a failed connect at the next request; members that fail are probed apart",
    ),
    ("stats_period", "fixed at 60 s (SHOW STATS_AVERAGES)"),
    (
        "log_connections",
        "pgkeel always logs connections at info level",
    ),
    (
        "log_disconnections",
        "pgkeel always logs disconnections at info level",
    ),
    ("log_pooler_errors", "pgkeel always logs errors"),
    ("verbose", "use [log] level"),
    ("syslog", "pgkeel logs to stderr"),
    ("client_tls_sslmode", "pgkeel has no TLS listener yet"),
    ("client_tls_key_file", "pgkeel has no TLS listener yet"),
    ("client_tls_cert_file", "pgkeel has no TLS listener yet"),
    ("client_tls_ca_file", "pgkeel has no TLS listener yet"),
    (
        "server_tls_sslmode",
        "pgkeel connects to servers without TLS yet",
    ),
    (
        "tcp_keepalive",
        "pgkeel uses the operating system's defaults",
    ),
    ("dns_max_ttl", "members are resolved at connect time"),
    (
        "idle_transaction_timeout",
        "use PostgreSQL's idle_in_transaction_session_timeout",
    ),
    ("query_timeout", "use PostgreSQL's statement_timeout"),
    (
        "client_idle_timeout",
        "pgkeel never closes idle clients: idle clients hold no server connection",
    ),
    (
        "max_prepared_statements",
        "prepared statements are always tracked ([proxy] prepared_statements_cache_size)",
    ),
];

/// Turns pgbouncer.ini (and its userlist.txt) into pgkeel's configuration.
pub fn import(ini: &str, userlist: Option<&str>) -> Imported {
    let ini = parse_ini(ini);
    let mut out = Imported::default();
    let empty = Vec::new();
    let pgb = ini.get("pgbouncer").unwrap_or(&empty);
    let get = |k: &str| {
        pgb.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };

    let addr = get("listen_addr").unwrap_or("127.0.0.1");
    let addr = if addr == "*" { "0.0.0.0" } else { addr };
    let port = get("listen_port").unwrap_or("6432");
    out.set(
        "proxy",
        "listen",
        quote(&format!("{addr}:{port}")),
        "listen_addr, listen_port",
    );
    for (key, value) in pgb {
        let k = key.as_str();
        let v = value.as_str();
        let num = || v.parse::<u64>().ok().map(|n| n.to_string());
        let mapped: Option<(&str, &str, Option<String>)> = match k {
            "listen_addr" | "listen_port" => continue,
            "pool_mode" => match v {
                "session" | "transaction" => Some(("proxy", "pool_mode", Some(quote(v)))),
                _ => {
                    out.skip(k, "statement mode does not exist in pgkeel; transaction mode is the nearest (it allows multi-statement transactions)");
                    out.set(
                        "proxy",
                        "pool_mode",
                        quote("transaction"),
                        "pool_mode = statement",
                    );
                    continue;
                }
            },
            "default_pool_size" => Some(("proxy", "pool_size", num())),
            "min_pool_size" => Some(("proxy", "min_pool_size", num())),
            "max_client_conn" => Some(("proxy", "max_client_connections", num())),
            "server_idle_timeout" => Some(("proxy", "server_idle_timeout", duration(v))),
            "server_lifetime" => Some(("proxy", "server_lifetime", duration(v))),
            "server_connect_timeout" => Some(("proxy", "connect_timeout", duration(v))),
            "query_wait_timeout" => Some(("proxy", "query_wait_timeout", duration(v))),
            "client_login_timeout" => Some(("proxy", "client_login_timeout", duration(v))),
            "server_reset_query" => Some(("proxy", "server_reset_query", Some(quote(v)))),
            "max_packet_size" => {
                // pgkeel caps one message at 1 GB, as PostgreSQL does.
                let capped = v
                    .parse::<u64>()
                    .ok()
                    .map(|n| n.clamp(1 << 10, (1 << 30) - 1).to_string());
                Some(("proxy", "max_message_size", capped))
            }
            "auth_type" => match v {
                "scram-sha-256" | "md5" => Some(("proxy", "auth_method", Some(quote(v)))),
                _ => {
                    out.skip(k, &format!("{v:?} has no counterpart: pgkeel authenticates clients with scram-sha-256 or md5"));
                    continue;
                }
            },
            "admin_users" | "stats_users" => {
                let key = if k == "admin_users" {
                    "users"
                } else {
                    "stats_users"
                };
                out.set(
                    "admin",
                    "database",
                    quote("pgbouncer"),
                    "PgBouncer's console database",
                );
                Some(("admin", key, Some(toml_list(&list(v)))))
            }
            _ => {
                let why = NO_COUNTERPART
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map_or("no pgkeel counterpart", |(_, w)| w);
                out.skip(k, why);
                continue;
            }
        };
        match mapped {
            Some((section, key, Some(value))) => out.set(section, key, value, k),
            _ => out.skip(k, &format!("value {v:?} not understood")),
        }
    }

    // [databases]: the servers behind them.
    let mut servers: Vec<(String, u16)> = Vec::new();
    for (name, conn) in ini.get("databases").unwrap_or(&empty) {
        let fields = parse_connstr(conn);
        let field = |k: &str| fields.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let host = field("host").unwrap_or_else(|| "127.0.0.1".into());
        let port = field("port").and_then(|p| p.parse().ok()).unwrap_or(5432);
        if !servers.contains(&(host.clone(), port)) {
            servers.push((host, port));
        }
        if let Some(db) = field("dbname").filter(|d| d != name && name != "*") {
            out.skip(
                &format!("[databases] {name}"),
                &format!(
                    "pgkeel does not rename databases: clients must ask for {db:?} by its own name"
                ),
            );
        }
        for (f, _) in &fields {
            if !matches!(f.as_str(), "host" | "port" | "dbname") {
                out.skip(&format!("[databases] {name} {f}"), "per-database settings have no counterpart: pgkeel's pool size and mode are per user ([[users]] pool_size, pool_mode)");
            }
        }
    }
    if servers.len() > 1 {
        out.note(format!("[databases] names {} servers: pgkeel treats every [[servers]] entry as a member of one cluster (one primary, the rest replicas). Keep only one cluster's servers in this file.", servers.len()));
    }
    for (host, port) in &servers {
        out.push_table(
            "servers",
            vec![format!("host = {}", quote(host)), format!("port = {port}")],
        );
    }
    if ini.contains_key("users") {
        out.skip(
            "[users]",
            "per-user pool settings: set pool_size / pool_mode on the [[users]] entry",
        );
    }

    let users = userlist.map(parse_userlist).unwrap_or_default();
    for (name, password) in &users {
        out.push_table(
            "users",
            vec![
                format!("name = {}", quote(name)),
                format!("password = {}", quote(password)),
            ],
        );
    }
    for (key, who) in [
        ("admin_users", get("admin_users")),
        ("stats_users", get("stats_users")),
    ] {
        for u in who.map(list).unwrap_or_default() {
            if !users.is_empty() && !users.iter().any(|(n, _)| *n == u) {
                out.note(format!("{key} names {u:?}, who is not in the userlist: add a [[users]] entry for {u:?} (console users log in with a [[users]] password)"));
            }
        }
    }
    if users.is_empty() {
        out.note("no userlist.txt given: add a [[users]] entry for each role (name, password or SCRAM verifier)".into());
    }
    out.set("health", "database", quote("postgres"), "");
    out.note("pgkeel probes each server itself: [health] user/password default to the first [[users]] entry, which must be able to log in to the health database".into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "\
;; a comment
[databases]
appdb = host=10.0.0.5 port=5433 dbname=appdb
legacy = host=10.0.0.5 port=5433 dbname=newname pool_size=5

[pgbouncer]
listen_addr = *
listen_port = 6432
auth_type = md5
auth_file = /etc/pgbouncer/userlist.txt
pool_mode = statement
default_pool_size = 25
max_client_conn = 200
server_idle_timeout = 0.5
server_lifetime = 3600
admin_users = admin, ops
stats_users = monitor
logfile = /var/log/pgbouncer.log
";

    #[test]
    fn settings_map_by_meaning_and_units() {
        let users = "\"admin\" \"pw\"\n\"ops\" \"md5abc\"\n\"monitor\" \"m\"\n";
        let i = import(INI, Some(users));
        let out = i.render("pgbouncer.ini");
        for line in [
            "listen = \"0.0.0.0:6432\"",
            "pool_size = 25",
            "max_client_connections = 200",
            "server_idle_timeout = \"500ms\"",
            "server_lifetime = \"3600s\"",
            "auth_method = \"md5\"",
            "pool_mode = \"transaction\"",
            "users = [\"admin\", \"ops\"]",
            "stats_users = [\"monitor\"]",
            "database = \"pgbouncer\"",
            "host = \"10.0.0.5\"\nport = 5433",
            "name = \"ops\"\npassword = \"md5abc\"",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        // One server for both entries.
        assert_eq!(out.matches("\n[[servers]]\n").count(), 1, "{out}");
        let skipped: Vec<&str> = i.unmapped.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "logfile",
            "auth_file",
            "pool_mode",
            "[databases] legacy",
            "[databases] legacy pool_size",
        ] {
            assert!(skipped.contains(&k), "{k} in {skipped:?}");
        }
    }

    #[test]
    fn connection_strings_and_userlists_parse() {
        assert_eq!(
            parse_connstr("host=h  dbname='my db' port=1"),
            vec![
                ("host".to_owned(), "h".to_owned()),
                ("dbname".to_owned(), "my db".to_owned()),
                ("port".to_owned(), "1".to_owned())
            ]
        );
        assert_eq!(
            parse_userlist("\"a\" \"b c\"\n\nbad line\n"),
            vec![("a".to_owned(), "b c".to_owned())]
        );
        assert_eq!(duration("-1"), None);
        assert_eq!(duration("15").as_deref(), Some("\"15s\""));
    }
}
