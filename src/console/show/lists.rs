//! SHOW LISTS, SHOW USERS and SHOW MEM: PgBouncer's inventory commands.

use std::sync::atomic::Ordering;

use super::super::{num, text, ResultSet, Type};
use super::pool_mode;
use super::pools::database_names;
use crate::shared::Shared;

/// How many of each thing pgkeel keeps (PgBouncer's rows, then pgkeel's).
pub(in crate::console) fn lists(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let clients = shared.clients.all();
    let pools = shared.pools.all();
    let servers: usize = pools
        .iter()
        .map(|p| p.stats.total_connections.load(Ordering::Relaxed))
        .sum();
    let idle: usize = pools.iter().map(|p| p.idle_count()).sum();
    let topo = shared.topology.load();
    let mut rs = ResultSet::new(&[("list", Type::Text), ("items", Type::Int4)]);
    for (list, items) in [
        // The console's database counts, as PgBouncer's does.
        ("databases", database_names(shared).len() + 1),
        ("users", cfg.users.len()),
        ("pools", pools.len()),
        // pgkeel allocates per client and server: nothing is kept free.
        ("free_clients", 0),
        ("used_clients", clients.len()),
        ("login_clients", 0),
        ("free_servers", 0),
        ("used_servers", servers),
        // Members are resolved by the operating system at connect time.
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
        ("idle_servers", idle),
        ("members", topo.members.len()),
        (
            "held_clients",
            shared.metrics.held_clients.get().max(0) as usize,
        ),
    ] {
        rs.push(vec![text(list), num(items)]);
    }
    rs
}

/// One row per `[[users]]` entry, with its pool mode and console rights.
pub(in crate::console) fn users(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let mut rs = ResultSet::new(&[
        ("name", Type::Text),
        ("pool_mode", Type::Text),
        ("pool_size", Type::Int4),
        ("server_user", Type::Text),
        ("console", Type::Text),
    ]);
    for u in &cfg.users {
        let console = if cfg.admin.users.contains(&u.name) {
            Some("admin")
        } else if cfg.admin.stats_users.contains(&u.name) {
            Some("stats")
        } else {
            None
        };
        rs.push(vec![
            text(&u.name),
            text(pool_mode(u.pool_mode)),
            num(u.pool_size),
            text(&u.server_user),
            console.map(str::to_owned),
        ]);
    }
    rs
}

/// PgBouncer's slab caches, as what pgkeel keeps per object: `size` is the
/// bytes of one object's fixed part (buffers grow with traffic and are not
/// counted), `used` how many there are; nothing is pooled free.
pub(in crate::console) fn mem(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let clients = shared.clients.all().len();
    let pools = shared.pools.all();
    let servers: usize = pools
        .iter()
        .map(|p| p.stats.total_connections.load(Ordering::Relaxed))
        .sum();
    let mut rs = ResultSet::new(&[
        ("name", Type::Text),
        ("size", Type::Int4),
        ("used", Type::Int4),
        ("free", Type::Int4),
        ("memtotal", Type::Int4),
    ]);
    for (name, size, used) in [
        (
            "user_cache",
            std::mem::size_of::<crate::config::User>(),
            cfg.users.len(),
        ),
        (
            "db_cache",
            std::mem::size_of::<crate::dbstats::DbCounters>(),
            database_names(shared).len(),
        ),
        (
            "pool_cache",
            std::mem::size_of::<crate::pool::Pool>(),
            pools.len(),
        ),
        (
            "server_cache",
            std::mem::size_of::<crate::backend::ServerConn>(),
            servers,
        ),
        (
            "client_cache",
            std::mem::size_of::<crate::clients::ClientInfo>(),
            clients,
        ),
    ] {
        rs.push(vec![
            text(name),
            num(size),
            num(used),
            num(0),
            num((size * used).min(i32::MAX as usize)),
        ]);
    }
    rs
}
