//! Prometheus metrics. Each proxy instance owns its registry (no global
//! state), so two instances can run side by side in one process.

use prometheus::{
    Counter, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub clients_connected: IntGauge,
    pub client_connections_total: IntCounter,
    pub client_login_failures_total: IntCounterVec,
    pub server_connections: IntGauge,
    pub transactions_total: IntCounterVec,
    pub queries_total: IntCounterVec,
    /// `transactions_total` and `queries_total` children for the primary
    /// ([0]) and other members ([1]), looked up once: they are on the hot path.
    pub transactions: [IntCounter; 2],
    pub queries: [IntCounter; 2],
    pub routed_total: IntCounterVec,
    /// `routed_total` children: [route index * reasons + reason index].
    routed: Vec<IntCounter>,
    pub classify_cache_hits_total: IntCounter,
    pub classify_cache_misses_total: IntCounter,
    pub replica_lag_bytes: IntGaugeVec,
    pub replica_lag_seconds: GaugeVec,
    pub replica_reads_on_primary_total: IntCounter,
    pub errors_total: IntCounterVec,
    pub pool_wait_seconds: Histogram,
    pub cancel_requests_total: IntCounter,
    pub topology_changes_total: IntCounter,
    pub leader_changes_total: IntCounter,
    pub primary_switch_seconds: Histogram,
    pub members_up: IntGauge,
    pub etcd_connected: IntGauge,
    pub etcd_watch_restarts_total: IntCounter,
    pub failovers_total: IntCounterVec,
    pub held_clients: IntGauge,
    pub hold_seconds: Histogram,
    pub primary_unavailable_seconds_total: Counter,
    pub retried_statements_total: IntCounter,
    pub failover_errors_total: IntCounterVec,
    pub session_restores_total: IntCounter,
    pub prepared_statements_prepared_total: IntCounter,
    pub prepared_statements_hits_total: IntCounter,
    pub prepared_statements_evictions_total: IntCounter,
    pub pinned_clients: IntGauge,
    pub client_pins_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
}

/// `route` labels of `pgkeel_routed_total`, in `config::Route` order.
const ROUTE_LABELS: [&str; 3] = ["primary", "replica", "any"];

/// Reasons for `pgkeel_failover_errors_total`: errors a failover made pgkeel return.
pub const FAILOVER_ERROR_REASONS: [&str; 6] = [
    "in_flight",
    "transaction_lost",
    "session_state_lost",
    "hold_timeout",
    "held_limit",
    "mid_message",
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let by_role =
            |name: &str, help: &str| IntCounterVec::new(Opts::new(name, help), &["role"]).unwrap();
        let transactions_total = by_role(
            "pgkeel_transactions_total",
            "Transactions (server checkouts) completed, by role of the server",
        );
        let queries_total = by_role(
            "pgkeel_queries_total",
            "Simple queries and extended-protocol syncs forwarded, by role of the server",
        );
        let m = Metrics {
            clients_connected: IntGauge::new(
                "pgkeel_clients_connected",
                "Client connections currently open",
            )
            .unwrap(),
            client_connections_total: IntCounter::new(
                "pgkeel_client_connections_total",
                "Client connections accepted",
            )
            .unwrap(),
            client_login_failures_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_client_login_failures_total",
                    "Client logins refused, by SQLSTATE",
                ),
                &["sqlstate"],
            )
            .unwrap(),
            server_connections: IntGauge::new(
                "pgkeel_server_connections",
                "Server connections currently open",
            )
            .unwrap(),
            transactions_total: transactions_total.clone(),
            queries_total: queries_total.clone(),
            transactions: [
                transactions_total.with_label_values(&["primary"]),
                transactions_total.with_label_values(&["replica"]),
            ],
            queries: [
                queries_total.with_label_values(&["primary"]),
                queries_total.with_label_values(&["replica"]),
            ],
            routed_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_routed_total",
                    "Routing decisions for transactions, by route asked for and reason",
                ),
                &["route", "reason"],
            )
            .unwrap(),
            routed: Vec::new(),
            classify_cache_hits_total: IntCounter::new(
                "pgkeel_classify_cache_hits_total",
                "Statements whose classification came from the cache",
            )
            .unwrap(),
            classify_cache_misses_total: IntCounter::new(
                "pgkeel_classify_cache_misses_total",
                "Statements parsed to classify them",
            )
            .unwrap(),
            replica_lag_bytes: IntGaugeVec::new(
                Opts::new(
                    "pgkeel_replica_lag_bytes",
                    "Bytes of WAL a replica is behind the primary",
                ),
                &["member"],
            )
            .unwrap(),
            replica_lag_seconds: GaugeVec::new(
                Opts::new(
                    "pgkeel_replica_lag_seconds",
                    "Seconds a replica's replay is behind (0 when caught up)",
                ),
                &["member"],
            )
            .unwrap(),
            replica_reads_on_primary_total: IntCounter::new(
                "pgkeel_replica_reads_on_primary_total",
                "Transactions routed to replicas that ran on the primary: no replica was usable (down, lagging, or behind the client's last write)",
            )
            .unwrap(),
            errors_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_errors_total",
                    "Errors pgkeel itself returned to clients, by SQLSTATE",
                ),
                &["sqlstate"],
            )
            .unwrap(),
            pool_wait_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pgkeel_pool_wait_seconds",
                    "Time clients waited for a server connection when none was free",
                )
                .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0]),
            )
            .unwrap(),
            cancel_requests_total: IntCounter::new(
                "pgkeel_cancel_requests_total",
                "CancelRequests received",
            )
            .unwrap(),
            topology_changes_total: IntCounter::new(
                "pgkeel_topology_changes_total",
                "Material topology changes (members, roles, health, leader, primary)",
            )
            .unwrap(),
            leader_changes_total: IntCounter::new(
                "pgkeel_leader_changes_total",
                "Changes of the Patroni leader key",
            )
            .unwrap(),
            primary_switch_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pgkeel_primary_switch_seconds",
                    "From a leader key change to the new primary confirmed writable",
                )
                .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0]),
            )
            .unwrap(),
            members_up: IntGauge::new(
                "pgkeel_members_up",
                "Members answering pgkeel's health checks",
            )
            .unwrap(),
            etcd_connected: IntGauge::new(
                "pgkeel_etcd_connected",
                "1 while the etcd watch is established (etcd mode)",
            )
            .unwrap(),
            etcd_watch_restarts_total: IntCounter::new(
                "pgkeel_etcd_watch_restarts_total",
                "Times the etcd watch was re-established",
            )
            .unwrap(),
            failovers_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_failovers_total",
                    "Failovers (primary unavailable, then available again), by kind",
                ),
                &["kind"],
            )
            .unwrap(),
            held_clients: IntGauge::new("pgkeel_held_clients", "Clients waiting for a primary")
                .unwrap(),
            hold_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pgkeel_hold_seconds",
                    "How long clients were held waiting for a primary",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
                ]),
            )
            .unwrap(),
            primary_unavailable_seconds_total: Counter::new(
                "pgkeel_primary_unavailable_seconds_total",
                "Seconds without a usable primary",
            )
            .unwrap(),
            retried_statements_total: IntCounter::new(
                "pgkeel_retried_statements_total",
                "Read-only statements re-run after their server failed",
            )
            .unwrap(),
            failover_errors_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_failover_errors_total",
                    "Errors a failover made pgkeel return, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            session_restores_total: IntCounter::new(
                "pgkeel_session_restores_total",
                "SET preludes that gave a server connection a client's session parameters",
            )
            .unwrap(),
            prepared_statements_prepared_total: IntCounter::new(
                "pgkeel_prepared_statements_prepared_total",
                "Named statements pgkeel prepared on a server connection (transaction mode)",
            )
            .unwrap(),
            prepared_statements_hits_total: IntCounter::new(
                "pgkeel_prepared_statements_hits_total",
                "Uses of a named statement the server connection already had prepared",
            )
            .unwrap(),
            prepared_statements_evictions_total: IntCounter::new(
                "pgkeel_prepared_statements_evictions_total",
                "Statements closed on a server connection to stay within prepared_statements_cache_size",
            )
            .unwrap(),
            pinned_clients: IntGauge::new(
                "pgkeel_pinned_clients",
                "Transaction-mode clients pinned to their server connection (pin_on)",
            )
            .unwrap(),
            client_pins_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_client_pins_total",
                    "Clients pinned to their server connection, by the feature that pinned them",
                ),
                &["feature"],
            )
            .unwrap(),
            config_reloads_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_config_reloads_total",
                    "Configuration reloads, by result (ok, error)",
                ),
                &["result"],
            )
            .unwrap(),
            registry,
        };
        let mut m = m;
        m.routed = ROUTE_LABELS
            .iter()
            .flat_map(|route| {
                let v = m.routed_total.clone();
                crate::router::Why::ALL
                    .iter()
                    .map(move |why| v.with_label_values(&[route, why.label()]))
            })
            .collect();
        let r = &m.registry;
        r.register(Box::new(m.clients_connected.clone())).unwrap();
        r.register(Box::new(m.client_connections_total.clone()))
            .unwrap();
        r.register(Box::new(m.client_login_failures_total.clone()))
            .unwrap();
        r.register(Box::new(m.server_connections.clone())).unwrap();
        r.register(Box::new(m.transactions_total.clone())).unwrap();
        r.register(Box::new(m.queries_total.clone())).unwrap();
        r.register(Box::new(m.errors_total.clone())).unwrap();
        r.register(Box::new(m.pool_wait_seconds.clone())).unwrap();
        r.register(Box::new(m.cancel_requests_total.clone()))
            .unwrap();
        for c in [
            &m.topology_changes_total,
            &m.leader_changes_total,
            &m.etcd_watch_restarts_total,
        ] {
            r.register(Box::new(c.clone())).unwrap();
        }
        r.register(Box::new(m.primary_switch_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.members_up.clone())).unwrap();
        r.register(Box::new(m.etcd_connected.clone())).unwrap();
        r.register(Box::new(m.failovers_total.clone())).unwrap();
        r.register(Box::new(m.held_clients.clone())).unwrap();
        r.register(Box::new(m.hold_seconds.clone())).unwrap();
        r.register(Box::new(m.primary_unavailable_seconds_total.clone()))
            .unwrap();
        r.register(Box::new(m.retried_statements_total.clone()))
            .unwrap();
        r.register(Box::new(m.failover_errors_total.clone()))
            .unwrap();
        r.register(Box::new(m.session_restores_total.clone()))
            .unwrap();
        r.register(Box::new(m.prepared_statements_prepared_total.clone()))
            .unwrap();
        r.register(Box::new(m.prepared_statements_hits_total.clone()))
            .unwrap();
        r.register(Box::new(m.prepared_statements_evictions_total.clone()))
            .unwrap();
        r.register(Box::new(m.pinned_clients.clone())).unwrap();
        r.register(Box::new(m.client_pins_total.clone())).unwrap();
        for f in crate::config::PinFeature::ALL {
            m.client_pins_total.with_label_values(&[f.name()]);
        }
        r.register(Box::new(m.routed_total.clone())).unwrap();
        r.register(Box::new(m.config_reloads_total.clone()))
            .unwrap();
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        r.register(Box::new(m.classify_cache_hits_total.clone()))
            .unwrap();
        r.register(Box::new(m.classify_cache_misses_total.clone()))
            .unwrap();
        r.register(Box::new(m.replica_lag_bytes.clone())).unwrap();
        r.register(Box::new(m.replica_lag_seconds.clone())).unwrap();
        r.register(Box::new(m.replica_reads_on_primary_total.clone()))
            .unwrap();
        for reason in FAILOVER_ERROR_REASONS {
            m.failover_errors_total.with_label_values(&[reason]);
        }
        for kind in ["planned", "unplanned"] {
            m.failovers_total.with_label_values(&[kind]);
        }
        m
    }

    pub fn failover_errors(&self) -> u64 {
        FAILOVER_ERROR_REASONS
            .iter()
            .map(|r| self.failover_errors_total.with_label_values(&[r]).get())
            .sum()
    }

    /// Counts one routing decision.
    pub fn routed(&self, route: crate::config::Route, why: crate::router::Why) -> &IntCounter {
        let r = route as usize;
        let w = crate::router::Why::ALL
            .iter()
            .position(|x| *x == why)
            .unwrap_or(0);
        &self.routed[r * crate::router::Why::ALL.len() + w]
    }

    /// Transactions completed on any server.
    pub fn transactions_completed(&self) -> u64 {
        self.transactions.iter().map(IntCounter::get).sum()
    }

    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut out = Vec::new();
        prometheus::TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}
