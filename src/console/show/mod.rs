//! The SHOW commands' result sets, by family: `pools.rs` (POOLS,
//! MEMBER_POOLS, DATABASES), `conns.rs` (CLIENTS, SERVERS), `stats.rs`
//! (STATS, STATS_TOTALS, STATS_AVERAGES, TOTALS), `lists.rs` (LISTS, USERS,
//! MEM), `cluster.rs` (TOPOLOGY, FAILOVERS), `config.rs` (CONFIG).
//!
//! Where PgBouncer has the command, its columns come first, with its names,
//! order and types (PgBouncer 1.18); pgkeel's own columns follow. Where
//! PgBouncer is per database or per (database, user), so is pgkeel; the
//! per-member view is its own command (MEMBER_POOLS, TOPOLOGY).

pub(super) mod cluster;
pub(super) mod config;
pub(super) mod conns;
pub(super) mod lists;
pub(super) mod pools;
pub(super) mod stats;

use std::time::{Duration, SystemTime};

use super::{text, ResultSet, Type};
use crate::clients::ClientState;
use crate::config::PoolMode;
use crate::topology::{MemberState, Role, Topology};

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

fn is_primary(topo: &Topology, m: &MemberState) -> bool {
    topo.primary
        .as_ref()
        .is_some_and(|p| std::sync::Arc::ptr_eq(p, &m.member))
}

fn role(topo: &Topology, m: &MemberState) -> &'static str {
    if is_primary(topo, m) {
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

/// Clients of one pool by state.
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

    fn merge(&mut self, o: &Tally) {
        self.active += o.active;
        self.waiting += o.waiting;
        self.held += o.held;
        self.idle += o.idle;
        self.maxwait = self.maxwait.max(o.maxwait);
    }
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
            "pools per database and user: clients and server connections by state",
        ),
        (
            "SHOW MEMBER_POOLS",
            "pools per member × database × user, with the member's role",
        ),
        (
            "SHOW DATABASES",
            "databases clients use, with the primary they write to",
        ),
        ("SHOW CLIENTS", "connected clients, with their id for KILL"),
        ("SHOW SERVERS", "server connections, lent and idle"),
        (
            "SHOW STATS",
            "per database: totals since start and averages of the last period",
        ),
        ("SHOW STATS_TOTALS", "per database: totals since start"),
        (
            "SHOW STATS_AVERAGES",
            "per database: averages of the last period (60 s)",
        ),
        (
            "SHOW TOTALS",
            "totals of all databases, and pgkeel's own counters",
        ),
        (
            "SHOW LISTS",
            "how many databases, users, pools, clients, servers",
        ),
        ("SHOW USERS", "configured users"),
        ("SHOW MEM", "what pgkeel keeps per object"),
        ("SHOW TOPOLOGY", "members, roles, health, lag, the leader"),
        ("SHOW FAILOVERS", "the last failovers"),
        (
            "SHOW PEERS",
            "the pgkeel instances registered for this Patroni scope in etcd",
        ),
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
        (
            "RECONNECT [db]",
            "replace server connections: idle ones now, lent ones after their transaction",
        ),
        (
            "WAIT_CLOSE [db]",
            "wait until the connections RECONNECT replaces are closed",
        ),
        ("DISABLE db", "refuse new logins to db (55000)"),
        ("ENABLE db", "let new logins to db in again"),
        (
            "KILL db",
            "end every client of db (FATAL 57P01) and pause it until RESUME",
        ),
        ("KILL <id>", "end one client's connection (FATAL 57P01)"),
        ("SHUTDOWN", "stop pgkeel (as SIGTERM)"),
    ] {
        rs.push(vec![text(c), text(d)]);
    }
    rs
}
