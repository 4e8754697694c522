//! Decides where each transaction goes: the primary, a replica, or any
//! member, and which one.
//!
//! `decide` looks at the request at the head of a client's buffer (one
//! simple Query, or extended-protocol messages up to Sync) when the client
//! has no server: the listener's fixed route, session pooling, hints,
//! `[[query_rules]]`, then the SQL itself (`classify`). `pick` turns a route
//! into a member of the current topology: replicas that stream, are within
//! `max_replica_lag_*`, and (for read-your-writes) have replayed the
//! client's last commit, balanced by weight.
//!
//! A `Router` is built from one `Config` and never changes; a reload builds
//! a new one (its classification cache starts empty, since rules and
//! function lists may have changed).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use regex::bytes::{Regex, RegexBuilder};

use crate::classify::{self, FunctionPolicy, Hint, Kind};
pub use crate::config::Why;
use crate::config::{Balance, Config, Fallback, ListenerRoute, PoolMode, Route, RoutingConfig};
use crate::metrics::Metrics;
use crate::protocol;
use crate::topology::{Member, MemberState, Topology};

/// What to do with the request at the head of a client's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Route {
        route: Route,
        why: Why,
        /// What the SQL does (`Write` when not classified).
        kind: Kind,
    },
    /// A bare `BEGIN`: answer it now and route with the next statement,
    /// which tells whether the transaction only reads.
    DeferBegin,
    /// COMMIT/ROLLBACK of a deferred BEGIN nothing followed: answer it now.
    LocalEnd,
}

/// The facts about a session that routing depends on.
pub struct SessionView<'a> {
    /// The client's address (for a rule's log line).
    pub peer: std::net::SocketAddr,
    pub user: &'a str,
    pub database: &'a str,
    pub application_name: &'a str,
    pub listener: ListenerRoute,
    pub pool_mode: PoolMode,
    /// `default_transaction_read_only` is on for the session.
    pub default_read_only: bool,
    /// A BEGIN was answered and not yet sent to a server.
    pub deferred_begin: bool,
    /// The client's named prepared statements (transaction mode), so a
    /// Bind of one routes by its text.
    pub statements: Option<&'a dyn NamedStatements>,
}

/// The texts of a client's named prepared statements, by the client's own
/// names. The session's statement map implements it; the router only reads.
pub trait NamedStatements {
    fn query_of(&self, name: &[u8]) -> Option<&[u8]>;
}

struct Rule {
    pattern: Option<Regex>,
    user: Option<String>,
    database: Option<String>,
    application_name: Option<String>,
    route: Route,
    log: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: Kind,
    /// Bit i: rule i's pattern matches (or it has none).
    pattern_hits: u128,
}

pub struct Router {
    routing: RoutingConfig,
    policy: FunctionPolicy,
    rules: Vec<Rule>,
    cache: quick_cache::sync::Cache<Box<[u8]>, Entry>,
    /// The same by a statement's exact text, for texts without literals or
    /// comments (prepared and extended-protocol statements, BEGIN, COMMIT):
    /// those recur byte for byte, and a hit skips normalizing.
    exact: quick_cache::sync::Cache<Box<[u8]>, (Entry, Option<Hint>)>,
    next: AtomicUsize,
}

/// The outcome of `pick`.
pub enum Picked {
    Member(Arc<Member>),
    /// Nothing usable now; the reason says what is missing.
    Nothing(&'static str),
}

impl Router {
    pub fn new(cfg: &Config) -> Router {
        let r = &cfg.routing;
        let rules = cfg
            .query_rules
            .iter()
            .map(|q| Rule {
                // Validated with the config.
                pattern: q
                    .pattern
                    .as_ref()
                    .and_then(|p| RegexBuilder::new(p).case_insensitive(true).build().ok()),
                user: q.user.clone(),
                database: q.database.clone(),
                application_name: q.application_name.clone(),
                route: q.route,
                log: q.log,
            })
            .collect();
        Router {
            policy: FunctionPolicy::new(
                &r.primary_functions,
                &r.replica_functions,
                r.unknown_functions == Route::Primary,
            ),
            rules,
            cache: quick_cache::sync::Cache::new(r.classify_cache_size),
            exact: quick_cache::sync::Cache::new(r.classify_cache_size),
            next: AtomicUsize::new(0),
            routing: r.clone(),
        }
    }

    pub fn settings(&self) -> &RoutingConfig {
        &self.routing
    }

    /// The classification and rule hits of one statement text, from the
    /// cache when the same text, or its normalized form, was seen before.
    fn lookup(
        &self,
        text: &[u8],
        scratch: &mut Vec<u8>,
        metrics: &Metrics,
    ) -> (Entry, Option<Hint>) {
        if let Some(hit) = self.exact.get(text) {
            metrics.classify_cache_hits_total.inc();
            return hit;
        }
        let key = classify::normalize_key(text, scratch);
        let hint = key.hint;
        // Everything in the entry and the hint follows from the text alone.
        let remember = |e: Entry| {
            if !key.literals {
                self.exact.insert(text.into(), (e, hint));
            }
        };
        if let Some(e) = self.cache.get(&scratch[..]) {
            metrics.classify_cache_hits_total.inc();
            remember(e);
            return (e, hint);
        }
        metrics.classify_cache_misses_total.inc();
        let kind = match std::str::from_utf8(text) {
            Ok(sql) => classify::classify(sql, &self.policy),
            Err(_) => Kind::Write,
        };
        let mut pattern_hits = 0u128;
        for (i, r) in self.rules.iter().enumerate() {
            if r.pattern.as_ref().is_none_or(|p| p.is_match(scratch)) {
                pattern_hits |= 1 << i;
            }
        }
        let e = Entry { kind, pattern_hits };
        if kind.cacheable() {
            self.cache.insert(scratch.as_slice().into(), e);
            remember(e);
        }
        (e, hint)
    }

    /// Routes the request at the head of `frames` (whole messages only).
    pub fn decide(
        &self,
        s: &SessionView,
        frames: &[u8],
        scratch: &mut Vec<u8>,
        metrics: &Metrics,
    ) -> Decision {
        let fixed = |route, why| Decision::Route {
            route,
            why,
            kind: Kind::Write,
        };
        match s.listener {
            ListenerRoute::Primary => return fixed(Route::Primary, Why::Listener),
            ListenerRoute::Replica => return fixed(Route::Replica, Why::Listener),
            ListenerRoute::Auto => {}
        }
        if s.pool_mode == PoolMode::Session {
            return fixed(Route::Primary, Why::SessionMode);
        }
        if !self.routing.read_write_split && self.rules.is_empty() {
            return fixed(Route::Primary, Why::SplitOff);
        }
        let mut kind: Option<Kind> = None;
        let mut hint = None;
        let mut hits = u128::MAX;
        let mut first_text: &[u8] = &[];
        // A Bind of a statement not parsed in this request: its text is
        // unknown here, so the request needs the primary.
        let mut parsed_here = false;
        let mut rest = frames;
        while let Some(Ok((typ, len))) = protocol::header(rest) {
            if rest.len() < len {
                break;
            }
            let frame = &rest[..len];
            rest = &rest[len..];
            let text = match typ {
                b'Q' | b'P' => {
                    parsed_here |= typ == b'P';
                    Some(protocol::query_text(typ, frame))
                }
                b'B' => match protocol::bind_statement_name(frame) {
                    // A statement of the client's: routed by its text.
                    Some(name) if !name.is_empty() => s.statements.and_then(|p| p.query_of(name)),
                    // The unnamed statement parsed in this request.
                    Some(_) if parsed_here => continue,
                    _ => None,
                },
                b'D' | b'E' | b'C' | b'H' => continue,
                b'S' => break,
                _ => None,
            };
            // No text (a Bind of a statement unknown here, a FunctionCall):
            // the request needs the primary.
            let k = match text {
                Some(text) => {
                    let (e, h) = self.lookup(text, scratch, metrics);
                    hint = hint.or(h);
                    hits &= e.pattern_hits;
                    if first_text.is_empty() {
                        first_text = text;
                    }
                    e.kind
                }
                None => Kind::Write,
            };
            kind = Some(kind.map_or(k, |acc| acc.then(k)));
            if typ == b'Q' {
                break;
            }
        }
        let kind = kind.unwrap_or(Kind::Write);
        if let Some(h) = hint.filter(|_| self.routing.read_write_split) {
            let route = match h {
                Hint::Primary => Route::Primary,
                Hint::Replica => Route::Replica,
                Hint::Any => Route::Any,
            };
            return Decision::Route {
                route,
                why: Why::Hint,
                kind,
            };
        }
        for (i, r) in self.rules.iter().enumerate() {
            let matches = hits & (1 << i) != 0
                && r.user.as_deref().is_none_or(|u| u == s.user)
                && r.database.as_deref().is_none_or(|d| d == s.database)
                && r.application_name
                    .as_deref()
                    .is_none_or(|a| a == s.application_name);
            if matches {
                if r.log {
                    let sql = crate::querylog::loggable(first_text);
                    tracing::info!(target: "pgkeel::querylog", peer = %s.peer, user = s.user, database = s.database, rule = i, route = r.route.name(), query = sql.as_ref(), "query rule matched");
                }
                return Decision::Route {
                    route: r.route,
                    why: Why::Rule,
                    kind,
                };
            }
        }
        if !self.routing.read_write_split {
            return fixed(Route::Primary, Why::SplitOff);
        }
        let route = |route, why| Decision::Route { route, why, kind };
        if s.deferred_begin {
            return match kind {
                Kind::End if frames.first() == Some(&b'Q') => Decision::LocalEnd,
                Kind::SetTransactionReadOnly => route(Route::Replica, Why::ReadOnlyTransaction),
                Kind::Read | Kind::Begin { .. } if s.default_read_only => {
                    route(Route::Replica, Why::ReadOnlyTransaction)
                }
                _ => route(Route::Primary, Why::Transaction),
            };
        }
        match kind {
            Kind::Read => route(Route::Replica, Why::Read),
            Kind::Begin {
                read_only: true, ..
            }
            | Kind::SetTransactionReadOnly => route(Route::Replica, Why::ReadOnlyTransaction),
            Kind::Begin { .. } if s.default_read_only => {
                route(Route::Replica, Why::ReadOnlyTransaction)
            }
            // Only a simple Query can be answered "BEGIN" here: a Parse of
            // BEGIN (pgbench -M prepared) wants ParseComplete.
            Kind::Begin { bare: true, .. } if frames.first() == Some(&b'Q') => Decision::DeferBegin,
            Kind::Begin { .. } => route(Route::Primary, Why::Transaction),
            Kind::End | Kind::SetDefaultReadOnly(_) | Kind::Write => {
                route(Route::Primary, Why::Write)
            }
        }
    }

    /// A member for `route` in `topo`, or why there is none now. `min_lsn`
    /// (read-your-writes) keeps replicas that have not replayed it out;
    /// `load` gives a member's busy server connections for least_connections.
    pub fn pick(
        &self,
        topo: &Topology,
        route: Route,
        drain: Duration,
        min_lsn: Option<u64>,
        load: impl Fn(&Arc<Member>) -> usize,
    ) -> Picked {
        let primary = || match topo.usable_primary(drain) {
            Some(p) => Picked::Member(p.clone()),
            None => Picked::Nothing("no primary is available"),
        };
        if route == Route::Primary {
            return primary();
        }
        let mut behind = false;
        let mut candidates: Vec<(&Arc<Member>, u32)> = Vec::with_capacity(topo.members.len());
        for m in &topo.members {
            let is_primary = topo
                .primary
                .as_ref()
                .is_some_and(|p| Arc::ptr_eq(p, &m.member));
            let usable = if is_primary {
                route == Route::Any && topo.usable_primary(drain).is_some()
            } else if self.replica_usable(m) {
                if min_lsn.is_some_and(|want| m.lsn.is_none_or(|l| l < want)) {
                    behind = true;
                    false
                } else {
                    true
                }
            } else {
                false
            };
            let weight = self
                .routing
                .weights
                .get(&m.member.name)
                .copied()
                .unwrap_or(1);
            if usable && weight > 0 {
                candidates.push((&m.member, weight));
            }
        }
        if candidates.is_empty() {
            // The primary always has the client's writes.
            if behind || self.routing.replica_fallback == Fallback::Primary {
                return primary();
            }
            return Picked::Nothing("no replica is available");
        }
        let total: u32 = candidates.iter().map(|c| c.1).sum();
        let chosen = match self.routing.balance {
            Balance::RoundRobin => {
                let n = self.next.fetch_add(1, Ordering::Relaxed) as u64 % total as u64;
                weighted(&candidates, n as u32)
            }
            Balance::Random => weighted(&candidates, rand::random_range(0..total)),
            Balance::LeastConnections => {
                // Fewest busy connections per unit of weight; ties rotate.
                let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
                let mut best = candidates[start].0;
                let mut best_load = f64::MAX;
                for i in 0..candidates.len() {
                    let (m, w) = candidates[(start + i) % candidates.len()];
                    let l = load(m) as f64 / w as f64;
                    if l < best_load {
                        best = m;
                        best_load = l;
                    }
                }
                best
            }
        };
        Picked::Member(chosen.clone())
    }

    /// A replica that may take reads now: streaming, healthy, not tagged
    /// noloadbalance, and within the configured lag.
    fn replica_usable(&self, m: &MemberState) -> bool {
        m.serves_reads()
            && self
                .routing
                .max_replica_lag_bytes
                .is_none_or(|max| m.lag_bytes.is_none_or(|l| l <= max.0))
            && self
                .routing
                .max_replica_lag_time
                .is_none_or(|max| m.replay_lag.is_none_or(|s| s <= max.0.as_secs_f64()))
    }
}

/// The candidate whose cumulative weight range holds `n` (< total weight).
fn weighted<'a>(candidates: &[(&'a Arc<Member>, u32)], mut n: u32) -> &'a Arc<Member> {
    for (m, w) in candidates {
        if n < *w {
            return m;
        }
        n -= w;
    }
    candidates[candidates.len() - 1].0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Role;

    fn router(extra: &str) -> Router {
        let cfg = Config::from_toml_str(&format!(
            "[[users]]\nname = \"app\"\npassword = \"pw\"\n[[servers]]\nhost = \"127.0.0.1\"\n{extra}"
        ))
        .unwrap();
        Router::new(&cfg)
    }

    fn view() -> SessionView<'static> {
        SessionView {
            peer: "127.0.0.1:5000".parse().unwrap(),
            user: "app",
            database: "db",
            application_name: "",
            listener: ListenerRoute::Auto,
            pool_mode: PoolMode::Transaction,
            default_read_only: false,
            deferred_begin: false,
            statements: None,
        }
    }

    fn q(sql: &str) -> Vec<u8> {
        let mut b = bytes::BytesMut::new();
        protocol::put_query(&mut b, sql);
        b.to_vec()
    }

    fn decide(r: &Router, s: &SessionView, frames: &[u8]) -> Decision {
        r.decide(s, frames, &mut Vec::new(), &Metrics::new())
    }

    fn route_of(d: Decision) -> Option<(Route, Why)> {
        match d {
            Decision::Route { route, why, .. } => Some((route, why)),
            _ => None,
        }
    }

    #[test]
    fn reads_go_to_replicas_and_the_rest_to_the_primary() {
        let r = router("");
        let s = view();
        assert_eq!(
            route_of(decide(&r, &s, &q("SELECT 1"))),
            Some((Route::Replica, Why::Read))
        );
        assert_eq!(
            route_of(decide(&r, &s, &q("INSERT INTO t VALUES (1)"))),
            Some((Route::Primary, Why::Write))
        );
        assert_eq!(decide(&r, &s, &q("BEGIN")), Decision::DeferBegin);
        // A Bind of a named statement routes by the statement's text.
        struct Named(Vec<(&'static str, &'static str)>);
        impl NamedStatements for Named {
            fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
                let found = self.0.iter().find(|(n, _)| n.as_bytes() == name);
                found.map(|(_, sql)| sql.as_bytes())
            }
        }
        let prepared = Named(vec![("r", "SELECT 1"), ("w", "DELETE FROM t")]);
        let bind = |name: &str| {
            let body = format!("\0{name}\0\0\0\0\0\0\0");
            let mut f = vec![b'B'];
            f.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            f.extend_from_slice(body.as_bytes());
            f.extend_from_slice(b"S\0\0\0\x04");
            f
        };
        let with = SessionView {
            statements: Some(&prepared),
            ..view()
        };
        assert_eq!(
            route_of(decide(&r, &with, &bind("r"))),
            Some((Route::Replica, Why::Read))
        );
        assert_eq!(
            route_of(decide(&r, &with, &bind("w"))),
            Some((Route::Primary, Why::Write))
        );
        assert_eq!(
            route_of(decide(&r, &s, &bind("r"))),
            Some((Route::Primary, Why::Write)),
            "unknown statement: the primary"
        );
        let parse_begin = [&b"P\0\0\0\x0fP_0\0BEGIN;\0\0\0"[..], b"S\0\0\0\x04"].concat();
        assert_eq!(
            route_of(decide(&r, &s, &parse_begin)),
            Some((Route::Primary, Why::Transaction)),
            "a prepared BEGIN is not answered by pgkeel"
        );
        assert_eq!(
            route_of(decide(&r, &s, &q("BEGIN READ ONLY"))),
            Some((Route::Replica, Why::ReadOnlyTransaction))
        );
        let deferred = SessionView {
            deferred_begin: true,
            ..view()
        };
        assert_eq!(
            route_of(decide(&r, &deferred, &q("SELECT 1"))),
            Some((Route::Primary, Why::Transaction))
        );
        assert_eq!(
            route_of(decide(&r, &deferred, &q("SET TRANSACTION READ ONLY"))),
            Some((Route::Replica, Why::ReadOnlyTransaction))
        );
        assert_eq!(decide(&r, &deferred, &q("COMMIT")), Decision::LocalEnd);
        let session = SessionView {
            pool_mode: PoolMode::Session,
            ..view()
        };
        assert_eq!(
            route_of(decide(&r, &session, &q("SELECT 1"))),
            Some((Route::Primary, Why::SessionMode))
        );
        let replica_port = SessionView {
            listener: ListenerRoute::Replica,
            ..view()
        };
        assert_eq!(
            route_of(decide(&r, &replica_port, &q("INSERT INTO t VALUES (1)"))),
            Some((Route::Replica, Why::Listener))
        );
    }

    #[test]
    fn hints_and_rules_override_the_sql() {
        let r = router(
            "[[query_rules]]\npattern = \"FROM reports\"\nroute = \"replica\"\n\
             [[query_rules]]\nuser = \"app\"\npattern = \"^select\"\nroute = \"primary\"\n",
        );
        let s = view();
        assert_eq!(
            route_of(decide(&r, &s, &q("/* pgkeel: primary */ SELECT 1"))),
            Some((Route::Primary, Why::Hint))
        );
        assert_eq!(
            route_of(decide(&r, &s, &q("UPDATE x SET a = 1 -- pgkeel: replica"))),
            Some((Route::Replica, Why::Hint))
        );
        assert_eq!(
            route_of(decide(&r, &s, &q("select * from reports where id = 3"))),
            Some((Route::Replica, Why::Rule))
        );
        assert_eq!(
            route_of(decide(&r, &s, &q("SELECT 2"))),
            Some((Route::Primary, Why::Rule))
        );
        let other = SessionView {
            user: "bob",
            ..view()
        };
        assert_eq!(
            route_of(decide(&r, &other, &q("SELECT 2"))),
            Some((Route::Replica, Why::Read))
        );
    }

    #[test]
    fn a_text_seen_before_routes_the_same_from_its_exact_entry() {
        let r = router("[[query_rules]]\npattern = \"FROM reports\"\nroute = \"primary\"\n");
        let s = view();
        let m = Metrics::new();
        let mut scratch = Vec::new();
        for sql in [
            "SELECT a FROM t WHERE id = $1",
            "SELECT a FROM reports WHERE id = $1",
            "BEGIN",
            "SET default_transaction_read_only = on",
            "/* pgkeel: primary */ SELECT 1",
            "SELECT 2",
        ] {
            let first = r.decide(&s, &q(sql), &mut scratch, &m);
            for _ in 0..2 {
                assert_eq!(r.decide(&s, &q(sql), &mut scratch, &m), first, "{sql}");
            }
        }
        // Only texts that recur byte for byte are kept by their bytes: no
        // literal, no comment, and not a SET of the read-only default.
        let kept = |sql: &str| r.exact.get(sql.as_bytes()).is_some();
        assert!(kept("SELECT a FROM t WHERE id = $1"));
        assert!(kept("BEGIN"));
        assert!(!kept("SELECT 2"));
        assert!(!kept("/* pgkeel: primary */ SELECT 1"));
        assert!(!kept("SET default_transaction_read_only = on"));
    }

    #[test]
    fn extended_requests_are_routed_as_a_whole() {
        let r = router("");
        let s = view();
        let msg = |t: u8, body: &[u8]| {
            let mut v = vec![t];
            v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
            v.extend_from_slice(body);
            v
        };
        let read = [
            msg(b'P', b"\0SELECT $1::int\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
            msg(b'Q', b"DELETE FROM t\0"),
        ]
        .concat();
        assert_eq!(
            route_of(decide(&r, &s, &read)),
            Some((Route::Replica, Why::Read)),
            "stops at Sync"
        );
        let write = [
            msg(b'P', b"\0SELECT 1\0\0\0"),
            msg(b'P', b"\0DELETE FROM t\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        assert_eq!(
            route_of(decide(&r, &s, &write)),
            Some((Route::Primary, Why::Write))
        );
        let named = [
            msg(b'B', b"\0stmt1\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        assert_eq!(
            route_of(decide(&r, &s, &named)),
            Some((Route::Primary, Why::Write))
        );
    }

    fn member(name: &str, role: Role, lag: Option<u64>, lsn: Option<u64>) -> MemberState {
        MemberState {
            member: Arc::new(Member {
                name: name.into(),
                host: "127.0.0.1".into(),
                port: 1,
            }),
            role,
            healthy: true,
            last_error: None,
            patroni: None,
            lag_bytes: lag,
            lsn,
            streaming: role == Role::Replica,
            replay_lag: Some(0.0),
        }
    }

    fn topo(members: Vec<MemberState>) -> Topology {
        let primary = members
            .iter()
            .find(|m| m.role == Role::Primary)
            .map(|m| m.member.clone());
        Topology {
            members,
            primary,
            ..Topology::default()
        }
    }

    fn name(p: Picked) -> String {
        match p {
            Picked::Member(m) => m.name.clone(),
            Picked::Nothing(why) => why.to_string(),
        }
    }

    #[test]
    fn replicas_are_balanced_by_weight_and_skipped_when_behind() {
        let r = router("[routing]\nmax_replica_lag_bytes = \"1MB\"\nweights = { r2 = 3 }\n");
        let t = topo(vec![
            member("p", Role::Primary, None, Some(100)),
            member("r1", Role::Replica, Some(0), Some(100)),
            member("r2", Role::Replica, Some(0), Some(90)),
            member("r3", Role::Replica, Some(2 << 20), Some(100)),
        ]);
        let d = Duration::ZERO;
        let picks: Vec<String> = (0..8)
            .map(|_| name(r.pick(&t, Route::Replica, d, None, |_| 0)))
            .collect();
        assert_eq!(picks.iter().filter(|n| *n == "r1").count(), 2);
        assert_eq!(picks.iter().filter(|n| *n == "r2").count(), 6);
        assert_eq!(name(r.pick(&t, Route::Primary, d, None, |_| 0)), "p");
        // Read-your-writes: only r1 has replayed LSN 95; past 100, the primary.
        for _ in 0..4 {
            assert_eq!(name(r.pick(&t, Route::Replica, d, Some(95), |_| 0)), "r1");
        }
        assert_eq!(name(r.pick(&t, Route::Replica, d, Some(101), |_| 0)), "p");
    }

    #[test]
    fn no_replica_falls_back_or_waits() {
        let t = topo(vec![member("p", Role::Primary, None, Some(1))]);
        let d = Duration::ZERO;
        assert_eq!(
            name(router("").pick(&t, Route::Replica, d, None, |_| 0)),
            "p"
        );
        let strict = router("[routing]\nreplica_fallback = \"error\"\n");
        assert_eq!(
            name(strict.pick(&t, Route::Replica, d, None, |_| 0)),
            "no replica is available"
        );
        assert_eq!(name(strict.pick(&t, Route::Any, d, None, |_| 0)), "p");
    }

    #[test]
    fn least_connections_prefers_the_idlest() {
        let r = router("[routing]\nbalance = \"least_connections\"\n");
        let t = topo(vec![
            member("p", Role::Primary, None, None),
            member("r1", Role::Replica, None, None),
            member("r2", Role::Replica, None, None),
        ]);
        for _ in 0..3 {
            let p = r.pick(&t, Route::Replica, Duration::ZERO, None, |m| {
                if m.name == "r1" {
                    5
                } else {
                    1
                }
            });
            assert_eq!(name(p), "r2");
        }
    }
}
