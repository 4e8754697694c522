//! The SHOW commands' result sets. Column names follow PgBouncer's where
//! the concept is the same (`cl_active`, `sv_idle`, `maxwait`,
//! `total_xact_count`...); pgkeel's own concepts (held clients, members,
//! roles) get columns of their own.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Collector;
use serde_json::Value;

use super::{boolean, num, text, time, ResultSet, Type};
use crate::clients::ClientState;
use crate::config::{Config, PoolMode};
use crate::pool::{Pool, PoolKey};
use crate::shared::Shared;
use crate::topology::{Role, Topology};

fn pool_mode(m: PoolMode) -> &'static str {
    match m {
        PoolMode::Transaction => "transaction",
        PoolMode::Session => "session",
    }
}

/// The member at `host:port` and its role now ("gone" once it left).
fn member_of(topo: &Topology, host: &str, port: u16) -> (Option<String>, &'static str) {
    match topo
        .members
        .iter()
        .find(|m| m.member.host == host && m.member.port == port)
    {
        Some(m) => (Some(m.member.name.clone()), role(topo, m)),
        None => (None, "gone"),
    }
}

fn role(topo: &Topology, m: &crate::topology::MemberState) -> &'static str {
    if topo
        .primary
        .as_ref()
        .is_some_and(|p| std::sync::Arc::ptr_eq(p, &m.member))
    {
        return "primary";
    }
    match m.role {
        Role::Primary => "primary",
        Role::Replica => "replica",
        Role::Unknown => "unknown",
    }
}

/// Whole seconds and the microseconds past them, as PgBouncer's `wait` / `wait_us`.
fn secs_us(d: Duration) -> (u64, u32) {
    (d.as_secs(), d.subsec_micros())
}

fn wall(t: std::time::Instant) -> SystemTime {
    SystemTime::now() - t.elapsed()
}

#[derive(Default)]
struct Tally {
    active: u32,
    waiting: u32,
    held: u32,
    idle: u32,
    maxwait: Duration,
}

impl Tally {
    fn add(&mut self, state: ClientState, for_: Duration) {
        match state {
            ClientState::Active => self.active += 1,
            ClientState::Idle => self.idle += 1,
            ClientState::Waiting => self.waiting += 1,
            ClientState::Held => self.held += 1,
        }
        if matches!(state, ClientState::Waiting | ClientState::Held) {
            self.maxwait = self.maxwait.max(for_);
        }
    }
}

/// One row per pool (member × database × user). Each pooled client is
/// counted once: on the pool of its server, the one it waits for, or the
/// last one it used; a client that never had a server is counted on a row
/// of its database and user with no member.
pub(super) fn pools(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let cfg = shared.config.load();
    let paused = shared.pause.current();
    let mut pools = shared.pools.all();
    pools.sort_by(|a, b| {
        (&a.key.database, &a.key.user, &a.key.host, a.key.port).cmp(&(
            &b.key.database,
            &b.key.user,
            &b.key.host,
            b.key.port,
        ))
    });
    let mut by_pool: HashMap<PoolKey, Tally> = HashMap::new();
    let mut no_pool: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for c in shared.clients.all().iter().filter(|c| !c.spec.admin) {
        let (state, for_) = (c.state(), c.in_state_for());
        match c.pool().filter(|p| pools.iter().any(|q| q.key == p.key)) {
            Some(p) => by_pool.entry(p.key.clone()).or_default().add(state, for_),
            None => no_pool
                .entry((c.spec.database.clone(), c.spec.user.clone()))
                .or_default()
                .add(state, for_),
        }
    }
    let mut rs = ResultSet::new(&[
        ("database", Type::Text),
        ("user", Type::Text),
        ("cl_active", Type::Int4),
        ("cl_waiting", Type::Int4),
        ("cl_held", Type::Int4),
        ("cl_idle", Type::Int4),
        ("sv_active", Type::Int4),
        ("sv_idle", Type::Int4),
        ("sv_used", Type::Int4),
        ("maxwait", Type::Int4),
        ("maxwait_us", Type::Int4),
        ("pool_mode", Type::Text),
        ("paused", Type::Int4),
        ("member", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int4),
        ("role", Type::Text),
        ("pool_size", Type::Int4),
    ]);
    let mode_of = |user: &str| cfg.user(user).map(|u| pool_mode(u.pool_mode));
    let head = |rs: &mut ResultSet, db: &str, user: &str, t: &Tally, sv: [u32; 3], rest| {
        let (w, wus) = secs_us(t.maxwait);
        let mut row = vec![
            text(db),
            text(user),
            num(t.active),
            num(t.waiting),
            num(t.held),
            num(t.idle),
            num(sv[0]),
            num(sv[1]),
            num(sv[2]),
            num(w),
            num(wus),
            mode_of(user).map(str::to_owned),
            num(u8::from(paused.covers(db))),
        ];
        row.extend::<Vec<Option<String>>>(rest);
        rs.push(row);
    };
    for p in &pools {
        let t = by_pool.remove(&p.key).unwrap_or_default();
        let (idle, used) = idle_split(p);
        let active = p.stats.active.load(std::sync::atomic::Ordering::Relaxed) as u32;
        let (member, role) = member_of(&topo, &p.key.host, p.key.port);
        head(
            &mut rs,
            &p.key.database,
            &p.key.user,
            &t,
            [active, idle, used],
            vec![
                member,
                text(&p.key.host),
                num(p.key.port),
                text(role),
                num(p.settings().size),
            ],
        );
    }
    for ((db, user), t) in &no_pool {
        let size = cfg.user(user).map(|u| u.pool_size);
        head(
            &mut rs,
            db,
            user,
            t,
            [0, 0, 0],
            vec![None, None, None, None, size.and_then(num)],
        );
    }
    rs
}

/// Idle connections: fresh ones, and those a checkout will probe first
/// (PgBouncer's `sv_used`: idle long enough to need a check).
fn idle_split(p: &Pool) -> (u32, u32) {
    let conns = p.idle_conns();
    let used = conns
        .iter()
        .filter(|c| Pool::needs_check(c.last_used.elapsed()))
        .count() as u32;
    (conns.len() as u32 - used, used)
}

/// One row per connected client, admin console sessions included.
pub(super) fn clients(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let mut rs = ResultSet::new(&[
        ("type", Type::Text),
        ("user", Type::Text),
        ("database", Type::Text),
        ("state", Type::Text),
        ("addr", Type::Text),
        ("port", Type::Int4),
        ("local_addr", Type::Text),
        ("local_port", Type::Int4),
        ("connect_time", Type::Text),
        ("request_time", Type::Text),
        ("wait", Type::Int4),
        ("wait_us", Type::Int4),
        ("application_name", Type::Text),
        ("id", Type::Int8),
        ("link", Type::Int8),
        ("server", Type::Text),
        ("server_pid", Type::Int4),
        ("member", Type::Text),
        ("listener", Type::Text),
    ]);
    for c in shared.clients.all() {
        let state = c.state();
        let (wait, wait_us) = if matches!(state, ClientState::Waiting | ClientState::Held) {
            secs_us(c.in_state_for())
        } else {
            (0, 0)
        };
        let server = c.server();
        let pool = c.pool().filter(|_| server.is_some());
        let key = c.spec.cancel.current().filter(|_| server.is_some());
        let member = pool
            .as_ref()
            .and_then(|p| member_of(&topo, &p.key.host, p.key.port).0);
        rs.push(vec![
            text("C"),
            text(&c.spec.user),
            text(&c.spec.database),
            text(state.as_str()),
            text(c.spec.peer.ip().to_string()),
            num(c.spec.peer.port()),
            c.spec.local.map(|a| a.ip().to_string()),
            c.spec.local.and_then(|a| num(a.port())),
            time(c.connected_at),
            time(c.state_since()),
            num(wait),
            num(wait_us),
            text(&c.spec.application_name),
            num(c.id),
            server.and_then(|(id, _)| num(id)),
            pool.as_ref()
                .map(|p| format!("{}:{}", p.key.host, p.key.port)),
            key.and_then(|k| num(k.pid)),
            member,
            text(listener_name(c.spec.listener)),
        ]);
    }
    rs
}

fn listener_name(l: crate::config::ListenerRoute) -> &'static str {
    match l {
        crate::config::ListenerRoute::Auto => "auto",
        crate::config::ListenerRoute::Primary => "primary",
        crate::config::ListenerRoute::Replica => "replica",
    }
}

/// One row per server connection: those lent to clients, then the idle ones.
pub(super) fn servers(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let mut rs = ResultSet::new(&[
        ("type", Type::Text),
        ("user", Type::Text),
        ("database", Type::Text),
        ("state", Type::Text),
        ("addr", Type::Text),
        ("port", Type::Int4),
        ("connect_time", Type::Text),
        ("request_time", Type::Text),
        ("remote_pid", Type::Int4),
        ("link", Type::Int8),
        ("id", Type::Int8),
        ("member", Type::Text),
        ("role", Type::Text),
    ]);
    let mut rows = Vec::new();
    for c in shared.clients.all().iter().filter(|c| !c.spec.admin) {
        let (Some((id, created)), Some(p)) = (c.server(), c.pool()) else {
            continue;
        };
        let (member, role) = member_of(&topo, &p.key.host, p.key.port);
        rows.push((
            id,
            vec![
                text("S"),
                text(&p.key.user),
                text(&p.key.database),
                text("active"),
                text(&p.key.host),
                num(p.key.port),
                time(created),
                time(c.state_since()),
                c.spec.cancel.current().and_then(|k| num(k.pid)),
                num(c.id),
                num(id),
                member,
                text(role),
            ],
        ));
    }
    for p in shared.pools.all() {
        let (member, role) = member_of(&topo, &p.key.host, p.key.port);
        for conn in p.idle_conns() {
            let state = if Pool::needs_check(conn.last_used.elapsed()) {
                "used"
            } else {
                "idle"
            };
            rows.push((
                conn.id,
                vec![
                    text("S"),
                    text(&p.key.user),
                    text(&p.key.database),
                    text(state),
                    text(&p.key.host),
                    num(p.key.port),
                    time(wall(conn.created)),
                    time(wall(conn.last_used)),
                    num(conn.key.pid),
                    None,
                    num(conn.id),
                    member.clone(),
                    text(role),
                ],
            ));
        }
    }
    rows.sort_by_key(|(id, _)| *id);
    for (_, row) in rows {
        rs.push(row);
    }
    rs
}

fn counter_vec_sum(v: &prometheus::IntCounterVec) -> u64 {
    v.collect()
        .iter()
        .flat_map(|mf| mf.get_metric())
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

fn micros(secs: f64) -> u64 {
    (secs * 1e6) as u64
}

/// Totals since start, from the metrics: pgkeel counts by server role, not
/// by database, so this is one row (PgBouncer's `SHOW TOTALS`, in columns).
pub(super) fn stats(shared: &Shared) -> ResultSet {
    let m = &shared.metrics;
    let (xp, xr) = (m.transactions[0].get(), m.transactions[1].get());
    let (qp, qr) = (m.queries[0].get(), m.queries[1].get());
    let cols: Vec<(&'static str, u64)> = vec![
        ("total_xact_count", xp + xr),
        ("total_query_count", qp + qr),
        ("primary_xact_count", xp),
        ("replica_xact_count", xr),
        ("primary_query_count", qp),
        ("replica_query_count", qr),
        // PgBouncer's names: bytes from and to clients, µs spent in requests.
        ("total_received", m.client_bytes_received_total.get()),
        ("total_sent", m.client_bytes_sent_total.get()),
        (
            "total_query_time",
            micros(m.query_seconds.iter().map(|h| h.get_sample_sum()).sum()),
        ),
        (
            "total_wait_time",
            micros(m.pool_wait_seconds.get_sample_sum()),
        ),
        ("total_wait_count", m.pool_wait_seconds.get_sample_count()),
        ("total_hold_time", micros(m.hold_seconds.get_sample_sum())),
        ("total_hold_count", m.hold_seconds.get_sample_count()),
        ("total_client_connections", m.client_connections_total.get()),
        (
            "total_login_failures",
            counter_vec_sum(&m.client_login_failures_total),
        ),
        ("total_errors", counter_vec_sum(&m.errors_total)),
        (
            "total_server_errors",
            counter_vec_sum(&m.server_errors_total),
        ),
        ("total_cancel_requests", m.cancel_requests_total.get()),
        ("total_retried_statements", m.retried_statements_total.get()),
        ("total_failovers", counter_vec_sum(&m.failovers_total)),
        ("total_failover_errors", m.failover_errors()),
        (
            "total_config_reloads",
            counter_vec_sum(&m.config_reloads_total),
        ),
        ("clients_connected", m.clients_connected.get().max(0) as u64),
        ("clients_held", m.held_clients.get().max(0) as u64),
        (
            "server_connections",
            m.server_connections.get().max(0) as u64,
        ),
    ];
    let names: Vec<(&'static str, Type)> = cols.iter().map(|(n, _)| (*n, Type::Int8)).collect();
    let mut rs = ResultSet::new(&names);
    rs.push(cols.iter().map(|(_, v)| num(v)).collect());
    rs
}

/// `0/16B3748`, as PostgreSQL writes an LSN.
fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// One row per member.
pub(super) fn topology(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let mut rs = ResultSet::new(&[
        ("member", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int4),
        ("role", Type::Text),
        ("state", Type::Text),
        ("healthy", Type::Bool),
        ("primary", Type::Bool),
        ("leader", Type::Bool),
        ("streaming", Type::Bool),
        ("lag_bytes", Type::Int8),
        ("replay_lag", Type::Float8),
        ("lsn", Type::Text),
        ("last_error", Type::Text),
    ]);
    for m in &topo.members {
        let state = match &m.patroni {
            Some(p) => p.state.clone(),
            None if m.healthy => "up".into(),
            None => "down".into(),
        };
        rs.push(vec![
            text(&m.member.name),
            text(&m.member.host),
            num(m.member.port),
            text(role(&topo, m)),
            text(state),
            boolean(m.healthy),
            boolean(
                topo.primary
                    .as_ref()
                    .is_some_and(|p| std::sync::Arc::ptr_eq(p, &m.member)),
            ),
            boolean(topo.leader.as_deref() == Some(m.member.name.as_str())),
            boolean(m.streaming),
            m.lag_bytes.and_then(num),
            m.replay_lag.and_then(num),
            m.lsn.map(lsn),
            m.last_error.clone(),
        ]);
    }
    rs
}

fn epoch_time(secs: f64) -> Option<String> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .and_then(|d| time(UNIX_EPOCH + d))
}

/// The last failovers, oldest first (the last may still be going on).
pub(super) fn failovers(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("kind", Type::Text),
        ("started_at", Type::Text),
        ("ended_at", Type::Text),
        ("outage_ms", Type::Int8),
        ("old_primary", Type::Text),
        ("new_primary", Type::Text),
        ("held_clients_peak", Type::Int8),
        ("errors_returned", Type::Int8),
    ]);
    for f in shared.topology.failovers() {
        rs.push(vec![
            text(f.kind),
            epoch_time(f.started_at),
            f.ended_at.and_then(epoch_time),
            f.outage_ms.and_then(num),
            f.old_primary,
            f.new_primary,
            num(f.held_clients_peak),
            num(f.errors_returned),
        ]);
    }
    rs
}

pub(super) fn version() -> ResultSet {
    let mut rs = ResultSet::new(&[("version", Type::Text)]);
    rs.push(vec![text(format!("pgkeel {}", env!("CARGO_PKG_VERSION")))]);
    rs
}

pub(super) fn help() -> ResultSet {
    let mut rs = ResultSet::new(&[("command", Type::Text), ("description", Type::Text)]);
    for (c, d) in [
        (
            "SHOW POOLS",
            "pools (member × database × user): clients and server connections by state",
        ),
        ("SHOW CLIENTS", "connected clients, with their id for KILL"),
        ("SHOW SERVERS", "server connections, lent and idle"),
        (
            "SHOW STATS",
            "totals since start: transactions, queries, waits, holds, errors",
        ),
        ("SHOW TOPOLOGY", "members, roles, health, lag, the leader"),
        ("SHOW FAILOVERS", "the last failovers"),
        (
            "SHOW CONFIG",
            "the running configuration (passwords masked)",
        ),
        ("SHOW VERSION", "pgkeel's version"),
        ("SHOW HELP", "this list"),
        ("RELOAD", "reload the configuration file (as SIGHUP)"),
        (
            "PAUSE [db]",
            "hold new transactions (of one database, or all) until RESUME",
        ),
        ("RESUME [db]", "release the clients PAUSE holds"),
        ("KILL <id>", "end a client's connection (FATAL 57P01)"),
    ] {
        rs.push(vec![text(c), text(d)]);
    }
    rs
}

const MASK: &str = "********";

/// Never show a password: keys named like one, and passwords inside URLs.
fn mask(key: &str, v: Option<String>) -> Option<String> {
    let last = key.rsplit('.').next().unwrap_or(key);
    if last.contains("password") || last.contains("secret") {
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
pub(super) fn config(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let mut rs = ResultSet::new(&[
        ("key", Type::Text),
        ("value", Type::Text),
        ("default", Type::Text),
        ("changeable", Type::Text),
    ]);
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

    #[test]
    fn lsn_is_written_like_postgres() {
        assert_eq!(lsn(0x016B_3748), "0/16B3748");
        assert_eq!(lsn((3 << 32) | 0x10), "3/10");
    }
}
