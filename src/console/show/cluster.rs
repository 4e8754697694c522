//! SHOW TOPOLOGY, SHOW FAILOVERS and SHOW PEERS: pgkeel's own view of the
//! cluster, and of the other pgkeel instances serving it.

use std::time::{Duration, UNIX_EPOCH};

use super::super::{boolean, num, text, time, ResultSet, Type};
use super::{is_primary, role};
use crate::shared::Shared;

/// `0/16B3748`, as PostgreSQL writes an LSN.
fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xffff_ffff)
}

/// One row per member.
pub(in crate::console) fn topology(shared: &Shared) -> ResultSet {
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
            boolean(is_primary(&topo, m)),
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
pub(in crate::console) fn failovers(shared: &Shared) -> ResultSet {
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

/// The pgkeel instances registered for this scope (etcd mode; empty in
/// static mode).
pub(in crate::console) fn peers(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("name", Type::Text),
        ("address", Type::Text),
        ("admin", Type::Text),
        ("version", Type::Text),
        ("started_at", Type::Text),
        ("pid", Type::Int4),
        ("self", Type::Bool),
    ]);
    let me = shared.fleet.me();
    for p in shared.fleet.peers().iter() {
        rs.push(vec![
            text(&p.name),
            text(&p.address),
            p.admin.clone(),
            text(&p.version),
            epoch_time(p.started_at),
            num(p.pid),
            boolean(me == Some(p.name.as_str())),
        ]);
    }
    rs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_is_written_like_postgres() {
        assert_eq!(lsn(0x016B_3748), "0/16B3748");
        assert_eq!(lsn((3 << 32) | 0x10), "3/10");
    }
}
