//! haproxy.cfg (Patroni's template: a primary and a replica `listen`
//! section checking Patroni's REST API) → pgkeel TOML.
//!
//! Each TCP `listen` (or `frontend`) section with a `bind` becomes a
//! listener whose route follows its health check: `/primary` (`/master`,
//! `/leader`, or none: Patroni answers `/` 200 on the leader only) is the
//! primary, `/replica` (`/async`, `/sync`, `/read-only`...) the replicas.
//! The first primary one is `[proxy] listen`, the rest `[[listeners]]`.
//! The servers become `[[servers]]`; pgkeel checks them itself, with SQL,
//! instead of Patroni's REST port.

use super::{quote, Imported};

/// A `listen`/`frontend`/`backend` section: its kind, name and lines.
struct Section {
    kind: String,
    name: String,
    lines: Vec<Vec<String>>,
}

fn sections(text: &str) -> Vec<Section> {
    let mut out: Vec<Section> = Vec::new();
    for raw in text.lines() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let top = !raw.starts_with([' ', '\t']);
        if top
            && matches!(
                words[0].as_str(),
                "global"
                    | "defaults"
                    | "listen"
                    | "frontend"
                    | "backend"
                    | "peers"
                    | "resolvers"
                    | "userlist"
            )
        {
            out.push(Section {
                kind: words[0].clone(),
                name: words.get(1).cloned().unwrap_or_default(),
                lines: Vec::new(),
            });
        } else if let Some(s) = out.last_mut() {
            s.lines.push(words);
        }
    }
    out
}

/// HAProxy time (`4s`, `30m`, `5000` = ms) as a pgkeel duration.
fn duration(v: &str) -> Option<String> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (n, unit) = v.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(quote(&match unit {
        "" | "ms" => format!("{n}ms"),
        "us" => format!("{}ms", n / 1000),
        "s" | "m" | "h" => format!("{n}{unit}"),
        "d" => format!("{}h", n * 24),
        _ => return None,
    }))
}

/// `*:5000`, `:5000`, `0.0.0.0:5000`, `10.0.0.1:5000` as an address.
fn bind_address(b: &str) -> String {
    let b = b.split(',').next().unwrap_or(b);
    match b.rsplit_once(':') {
        Some(("" | "*", port)) => format!("0.0.0.0:{port}"),
        Some((host, port)) => format!("{host}:{port}"),
        None => format!("0.0.0.0:{b}"),
    }
}

/// The route a section's Patroni health check selects.
fn route_of(s: &Section) -> &'static str {
    let check = s.lines.iter().find(|l| {
        (l[0] == "option" && l.get(1).is_some_and(|w| w == "httpchk"))
            || (l[0] == "http-check" && l.get(1).is_some_and(|w| w == "send"))
    });
    let path = check
        .and_then(|l| l.iter().find(|w| w.starts_with('/')))
        .map(|p| p.split('?').next().unwrap_or(p).to_ascii_lowercase());
    match path.as_deref() {
        None
        | Some("/" | "/primary" | "/master" | "/leader" | "/read-write" | "/standby-leader") => {
            "primary"
        }
        Some(_) => "replica",
    }
}

/// A `server NAME HOST:PORT ...` line's address, once each.
fn add_server(line: &[String], servers: &mut Vec<(String, u16)>) {
    let Some((h, p)) = line.get(2).and_then(|a| a.rsplit_once(':')) else {
        return;
    };
    if let Ok(p) = p.parse::<u16>() {
        if !servers.iter().any(|(sh, sp)| sh == h && *sp == p) {
            servers.push((h.to_owned(), p));
        }
    }
}

pub fn import(cfg: &str) -> Imported {
    let mut out = Imported::default();
    let secs = sections(cfg);
    let mut servers: Vec<(String, u16)> = Vec::new();
    let mut main_listen: Option<String> = None;
    let mut listeners: Vec<(String, &'static str, String)> = Vec::new();
    for s in &secs {
        match s.kind.as_str() {
            "global" => {
                for l in &s.lines {
                    match l[0].as_str() {
                        "maxconn" => {
                            if let Some(n) = l.get(1).and_then(|n| n.parse::<u64>().ok()) {
                                out.set(
                                    "proxy",
                                    "max_client_connections",
                                    n.to_string(),
                                    "global maxconn",
                                );
                            }
                        }
                        other => {
                            out.skip(&format!("global {other}"), "process settings of HAProxy")
                        }
                    }
                }
            }
            "defaults" => {
                for l in &s.lines {
                    match (l[0].as_str(), l.get(1).map(String::as_str)) {
                        ("timeout", Some("connect")) => match l.get(2).and_then(|v| duration(v)) {
                            Some(d) => out.set("proxy", "connect_timeout", d, "timeout connect"),
                            None => out.skip("timeout connect", "value not understood"),
                        },
                        ("timeout", Some("check")) => match l.get(2).and_then(|v| duration(v)) {
                            Some(d) => out.set("health", "timeout", d, "timeout check"),
                            None => out.skip("timeout check", "value not understood"),
                        },
                        ("timeout", Some(t @ ("client" | "server"))) => out.skip(
                            &format!("timeout {t}"),
                            "pgkeel never closes a quiet connection: idle clients hold no server connection",
                        ),
                        ("mode", _) | ("log", _) => {}
                        ("retries", _) => out.skip("retries", "pgkeel retries a connect within connect_timeout, and replays read-only requests a failover interrupted ([failover] retry_reads)"),
                        (other, _) => out.skip(&format!("defaults {other}"), "no pgkeel counterpart"),
                    }
                }
            }
            "listen" | "frontend" => {
                let http = s
                    .lines
                    .iter()
                    .any(|l| l[0] == "mode" && l.get(1).is_some_and(|m| m == "http"));
                let stats = s.lines.iter().any(|l| l[0] == "stats");
                let bind = s
                    .lines
                    .iter()
                    .find(|l| l[0] == "bind")
                    .and_then(|l| l.get(1))
                    .map(|b| bind_address(b));
                if http || stats {
                    if let Some(b) = bind {
                        out.set(
                            "admin",
                            "listen",
                            quote(&b),
                            &format!(
                                "listen {} (HAProxy's stats page: pgkeel's is GET / here)",
                                s.name
                            ),
                        );
                    }
                    continue;
                }
                for l in &s.lines {
                    if l[0] == "server" {
                        add_server(l, &mut servers);
                        if let Some(i) = l.iter().position(|w| w == "port") {
                            let port = l.get(i + 1).cloned().unwrap_or_default();
                            if !out
                                .unmapped
                                .iter()
                                .any(|(k, _)| k.starts_with("check port"))
                            {
                                out.skip(&format!("check port {port}"), "Patroni's REST API: pgkeel asks each server itself (pg_is_in_recovery(), its WAL position and lag) and, with [etcd], reads Patroni's leader key");
                            }
                        }
                        if l.iter().any(|w| w == "maxconn")
                            && !out.unmapped.iter().any(|(k, _)| k == "server maxconn")
                        {
                            out.skip("server maxconn", "pgkeel pools connections: [proxy] pool_size bounds each member × database × user");
                        }
                    }
                    if l[0] == "default-server"
                        && l.iter().any(|w| w == "shutdown-sessions")
                        && !out
                            .unmapped
                            .iter()
                            .any(|(k, _)| k == "on-marked-down shutdown-sessions")
                    {
                        out.skip("on-marked-down shutdown-sessions", "pgkeel keeps clients connected through a failover: they are held until the new primary is confirmed ([failover] hold_timeout)");
                    }
                }
                let Some(b) = bind else { continue };
                let route = route_of(s);
                if route == "primary" && main_listen.is_none() {
                    main_listen = Some(b.clone());
                    out.set(
                        "proxy",
                        "listen",
                        quote(&b),
                        &format!("listen {} (primary)", s.name),
                    );
                } else {
                    listeners.push((b, route, s.name.clone()));
                }
            }
            "backend" => {
                for l in s.lines.iter().filter(|l| l[0] == "server") {
                    add_server(l, &mut servers);
                }
                out.note(format!("backend {}: its servers are read, but a frontend's route comes from its own health check only; check the listeners' routes", s.name));
            }
            other => out.skip(other, "no pgkeel counterpart"),
        }
    }
    for (address, route, name) in &listeners {
        out.push_table(
            "listeners",
            vec![
                format!("address = {}  # from listen {name}", quote(address)),
                format!("route = {}", quote(route)),
            ],
        );
    }
    for (h, p) in &servers {
        out.push_table(
            "servers",
            vec![format!("host = {}", quote(h)), format!("port = {p}")],
        );
    }
    out.note("pgkeel needs the roles clients log in as: add a [[users]] entry for each (name, password or SCRAM verifier); HAProxy never saw them".into());
    out.note("with Patroni and etcd, an [etcd] section (endpoints, scope = Patroni's scope) can replace [[servers]]: members then come and go with the cluster".into());
    out.push_table(
        "users",
        vec![
            format!("name = {}  # placeholder: one entry per role", quote("app")),
            format!("password = {}", quote("change-me")),
        ],
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
global
    maxconn 300

defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout check 5s

listen stats
    mode http
    bind *:7000
    stats enable

listen primary
    bind *:5000
    option httpchk OPTIONS /primary
    http-check expect status 200
    default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions
    server pg1 10.0.0.1:5432 maxconn 100 check port 8008
    server pg2 10.0.0.2:5432 maxconn 100 check port 8008

listen replicas
    bind *:5001
    option httpchk OPTIONS /replica
    server pg1 10.0.0.1:5432 maxconn 100 check port 8008
    server pg2 10.0.0.2:5432 maxconn 100 check port 8008
";

    #[test]
    fn listens_become_routes_and_servers_members() {
        let i = import(CFG);
        let out = i.render("haproxy.cfg");
        for line in [
            "listen = \"0.0.0.0:5000\"",
            "address = \"0.0.0.0:5001\"",
            "route = \"replica\"",
            "listen = \"0.0.0.0:7000\"",
            "max_client_connections = 300",
            "connect_timeout = \"4s\"",
            "timeout = \"5s\"",
            "host = \"10.0.0.1\"\nport = 5432",
            "host = \"10.0.0.2\"\nport = 5432",
        ] {
            assert!(out.contains(line), "{line} in {out}");
        }
        assert_eq!(out.matches("\n[[servers]]\n").count(), 2);
        assert_eq!(out.matches("\n[[listeners]]\n").count(), 1);
        let skipped: Vec<&str> = i.unmapped.iter().map(|(k, _)| k.as_str()).collect();
        for k in [
            "check port 8008",
            "timeout client",
            "on-marked-down shutdown-sessions",
            "server maxconn",
        ] {
            assert!(skipped.contains(&k), "{k} in {skipped:?}");
        }
    }

    #[test]
    fn backends_give_their_servers() {
        let out = import(
            "frontend pg\n    bind *:5000\nbackend pg_primary\n    server a 10.0.0.9:5432 check\n",
        )
        .render("x");
        assert!(out.contains("listen = \"0.0.0.0:5000\""), "{out}");
        assert!(out.contains("host = \"10.0.0.9\""), "{out}");
    }

    #[test]
    fn checks_pick_routes_and_times_convert() {
        let s = |check: &str| Section {
            kind: "listen".into(),
            name: "x".into(),
            lines: vec![check.split_whitespace().map(str::to_owned).collect()],
        };
        assert_eq!(route_of(&s("option httpchk")), "primary");
        assert_eq!(route_of(&s("option httpchk GET /master")), "primary");
        assert_eq!(
            route_of(&s("option httpchk OPTIONS /replica?lag=10MB")),
            "replica"
        );
        assert_eq!(route_of(&s("option httpchk GET /read-only")), "replica");
        assert_eq!(duration("5000").as_deref(), Some("\"5000ms\""));
        assert_eq!(duration("1d").as_deref(), Some("\"24h\""));
        assert_eq!(duration("x"), None);
        assert_eq!(bind_address(":5000"), "0.0.0.0:5000");
        assert_eq!(bind_address("10.1.1.1:5001"), "10.1.1.1:5001");
    }
}
