//! SHOW STATS, STATS_TOTALS and STATS_AVERAGES (per database, from
//! `dbstats`, in PgBouncer's columns) and SHOW TOTALS (all databases, then
//! pgkeel's own counters from the metrics, as name/value rows).

use prometheus::core::Collector;

use super::super::{num, text, ResultSet, Type};
use super::pools::database_names;
use crate::dbstats::{Averages, Totals};
use crate::shared::Shared;

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

/// Each database's totals and averages, the console's own (all zeros)
/// first: PgBouncer always has that row, and exporters take an empty SHOW
/// STATS for a failed scrape.
fn per_database(shared: &Shared) -> Vec<(String, Totals, Averages)> {
    let totals = shared.db_stats.totals();
    let averages = shared.db_stats.averages();
    let console = shared.config.load().admin.database.clone();
    let mut rows = vec![(console, Totals::default(), Averages::default())];
    for db in database_names(shared) {
        let t = totals.get(&db).copied().unwrap_or_default();
        let a = averages.get(&db).copied().unwrap_or_default();
        rows.push((db, t, a));
    }
    rows
}

fn totals_row(t: &Totals) -> [u64; 7] {
    [
        t.xact_count,
        t.query_count,
        t.received,
        t.sent,
        t.xact_us,
        t.query_us,
        t.wait_us,
    ]
}

fn averages_row(a: &Averages) -> [u64; 7] {
    [
        a.xact_count,
        a.query_count,
        a.received,
        a.sent,
        a.xact_us,
        a.query_us,
        a.wait_us,
    ]
}

pub(in crate::console) fn stats(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&[
        ("database", Type::Text),
        ("total_xact_count", Type::Numeric),
        ("total_query_count", Type::Numeric),
        ("total_received", Type::Numeric),
        ("total_sent", Type::Numeric),
        ("total_xact_time", Type::Numeric),
        ("total_query_time", Type::Numeric),
        ("total_wait_time", Type::Numeric),
        ("avg_xact_count", Type::Numeric),
        ("avg_query_count", Type::Numeric),
        ("avg_recv", Type::Numeric),
        ("avg_sent", Type::Numeric),
        ("avg_xact_time", Type::Numeric),
        ("avg_query_time", Type::Numeric),
        ("avg_wait_time", Type::Numeric),
    ]);
    for (db, t, a) in per_database(shared) {
        let mut row = vec![text(db)];
        row.extend(totals_row(&t).iter().chain(&averages_row(&a)).map(num));
        rs.push(row);
    }
    rs
}

const PER_DATABASE: [(&str, Type); 8] = [
    ("database", Type::Text),
    ("xact_count", Type::Numeric),
    ("query_count", Type::Numeric),
    ("bytes_received", Type::Numeric),
    ("bytes_sent", Type::Numeric),
    ("xact_time", Type::Numeric),
    ("query_time", Type::Numeric),
    ("wait_time", Type::Numeric),
];

pub(in crate::console) fn stats_totals(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&PER_DATABASE);
    for (db, t, _) in per_database(shared) {
        let mut row = vec![text(db)];
        row.extend(totals_row(&t).iter().map(num));
        rs.push(row);
    }
    rs
}

pub(in crate::console) fn stats_averages(shared: &Shared) -> ResultSet {
    let mut rs = ResultSet::new(&PER_DATABASE);
    for (db, _, a) in per_database(shared) {
        let mut row = vec![text(db)];
        row.extend(averages_row(&a).iter().map(num));
        rs.push(row);
    }
    rs
}

/// PgBouncer's SHOW TOTALS rows (all databases added up), then pgkeel's
/// own counters since start, from the metrics.
pub(in crate::console) fn totals(shared: &Shared) -> ResultSet {
    let mut t = Totals::default();
    let mut a = Averages::default();
    for (_, dt, da) in per_database(shared) {
        for (x, y) in [
            (&mut t.xact_count, dt.xact_count),
            (&mut t.query_count, dt.query_count),
            (&mut t.received, dt.received),
            (&mut t.sent, dt.sent),
            (&mut t.xact_us, dt.xact_us),
            (&mut t.query_us, dt.query_us),
            (&mut t.wait_us, dt.wait_us),
            (&mut a.xact_count, da.xact_count),
            (&mut a.query_count, da.query_count),
            (&mut a.received, da.received),
            (&mut a.sent, da.sent),
        ] {
            *x += y;
        }
        // Mean times do not add up: the slowest database's stands for all.
        a.xact_us = a.xact_us.max(da.xact_us);
        a.query_us = a.query_us.max(da.query_us);
        a.wait_us = a.wait_us.max(da.wait_us);
    }
    let mut rows: Vec<(&'static str, u64)> = vec![
        ("total_xact_count", t.xact_count),
        ("total_query_count", t.query_count),
        ("total_client_bytes", t.received + t.sent),
        (
            "total_server_bytes",
            shared.metrics.server_bytes_received_total.get()
                + shared.metrics.server_bytes_sent_total.get(),
        ),
        ("total_xact_time", t.xact_us),
        ("total_query_time", t.query_us),
        ("total_wait_time", t.wait_us),
        ("avg_xact_count", a.xact_count),
        ("avg_query_count", a.query_count),
        ("avg_client_bytes", a.received + a.sent),
        ("avg_server_bytes", 0),
        ("avg_xact_time", a.xact_us),
        ("avg_query_time", a.query_us),
        ("avg_wait_time", a.wait_us),
    ];
    rows.extend(pgkeel_counters(shared));
    let mut rs = ResultSet::new(&[("name", Type::Text), ("value", Type::Numeric)]);
    for (name, v) in rows {
        rs.push(vec![text(name), num(v)]);
    }
    rs
}

/// pgkeel's counters since start, from the metrics (by server role, not by
/// database): its own SHOW TOTALS rows.
fn pgkeel_counters(shared: &Shared) -> Vec<(&'static str, u64)> {
    let m = &shared.metrics;
    let (xp, xr) = (m.transactions[0].get(), m.transactions[1].get());
    let (qp, qr) = (m.queries[0].get(), m.queries[1].get());
    vec![
        ("primary_xact_count", xp),
        ("replica_xact_count", xr),
        ("primary_query_count", qp),
        ("replica_query_count", qr),
        ("client_bytes_received", m.client_bytes_received_total.get()),
        ("client_bytes_sent", m.client_bytes_sent_total.get()),
        (
            "total_request_time",
            micros(m.query_seconds.iter().map(|h| h.get_sample_sum()).sum()),
        ),
        (
            "total_pool_wait_time",
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
    ]
}
