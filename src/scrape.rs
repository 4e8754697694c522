//! Client and pool gauges computed when /metrics is scraped, from the
//! pools' own counters and the client registry: the data path updates
//! nothing for them. It reads the shared state, so it sits above `metrics`,
//! which only holds the registry the data path feeds.

use std::sync::{Mutex, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts};

use crate::shared::Shared;

/// Client and pool gauges computed when /metrics is scraped, from the
/// counters the pools keep anyway: the data path updates nothing for them.
pub struct ScrapeCollector {
    /// Weak: the registry lives inside `Shared`, which must not own itself.
    shared: Weak<Shared>,
    /// Filled afresh under this lock at each scrape (two scrapes may overlap).
    gauges: Mutex<ScrapeGauges>,
    descs: Vec<Desc>,
}

struct ScrapeGauges {
    clients: IntGaugeVec,
    pool_size: IntGaugeVec,
    pool_server_connections: IntGaugeVec,
    pool_clients_waiting: IntGaugeVec,
}

/// Pool series labels: the member as the topology names it, its role, and
/// the pool's database and user (all bounded by configuration and cluster).
const POOL_LABELS: [&str; 4] = ["member", "role", "database", "user"];

/// `state` values of `pgkeel_clients`.
const CLIENT_STATES: [&str; 4] = ["active", "waiting", "held", "idle"];

impl ScrapeCollector {
    pub fn new(shared: Weak<Shared>) -> ScrapeCollector {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            IntGaugeVec::new(Opts::new(name, help), labels).unwrap()
        };
        let mut with_state = POOL_LABELS.to_vec();
        with_state.push("state");
        let g = ScrapeGauges {
            clients: gauge(
                "pgkeel_clients",
                "Client connections by state: active (holding a server connection), waiting (for a pool slot), held (waiting for a primary), idle (between transactions, or logging in)",
                &["state"],
            ),
            pool_size: gauge(
                "pgkeel_pool_size",
                "Configured size of each pool (server connections per member, database and user)",
                &POOL_LABELS,
            ),
            pool_server_connections: gauge(
                "pgkeel_pool_server_connections",
                "Server connections of each pool, by state: active (lent to a client), idle (in the pool)",
                &with_state,
            ),
            pool_clients_waiting: gauge(
                "pgkeel_pool_clients_waiting",
                "Clients waiting for a free server connection in each pool",
                &POOL_LABELS,
            ),
        };
        let descs = [
            &g.clients,
            &g.pool_size,
            &g.pool_server_connections,
            &g.pool_clients_waiting,
        ]
        .iter()
        .flat_map(|v| v.desc().into_iter().cloned())
        .collect();
        ScrapeCollector {
            shared,
            gauges: Mutex::new(g),
            descs,
        }
    }
}

impl Collector for ScrapeCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(shared) = self.shared.upgrade() else {
            return Vec::new();
        };
        let g = self.gauges.lock().expect("scrape gauges poisoned");
        g.pool_size.reset();
        g.pool_server_connections.reset();
        g.pool_clients_waiting.reset();
        let topo = shared.topology.load();
        let (mut active, mut waiting) = (0i64, 0i64);
        for p in shared.pools.all() {
            let member = topo
                .members
                .iter()
                .find(|m| m.member.host == p.key.host && m.member.port == p.key.port);
            let name = member.map_or_else(
                || format!("{}:{}", p.key.host, p.key.port),
                |m| m.member.name.clone(),
            );
            let role = match member.map(|m| m.role) {
                Some(crate::topology::Role::Primary) => "primary",
                Some(crate::topology::Role::Replica) => "replica",
                _ => "unknown",
            };
            let labels = [name.as_str(), role, &p.key.database, &p.key.user];
            let lent = p.stats.active.load(Relaxed) as i64;
            let queued = p.stats.waiting.load(Relaxed) as i64;
            active += lent;
            waiting += queued;
            g.pool_size
                .with_label_values(&labels)
                .set(i64::from(p.settings().size));
            let state = |s| {
                let [a, b, c, d] = labels;
                g.pool_server_connections
                    .with_label_values(&[a, b, c, d, s])
            };
            state("active").set(lent);
            state("idle").set(p.idle_count() as i64);
            g.pool_clients_waiting
                .with_label_values(&labels)
                .set(queued);
        }
        let held = shared.metrics.held_clients.get();
        // The parts are read one after another, not atomically: idle is
        // what is left, never below 0.
        let idle = (shared.metrics.clients_connected.get() - active - waiting - held).max(0);
        for (state, v) in CLIENT_STATES.iter().zip([active, waiting, held, idle]) {
            g.clients.with_label_values(&[state]).set(v);
        }
        let mut out = g.clients.collect();
        out.extend(g.pool_size.collect());
        out.extend(g.pool_server_connections.collect());
        out.extend(g.pool_clients_waiting.collect());
        out
    }
}
