//! SHOW POOLS (per database and user, as PgBouncer), SHOW MEMBER_POOLS
//! (per member × database × user, pgkeel's own pools) and SHOW DATABASES.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::super::{num, text, ResultSet, Type};
use super::{member_of, pool_mode, secs_us, Tally};
use crate::pool::{Pool, PoolKey};
use crate::shared::Shared;

/// The admin console's own pool row: PgBouncer shows one, and exporters
/// take a SHOW with no row for a failed scrape.
const CONSOLE_POOL_MODE: &str = "statement";

/// Each pooled client counted once: on the pool of its server, the one it
/// waits for, or the last one it used; a client that never had a server on
/// its (database, user) with no pool. Console sessions are counted apart.
struct Counted {
    by_pool: HashMap<PoolKey, Tally>,
    no_pool: BTreeMap<(String, String), Tally>,
    console: Tally,
}

fn count(shared: &Shared, pools: &[Arc<Pool>]) -> Counted {
    let mut c = Counted {
        by_pool: HashMap::new(),
        no_pool: BTreeMap::new(),
        console: Tally::default(),
    };
    for client in shared.clients.all() {
        let (state, for_) = (client.state(), client.in_state_for());
        if client.spec.admin {
            c.console.add(state, for_);
            continue;
        }
        match client
            .pool()
            .filter(|p| pools.iter().any(|q| q.key == p.key))
        {
            Some(p) => c.by_pool.entry(p.key.clone()).or_default().add(state, for_),
            None => c
                .no_pool
                .entry((client.spec.database.clone(), client.spec.user.clone()))
                .or_default()
                .add(state, for_),
        }
    }
    c
}

fn sorted_pools(shared: &Shared) -> Vec<Arc<Pool>> {
    let mut pools = shared.pools.all();
    pools.sort_by(|a, b| {
        (&a.key.database, &a.key.user, &a.key.host, a.key.port).cmp(&(
            &b.key.database,
            &b.key.user,
            &b.key.host,
            b.key.port,
        ))
    });
    pools
}

/// Server connections of one pool by state: active, idle, used.
#[derive(Default, Clone, Copy)]
struct Servers {
    active: u32,
    idle: u32,
    used: u32,
}

impl Servers {
    fn of(p: &Pool) -> Servers {
        let conns = p.idle_conns();
        // PgBouncer's `sv_used`: idle long enough to be checked before use.
        let used = conns
            .iter()
            .filter(|c| Pool::needs_check(c.last_used.elapsed()))
            .count() as u32;
        Servers {
            active: p.stats.active.load(Ordering::Relaxed) as u32,
            idle: conns.len() as u32 - used,
            used,
        }
    }

    fn merge(&mut self, o: Servers) {
        self.active += o.active;
        self.idle += o.idle;
        self.used += o.used;
    }
}

/// PgBouncer 1.18's SHOW POOLS columns.
const POOL_COLUMNS: [(&str, Type); 16] = [
    ("database", Type::Text),
    ("user", Type::Text),
    ("cl_active", Type::Int4),
    ("cl_waiting", Type::Int4),
    ("cl_active_cancel_req", Type::Int4),
    ("cl_waiting_cancel_req", Type::Int4),
    ("sv_active", Type::Int4),
    ("sv_active_cancel", Type::Int4),
    ("sv_being_canceled", Type::Int4),
    ("sv_idle", Type::Int4),
    ("sv_used", Type::Int4),
    ("sv_tested", Type::Int4),
    ("sv_login", Type::Int4),
    ("maxwait", Type::Int4),
    ("maxwait_us", Type::Int4),
    ("pool_mode", Type::Text),
];

/// PgBouncer's columns of one pool row. Held clients (no primary, or
/// paused) wait for a server as PgBouncer's waiting clients do: they are
/// in `cl_waiting`, and in pgkeel's `cl_held` too.
fn pool_head(
    db: &str,
    user: &str,
    t: &Tally,
    sv: Servers,
    mode: Option<&str>,
) -> Vec<Option<String>> {
    let (w, wus) = secs_us(t.maxwait);
    vec![
        text(db),
        text(user),
        num(t.active),
        num(t.waiting + t.held),
        num(0),
        num(0),
        num(sv.active),
        num(0),
        num(0),
        num(sv.idle),
        num(sv.used),
        num(0),
        num(0),
        num(w),
        num(wus),
        mode.map(str::to_owned),
    ]
}

fn columns(extra: &[(&'static str, Type)]) -> Vec<(&'static str, Type)> {
    POOL_COLUMNS.iter().chain(extra).copied().collect()
}

/// One row per (database, user), the console's first.
pub(in crate::console) fn pools(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let paused = shared.pause.current();
    let pools = sorted_pools(shared);
    let mut counted = count(shared, &pools);
    let mut rs = ResultSet::new(&columns(&[
        ("cl_held", Type::Int4),
        ("cl_idle", Type::Int4),
        ("paused", Type::Int4),
        ("pool_size", Type::Int4),
        ("members", Type::Int4),
    ]));
    let console = &cfg.admin.database;
    let mut row = pool_head(
        console,
        console,
        &counted.console,
        Servers::default(),
        Some(CONSOLE_POOL_MODE),
    );
    row.extend([num(0), num(counted.console.idle), num(0), num(0), num(0)]);
    rs.push(row);
    // (database, user) → clients, servers, members.
    let mut groups: BTreeMap<(String, String), (Tally, Servers, u32)> = BTreeMap::new();
    for p in &pools {
        let g = groups
            .entry((p.key.database.clone(), p.key.user.clone()))
            .or_default();
        if let Some(t) = counted.by_pool.remove(&p.key) {
            g.0.merge(&t);
        }
        g.1.merge(Servers::of(p));
        g.2 += 1;
    }
    for (k, t) in counted.no_pool {
        groups.entry(k).or_default().0.merge(&t);
    }
    for ((db, user), (t, sv, members)) in &groups {
        let u = cfg.user(user);
        let mut row = pool_head(db, user, t, *sv, u.map(|u| pool_mode(u.pool_mode)));
        row.extend([
            num(t.held),
            num(t.idle),
            num(u8::from(paused.covers(db))),
            u.and_then(|u| num(u.pool_size)),
            num(members),
        ]);
        rs.push(row);
    }
    rs
}

/// One row per pool: member × database × user.
pub(in crate::console) fn member_pools(shared: &Shared) -> ResultSet {
    let topo = shared.topology.load();
    let cfg = shared.config.load();
    let paused = shared.pause.current();
    let pools = sorted_pools(shared);
    let mut counted = count(shared, &pools);
    let mut rs = ResultSet::new(&columns(&[
        ("cl_held", Type::Int4),
        ("cl_idle", Type::Int4),
        ("paused", Type::Int4),
        ("pool_size", Type::Int4),
        ("member", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int4),
        ("role", Type::Text),
    ]));
    let mode_of = |user: &str| cfg.user(user).map(|u| pool_mode(u.pool_mode));
    for p in &pools {
        let t = counted.by_pool.remove(&p.key).unwrap_or_default();
        let (member, role) = member_of(&topo, &p.key.host, p.key.port);
        let mut row = pool_head(
            &p.key.database,
            &p.key.user,
            &t,
            Servers::of(p),
            mode_of(&p.key.user),
        );
        row.extend([
            num(t.held),
            num(t.idle),
            num(u8::from(paused.covers(&p.key.database))),
            num(p.settings().size),
            member,
            text(&p.key.host),
            num(p.key.port),
            text(role),
        ]);
        rs.push(row);
    }
    for ((db, user), t) in &counted.no_pool {
        let mut row = pool_head(db, user, t, Servers::default(), mode_of(user));
        row.extend([
            num(t.held),
            num(t.idle),
            num(u8::from(paused.covers(db))),
            cfg.user(user).and_then(|u| num(u.pool_size)),
            None,
            None,
            None,
            None,
        ]);
        rs.push(row);
    }
    rs
}

/// The databases pgkeel knows: those with pools, with traffic, or with
/// clients; the console's own first.
pub(in crate::console) fn database_names(shared: &Shared) -> BTreeSet<String> {
    let mut dbs: BTreeSet<String> = shared.db_stats.totals().into_keys().collect();
    dbs.extend(shared.pools.all().iter().map(|p| p.key.database.clone()));
    dbs.extend(
        shared
            .clients
            .all()
            .iter()
            .filter(|c| !c.spec.admin)
            .map(|c| c.spec.database.clone()),
    );
    dbs.remove(&shared.config.load().admin.database);
    dbs
}

/// One row per database: where it is served now (the primary), its
/// connections, and whether it is paused or disabled.
pub(in crate::console) fn databases(shared: &Shared) -> ResultSet {
    let cfg = shared.config.load();
    let topo = shared.topology.load();
    let paused = shared.pause.current();
    let mut rs = ResultSet::new(&[
        ("name", Type::Text),
        ("host", Type::Text),
        ("port", Type::Int4),
        ("database", Type::Text),
        ("force_user", Type::Text),
        ("pool_size", Type::Int4),
        ("min_pool_size", Type::Int4),
        ("reserve_pool", Type::Int4),
        ("pool_mode", Type::Text),
        ("max_connections", Type::Int4),
        ("current_connections", Type::Int4),
        ("paused", Type::Int4),
        ("disabled", Type::Int4),
        ("primary", Type::Text),
        ("members", Type::Int4),
    ]);
    let console = &cfg.admin.database;
    let port = cfg.listen_addr.port();
    rs.push(vec![
        text(console),
        None,
        num(port),
        text(console),
        None,
        num(0),
        num(0),
        num(0),
        text(CONSOLE_POOL_MODE),
        num(0),
        num(0),
        num(0),
        num(0),
        None,
        num(0),
    ]);
    let pools = shared.pools.all();
    let primary = topo.primary.as_ref();
    for db in database_names(shared) {
        let conns: usize = pools
            .iter()
            .filter(|p| p.key.database == db)
            .map(|p| p.stats.total_connections.load(Ordering::Relaxed))
            .sum();
        rs.push(vec![
            text(&db),
            primary.map(|m| m.host.clone()),
            primary.and_then(|m| num(m.port)),
            text(&db),
            None,
            num(cfg.proxy.pool_size),
            num(cfg.proxy.min_pool_size),
            num(0),
            // pgkeel's pool mode is per user (SHOW USERS), not per database.
            None,
            num(0),
            num(conns),
            num(u8::from(paused.covers(&db))),
            num(u8::from(shared.disabled.is_disabled(&db))),
            primary.map(|m| m.name.clone()),
            num(topo.members.len()),
        ]);
    }
    rs
}
