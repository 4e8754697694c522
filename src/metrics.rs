//! Prometheus metrics. Each proxy instance owns its registry (no global
//! state), so two instances can run side by side in one process.

use prometheus::{
    Counter, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
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
    pub transaction_duration_seconds: HistogramVec,
    /// `transaction_duration_seconds` children, indexed like `transactions`.
    pub transaction_seconds: [Histogram; 2],
    pub query_duration_seconds: HistogramVec,
    /// `query_duration_seconds` children, indexed like `transactions`.
    pub query_seconds: [Histogram; 2],
    /// Bytes read from and written to clients after login (admin console
    /// sessions excluded), and relayed to and from servers for them.
    pub client_bytes_received_total: IntCounter,
    pub client_bytes_sent_total: IntCounter,
    pub server_bytes_received_total: IntCounter,
    pub server_bytes_sent_total: IntCounter,
    /// ErrorResponses servers sent to clients, by SQLSTATE class.
    pub server_errors_total: IntCounterVec,
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
    pub members: IntGauge,
    /// 1 while a primary is known and its probe saw it writable.
    pub primary_available: IntGauge,
    /// The member writes go to (one series, none while there is no primary).
    pub primary_info: IntGaugeVec,
    /// 1 from a failover's start (primary gone, or switchover announced)
    /// until a primary is usable again.
    pub failover_in_progress: IntGauge,
    /// Registered only in etcd mode (`register_etcd`): in static mode there
    /// is no watch, and a constant 0 would read as "etcd down".
    pub etcd_connected: IntGauge,
    pub etcd_watch_restarts_total: IntCounter,
    /// pgkeel instances registered for this scope, this one included (etcd
    /// mode only, registered with the etcd metrics).
    pub fleet_instances: IntGauge,
    pub failovers_total: IntCounterVec,
    pub held_clients: IntGauge,
    pub hold_seconds: Histogram,
    pub suspicions_total: IntCounterVec,
    pub suspicion_hold_delay_seconds: Histogram,
    pub primary_unavailable_seconds_total: Counter,
    pub retried_statements_total: IntCounter,
    /// Transactions re-run on a new server after theirs failed, by result.
    pub transaction_replays_total: IntCounterVec,
    /// Transactions not replayed (or whose replay failed), by reason.
    pub transaction_replay_refusals_total: IntCounterVec,
    /// From a server's loss to the replayed answer matching the client's.
    pub transaction_replay_seconds: Histogram,
    /// COMMITs in flight at a server's loss, by what the new primary said.
    pub commit_outcomes_total: IntCounterVec,
    /// Commit tokens written before COMMITs, by result.
    pub commit_tokens_total: IntCounterVec,
    pub failover_errors_total: IntCounterVec,
    pub session_restores_total: IntCounter,
    pub prepared_statements_prepared_total: IntCounter,
    pub prepared_statements_hits_total: IntCounter,
    pub prepared_statements_evictions_total: IntCounter,
    pub pinned_clients: IntGauge,
    pub client_pins_total: IntCounterVec,
    /// Idle clients offered to a new process at an upgrade, by outcome
    /// (`moved`, `refused`), and those that finished here (`stayed`).
    pub handover_clients_total: IntCounterVec,
    pub config_reloads_total: IntCounterVec,
    /// 0 after a reload found the file invalid, until a valid one is loaded.
    pub config_last_reload_successful: IntGauge,
    pub build_info: IntGaugeVec,
    /// Connections refused or ended by a limit or timeout, by the setting's name.
    pub limit_refusals_total: IntCounterVec,
    /// Connections still logging in (the `max_login_connections` budget in use).
    pub login_connections: IntGauge,
    /// Failed logins waiting out `auth_failure_delay` now.
    pub auth_failure_delayed: IntGauge,
    /// Admin HTTP requests refused for a missing or wrong token.
    pub http_unauthorized_total: IntCounter,
}

/// `route` labels of `pgkeel_routed_total`, in `config::Route` order.
const ROUTE_LABELS: [&str; 3] = ["primary", "replica", "any"];

/// `result` labels of `pgkeel_transaction_replays_total`.
pub const REPLAY_RESULTS: [&str; 3] = ["attempted", "succeeded", "failed"];

/// `reason` labels of `pgkeel_transaction_replay_refusals_total` (the
/// session's `journal::Refusal` labels).
pub const REPLAY_REFUSAL_REASONS: [&str; 10] = [
    "disabled",
    "too_large",
    "copy",
    "completed_in_pipeline",
    "commit_in_flight",
    "autocommit",
    "partial_message",
    "attempts",
    "results_differ",
    "no_primary",
];

/// Reasons for `pgkeel_failover_errors_total`: errors a failover made pgkeel return.
pub const FAILOVER_ERROR_REASONS: [&str; 6] = [
    "in_flight",
    "transaction_lost",
    "session_state_lost",
    "hold_timeout",
    "held_limit",
    "mid_message",
];

/// SQLSTATEs pgkeel itself answers with after login, created at 0 so that
/// `rate()` sees their first occurrence (the label stays open: a code not
/// listed here is still counted).
const ERROR_SQLSTATES: [&str; 10] = [
    "08006", "08P01", "25006", "25P02", "28000", "40001", "53300", "57P01", "57P03", "XX000",
];

/// SQLSTATEs of refused logins, likewise created at 0.
const LOGIN_FAILURE_SQLSTATES: [&str; 8] = [
    "08P01", "0A000", "28000", "28P01", "3D000", "53300", "57P01", "57P03",
];

/// Buckets for transaction durations: sub-millisecond to minutes.
const TRANSACTION_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Buckets for request durations: a cached point read on a local server
/// answers in ~100 µs, so they start lower than the transactions'.
const QUERY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 60.0,
];

/// The SQLSTATE class (its first two characters) an error is counted
/// under: two ASCII letters or digits, upper-cased, else `XX`. Only the
/// class, so a server cannot grow the label set past 36².
pub fn sqlstate_class(code: Option<&str>) -> [u8; 2] {
    match code.map(str::as_bytes) {
        Some([a, b, ..]) if a.is_ascii_alphanumeric() && b.is_ascii_alphanumeric() => {
            [a.to_ascii_uppercase(), b.to_ascii_uppercase()]
        }
        _ => *b"XX",
    }
}

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
        let transaction_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pgkeel_transaction_duration_seconds",
                "Time a transaction held its server connection, from checkout to release, by role of the server",
            )
            .buckets(TRANSACTION_BUCKETS.to_vec()),
            &["role"],
        )
        .unwrap();
        let query_duration_seconds = HistogramVec::new(
            HistogramOpts::new(
                "pgkeel_query_duration_seconds",
                "Time from a request (a simple Query, or extended-protocol messages up to their Sync) going to the server until its ReadyForQuery, by role of the server",
            )
            .buckets(QUERY_BUCKETS.to_vec()),
            &["role"],
        )
        .unwrap();
        let counter = |name: &str, help: &str| IntCounter::new(name, help).unwrap();
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
            transaction_seconds: [
                transaction_duration_seconds.with_label_values(&["primary"]),
                transaction_duration_seconds.with_label_values(&["replica"]),
            ],
            transaction_duration_seconds,
            query_seconds: [
                query_duration_seconds.with_label_values(&["primary"]),
                query_duration_seconds.with_label_values(&["replica"]),
            ],
            query_duration_seconds,
            client_bytes_received_total: counter(
                "pgkeel_client_bytes_received_total",
                "Bytes received from clients after login (admin console excluded)",
            ),
            client_bytes_sent_total: counter(
                "pgkeel_client_bytes_sent_total",
                "Bytes sent to clients after login (admin console excluded)",
            ),
            server_bytes_received_total: counter(
                "pgkeel_server_bytes_received_total",
                "Bytes received from servers while relaying for clients (not pgkeel's own control queries and health checks)",
            ),
            server_bytes_sent_total: counter(
                "pgkeel_server_bytes_sent_total",
                "Bytes sent to servers while relaying for clients, pgkeel's SET preludes and statement rewrites included",
            ),
            server_errors_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_server_errors_total",
                    "ErrorResponses servers sent to clients, by SQLSTATE class (first two characters)",
                ),
                &["class"],
            )
            .unwrap(),
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
            members: IntGauge::new(
                "pgkeel_members",
                "Members in the topology (static [[servers]], or Patroni's member keys)",
            )
            .unwrap(),
            primary_available: IntGauge::new(
                "pgkeel_primary_available",
                "1 while a primary is known and confirmed writable, else 0",
            )
            .unwrap(),
            primary_info: IntGaugeVec::new(
                Opts::new(
                    "pgkeel_primary_info",
                    "The member writes go to (value 1; no series while there is no primary)",
                ),
                &["member"],
            )
            .unwrap(),
            failover_in_progress: IntGauge::new(
                "pgkeel_failover_in_progress",
                "1 from a failover's start (primary gone or switchover announced) until a primary is usable again",
            )
            .unwrap(),
            etcd_connected: IntGauge::new(
                "pgkeel_etcd_connected",
                "1 while pgkeel reads and watches Patroni's keys in etcd, else 0 (etcd mode only)",
            )
            .unwrap(),
            etcd_watch_restarts_total: IntCounter::new(
                "pgkeel_etcd_watch_restarts_total",
                "Times the etcd watch was re-established (etcd mode only)",
            )
            .unwrap(),
            fleet_instances: IntGauge::new(
                "pgkeel_fleet_instances",
                "pgkeel instances registered in etcd for this Patroni scope, this one included (etcd mode only)",
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
            suspicions_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_suspicions_total",
                    "Members suspected after a server connection ended unexpectedly, by result: raised, cleared (answered a probe), confirmed (down)",
                ),
                &["result"],
            )
            .unwrap(),
            suspicion_hold_delay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pgkeel_suspicion_hold_delay_seconds",
                    "From a server connection's unexpected end to its member held out of routing",
                )
                .buckets(vec![0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5]),
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
            transaction_replays_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_transaction_replays_total",
                    "Transactions re-run on a new server after theirs failed mid-transaction, by result (attempted, succeeded: the client went on without an error, failed: it got the error it would have got without replay)",
                ),
                &["result"],
            )
            .unwrap(),
            transaction_replay_refusals_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_transaction_replay_refusals_total",
                    "Interrupted statements and transactions not replayed, or whose replay failed, by reason",
                ),
                &["reason"],
            )
            .unwrap(),
            transaction_replay_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "pgkeel_transaction_replay_seconds",
                    "From a server's loss to the replayed transaction's answer matching what the client had",
                )
                .buckets(vec![
                    0.01, 0.05, 0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0,
                ]),
            )
            .unwrap(),
            commit_outcomes_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_commit_outcomes_total",
                    "COMMITs in flight when their server died, resolved with a commit token on the new primary, by result (committed: the client got its COMMIT; not_committed: replayed or 40001; unknown: 08006)",
                ),
                &["result"],
            )
            .unwrap(),
            commit_tokens_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_commit_tokens_total",
                    "Commit tokens pgkeel recorded just before a write transaction's COMMIT (commit_outcome = \"token\"), by result (recorded, refused: the server could not record it)",
                ),
                &["result"],
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
            handover_clients_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_handover_clients_total",
                    "Clients at an upgrade's handover: moved to the new process, refused by it, or stayed to finish here",
                ),
                &["result"],
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
            config_last_reload_successful: IntGauge::new(
                "pgkeel_config_last_reload_successful",
                "1 while the running configuration is the file's latest content, 0 after a reload found the file invalid",
            )
            .unwrap(),
            build_info: IntGaugeVec::new(
                Opts::new("pgkeel_build_info", "pgkeel's version (value 1)"),
                &["version"],
            )
            .unwrap(),
            limit_refusals_total: IntCounterVec::new(
                Opts::new(
                    "pgkeel_limit_refusals_total",
                    "Connections refused or ended by a limit or timeout, by setting",
                ),
                &["reason"],
            )
            .unwrap(),
            login_connections: IntGauge::new(
                "pgkeel_login_connections",
                "Connections still logging in (startup and authentication)",
            )
            .unwrap(),
            auth_failure_delayed: IntGauge::new(
                "pgkeel_auth_failure_delayed",
                "Failed logins waiting out auth_failure_delay",
            )
            .unwrap(),
            http_unauthorized_total: IntCounter::new(
                "pgkeel_http_unauthorized_total",
                "Admin HTTP requests refused for a missing or wrong bearer token",
            )
            .unwrap(),
            registry,
        };
        let mut m = m;
        m.routed = ROUTE_LABELS
            .iter()
            .flat_map(|route| {
                let v = m.routed_total.clone();
                crate::config::Why::ALL
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
        for c in [&m.topology_changes_total, &m.leader_changes_total] {
            r.register(Box::new(c.clone())).unwrap();
        }
        r.register(Box::new(m.primary_switch_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.members_up.clone())).unwrap();
        r.register(Box::new(m.members.clone())).unwrap();
        r.register(Box::new(m.primary_available.clone())).unwrap();
        r.register(Box::new(m.primary_info.clone())).unwrap();
        r.register(Box::new(m.failover_in_progress.clone()))
            .unwrap();
        r.register(Box::new(m.transaction_duration_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.query_duration_seconds.clone()))
            .unwrap();
        for c in [
            &m.client_bytes_received_total,
            &m.client_bytes_sent_total,
            &m.server_bytes_received_total,
            &m.server_bytes_sent_total,
        ] {
            r.register(Box::new(c.clone())).unwrap();
        }
        r.register(Box::new(m.server_errors_total.clone())).unwrap();
        r.register(Box::new(m.build_info.clone())).unwrap();
        r.register(Box::new(m.limit_refusals_total.clone()))
            .unwrap();
        r.register(Box::new(m.login_connections.clone())).unwrap();
        r.register(Box::new(m.auth_failure_delayed.clone()))
            .unwrap();
        r.register(Box::new(m.http_unauthorized_total.clone()))
            .unwrap();
        for l in crate::limits::Limit::ALL {
            m.limit_refusals_total.with_label_values(&[l.setting()]);
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        for code in ERROR_SQLSTATES {
            m.errors_total.with_label_values(&[code]);
        }
        for code in LOGIN_FAILURE_SQLSTATES {
            m.client_login_failures_total.with_label_values(&[code]);
        }
        r.register(Box::new(m.failovers_total.clone())).unwrap();
        r.register(Box::new(m.held_clients.clone())).unwrap();
        r.register(Box::new(m.hold_seconds.clone())).unwrap();
        r.register(Box::new(m.suspicions_total.clone())).unwrap();
        for result in ["raised", "cleared", "confirmed"] {
            m.suspicions_total.with_label_values(&[result]);
        }
        r.register(Box::new(m.suspicion_hold_delay_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.primary_unavailable_seconds_total.clone()))
            .unwrap();
        r.register(Box::new(m.retried_statements_total.clone()))
            .unwrap();
        r.register(Box::new(m.transaction_replays_total.clone()))
            .unwrap();
        for result in REPLAY_RESULTS {
            m.transaction_replays_total.with_label_values(&[result]);
        }
        r.register(Box::new(m.transaction_replay_refusals_total.clone()))
            .unwrap();
        for reason in REPLAY_REFUSAL_REASONS {
            m.transaction_replay_refusals_total
                .with_label_values(&[reason]);
        }
        r.register(Box::new(m.transaction_replay_seconds.clone()))
            .unwrap();
        r.register(Box::new(m.commit_outcomes_total.clone()))
            .unwrap();
        for result in ["committed", "not_committed", "unknown"] {
            m.commit_outcomes_total.with_label_values(&[result]);
        }
        r.register(Box::new(m.commit_tokens_total.clone())).unwrap();
        for result in ["recorded", "refused"] {
            m.commit_tokens_total.with_label_values(&[result]);
        }
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
        r.register(Box::new(m.handover_clients_total.clone()))
            .unwrap();
        for result in crate::handoff::RESULTS {
            m.handover_clients_total.with_label_values(&[result]);
        }
        r.register(Box::new(m.config_reloads_total.clone()))
            .unwrap();
        for result in ["ok", "error"] {
            m.config_reloads_total.with_label_values(&[result]);
        }
        r.register(Box::new(m.config_last_reload_successful.clone()))
            .unwrap();
        // The file loaded at start was valid, or pgkeel would not be running.
        m.config_last_reload_successful.set(1);
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

    /// Adds the etcd watch metrics: only an instance following etcd has them.
    pub fn register_etcd(&self) {
        self.registry
            .register(Box::new(self.etcd_connected.clone()))
            .expect("etcd metrics are registered once");
        self.registry
            .register(Box::new(self.etcd_watch_restarts_total.clone()))
            .expect("etcd metrics are registered once");
        self.registry
            .register(Box::new(self.fleet_instances.clone()))
            .expect("etcd metrics are registered once");
    }

    pub fn failover_errors(&self) -> u64 {
        FAILOVER_ERROR_REASONS
            .iter()
            .map(|r| self.failover_errors_total.with_label_values(&[r]).get())
            .sum()
    }

    /// Counts one routing decision.
    pub fn routed(&self, route: crate::config::Route, why: crate::config::Why) -> &IntCounter {
        let r = route as usize;
        let w = crate::config::Why::ALL
            .iter()
            .position(|x| *x == why)
            .unwrap_or(0);
        &self.routed[r * crate::config::Why::ALL.len() + w]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_a_bounded_class() {
        assert_eq!(&sqlstate_class(Some("22012")), b"22");
        assert_eq!(&sqlstate_class(Some("40P01")), b"40");
        assert_eq!(&sqlstate_class(Some("hv000")), b"HV", "upper-cased");
        for bad in [
            None,
            Some(""),
            Some("4"),
            Some("4-000"),
            Some("\u{e9}2000"),
            Some(" 2000"),
        ] {
            assert_eq!(&sqlstate_class(bad), b"XX", "{bad:?}");
        }
    }

    #[test]
    fn new_families_are_exported() {
        let m = Metrics::new();
        m.server_errors_total.with_label_values(&["22"]).inc();
        m.query_seconds[1].observe(0.001);
        m.client_bytes_sent_total.inc_by(10);
        let text = m.render();
        for line in [
            "pgkeel_server_errors_total{class=\"22\"} 1",
            "pgkeel_query_duration_seconds_count{role=\"replica\"} 1",
            "pgkeel_query_duration_seconds_count{role=\"primary\"} 0",
            "pgkeel_client_bytes_sent_total 10",
            "pgkeel_client_bytes_received_total 0",
            "pgkeel_server_bytes_received_total 0",
            "pgkeel_server_bytes_sent_total 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
    }
}
