//! SHOW CLIENTS and SHOW SERVERS: PgBouncer 1.18's columns, then pgkeel's
//! (the numeric `id` KILL takes, the member, the listener).

use super::super::{num, text, time, ResultSet, Type};
use super::{member_of, secs_us, wall};
use crate::clients::ClientState;
use crate::pool::Pool;
use crate::shared::Shared;

/// PgBouncer's columns, shared by SHOW CLIENTS and SHOW SERVERS.
const COLUMNS: [(&str, Type); 18] = [
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
    ("close_needed", Type::Int4),
    ("ptr", Type::Text),
    ("link", Type::Text),
    ("remote_pid", Type::Int4),
    ("tls", Type::Text),
    ("application_name", Type::Text),
];

fn columns(extra: &[(&'static str, Type)]) -> Vec<(&'static str, Type)> {
    COLUMNS.iter().chain(extra).copied().collect()
}

/// PgBouncer's `ptr`/`link` are addresses; pgkeel's are ids, in hex so
/// they read the same way. Clients and servers count ids apart: a `c`
/// or `s` says which.
fn client_ptr(id: u64) -> String {
    format!("c{id:x}")
}

fn server_ptr(id: u64) -> String {
    format!("s{id:x}")
}

/// One row per connected client, admin console sessions included.
pub(in crate::console) fn clients(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let mut rs = ResultSet::new(&columns(&[
        ("id", Type::Int8),
        ("server", Type::Text),
        ("server_pid", Type::Int4),
        ("member", Type::Text),
        ("listener", Type::Text),
    ]));
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
            num(0),
            text(client_ptr(c.id)),
            server.map(|(id, _)| server_ptr(id)),
            num(0),
            None,
            text(&c.spec.application_name),
            num(c.id),
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
pub(in crate::console) fn servers(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let mut rs = ResultSet::new(&columns(&[
        ("id", Type::Int8),
        ("client_id", Type::Int8),
        ("member", Type::Text),
        ("role", Type::Text),
    ]));
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
                None,
                None,
                time(created),
                time(c.state_since()),
                num(0),
                num(0),
                num(0),
                text(server_ptr(id)),
                text(client_ptr(c.id)),
                c.spec.cancel.current().and_then(|k| num(k.pid)),
                None,
                text(&c.spec.application_name),
                num(id),
                num(c.id),
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
                    None,
                    None,
                    time(wall(conn.created)),
                    time(wall(conn.last_used)),
                    num(0),
                    num(0),
                    num(0),
                    text(server_ptr(conn.id)),
                    None,
                    num(conn.key.pid),
                    None,
                    None,
                    num(conn.id),
                    None,
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
