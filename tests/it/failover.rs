//! The acceptance test for failover without errors: nine application-like
//! clients on persistent connections through pgkeel (transaction pooling)
//! while the binary's real Patroni cluster (switched to synchronous mode for
//! these tests' turns, so no acknowledged commit can be lost by PostgreSQL
//! itself) goes through a planned
//! switchover, a killed leader and a killed replica. Counts, not timings.
//! And fast suspicion: one terminated backend holds others only while a
//! probe answers; a leader killed under a heavier load with idle pooled
//! connections breaks no client connection (`PGKEEL_KILL_REPEAT` kills, 2
//! by default; 10 by hand).

use crate::common;
use crate::support;

use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use prometheus::core::Metric;
use support::workload::{self, Report};
use support::*;
use tokio::sync::watch;

/// Clients of the workload and their pace.
#[derive(Clone, Copy)]
struct Load {
    writers: usize,
    transactions: usize,
    readers: usize,
    think: Duration,
}

impl Load {
    fn clients(self) -> usize {
        self.writers + self.transactions + self.readers
    }
}

/// Nine application-like clients.
const LOAD: Load = Load {
    writers: 5,
    transactions: 2,
    readers: 2,
    think: Duration::from_millis(20),
};

/// The load under which leader kills used to break connections: 16
/// writers (8 of them in explicit transactions), 2 ms think time.
const HEAVY: Load = Load {
    writers: 8,
    transactions: 8,
    readers: 2,
    think: Duration::from_millis(2),
};

/// Successes every client has before the event, so it hits running clients.
const WARM_UP: u64 = 20;
/// Successes every client has after the event (and after the cluster
/// settled) before the workload stops.
const RESUMED: u64 = 50;

async fn proxy(c: &Cluster) -> pgkeel::ProxyHandle {
    proxy_with(c, "pool_size = 10").await
}

async fn proxy_with(c: &Cluster, pool: &str) -> pgkeel::ProxyHandle {
    // Commit tokens: a COMMIT in flight at a kill is found out, not
    // reported unknown.
    let leader = common::pg_client(c.port_of(&c.leader()), "postgres", "postgres", "app").await;
    leader
        .batch_execute(pgkeel::commit_token::SQL)
        .await
        .unwrap();
    let p = start(&c.pgkeel_config(
        &c.scope,
        &format!("{pool}\n[failover]\nhold_timeout = \"40s\"\ncommit_outcome = \"token\""),
    ))
    .await;
    let setup = connect(p.local_addr(), "app", "app_password", "app")
        .await
        .unwrap();
    setup.simple_query(workload::SCHEMA).await.unwrap();
    p
}

pub(crate) fn url(p: &pgkeel::ProxyHandle) -> String {
    support::url(p.local_addr(), "app", "app_password", "app")
}

/// Runs the workload around `event`, until every client has succeeded again
/// and again after it; returns the report. `event` ends once the cluster has
/// settled after it (each test says what that means), so the clients run
/// through the whole change, not a fixed time.
async fn around<F: std::future::Future<Output = ()>>(p: &pgkeel::ProxyHandle, event: F) -> Report {
    around_with(p, LOAD, event).await
}

async fn around_with<F: std::future::Future<Output = ()>>(
    p: &pgkeel::ProxyHandle,
    load: Load,
    event: F,
) -> Report {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (clients, progress) = workload::start_with(
        &url(p),
        load.writers,
        load.transactions,
        load.readers,
        load.think,
        stop_rx,
    );
    let none = vec![0; load.clients()];
    let running = wait_until(Duration::from_secs(30), || async {
        progress.every_client_beyond(&none, WARM_UP)
    })
    .await;
    assert!(
        running,
        "the workload did not start: {:?}",
        progress.counts()
    );
    event.await;
    let after = Instant::now();
    let at_event = progress.counts();
    // Bounded by the hold timeout: held clients resume within it.
    let writes_before = p.shared().metrics.transactions_completed();
    let resumed = wait_until(Duration::from_secs(45), || async {
        p.shared().metrics.transactions_completed() > writes_before + 50
            && progress.every_client_beyond(&at_event, RESUMED)
    })
    .await;
    assert!(
        resumed,
        "traffic did not resume after the event (pgkeel's primary: {:?}, failovers: {:?}, members: {:?}): {:?} successes per client since it",
        p.shared().topology.load().primary,
        p.shared().topology.failovers().last(),
        p.shared()
            .topology
            .load()
            .members
            .iter()
            .map(|m| (m.member.name.clone(), m.role, m.healthy, m.last_error.clone()))
            .collect::<Vec<_>>(),
        progress
            .counts()
            .iter()
            .zip(&at_event)
            .map(|(now, then)| now - then)
            .collect::<Vec<_>>()
    );
    stop_tx.send_replace(true);
    let report = clients.await.unwrap();
    eprintln!(
        "{:.1}s after the event: {}",
        after.elapsed().as_secs_f64(),
        report.summary()
    );
    for c in &report.clients {
        for e in &c.errors {
            eprintln!("  {:?} error at {:.2}s: {} {}", c.kind, e.0, e.1, e.2);
        }
    }
    report
}

/// Waits until pgkeel's topology satisfies `cond` (40 s at most: a killed
/// leader is replaced once its key expires, after the cluster's TTL).
pub(crate) async fn pgkeel_sees(
    p: &pgkeel::ProxyHandle,
    what: &str,
    cond: impl Fn(&pgkeel::topology::Topology) -> bool,
) {
    let seen = wait_until(Duration::from_secs(40), || async {
        cond(&p.shared().topology.load())
    })
    .await;
    assert!(
        seen,
        "pgkeel never saw {what}: {:?}",
        p.shared().topology.load()
    );
}

/// Every acknowledged write is on the (new) leader.
pub(crate) async fn all_acked_writes_present(c: &Cluster, report: &Report) {
    let leader = c.leader();
    let direct = common::pg_client(c.port_of(&leader), "postgres", "postgres", "app").await;
    let acked = report.acked();
    let found: i64 = direct
        .query_one(
            "SELECT count(*) FROM failover_log WHERE id = ANY($1)",
            &[&acked],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        found as usize,
        acked.len(),
        "acknowledged writes missing on the new leader {leader}"
    );
}

/// What transaction replay did in this run.
pub(crate) fn replays(p: &pgkeel::ProxyHandle) -> String {
    let m = &p.shared().metrics;
    let n = |r: &str| m.transaction_replays_total.with_label_values(&[r]).get();
    let o = |r: &str| m.commit_outcomes_total.with_label_values(&[r]).get();
    let refused: Vec<String> = pgkeel::metrics::REPLAY_REFUSAL_REASONS
        .iter()
        .map(|r| {
            (
                r,
                m.transaction_replay_refusals_total
                    .with_label_values(&[r])
                    .get(),
            )
        })
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{r} {n}"))
        .collect();
    format!(
        "transaction replays: {} attempted, {} succeeded, {} failed; not replayed or failed: [{}]; commits in flight: {} committed, {} not committed, {} unknown",
        n("attempted"),
        n("succeeded"),
        n("failed"),
        refused.join(", "),
        o("committed"),
        o("not_committed"),
        o("unknown")
    )
}

/// Every error a client saw was an outcome nobody can know (08006):
/// transactions open at the kill were replayed, not rolled back with
/// 40001, and COMMITs in flight were found out with their tokens where the
/// new primary could say.
pub(crate) fn only_unknown_outcomes(report: &Report) {
    for c in &report.clients {
        for (_, code, msg) in &c.errors {
            // (A COMMIT whose token lookup failed stays unknown too.)
            assert_eq!(code, "08006", "{:?} client was told {msg}", c.kind);
        }
    }
}

/// No transaction of the workload's left one of its two rows without the
/// other (a half-applied transaction).
pub(crate) async fn no_half_applied_transactions(c: &Cluster) {
    let leader = c.leader();
    let direct = common::pg_client(c.port_of(&leader), "postgres", "postgres", "app").await;
    let halves: i64 = direct
        .query_one(
            "SELECT count(*) FROM failover_log a WHERE a.id >= $1 AND NOT EXISTS \
             (SELECT 1 FROM failover_log b WHERE b.id = CASE WHEN a.id % 2 = 1 THEN a.id + 1 ELSE a.id - 1 END)",
            &[&workload::KEYED_FROM],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(halves, 0, "half-applied transactions on {leader}");
}

fn every_writer_resumed(report: &Report, after: Instant) {
    for c in &report.clients {
        assert!(
            c.last_ok.is_some_and(|t| t > after),
            "{:?} client never succeeded after the event",
            c.kind
        );
    }
}

#[tokio::test]
async fn planned_switchover_no_errors_no_disconnects_no_lost_writes() {
    let turn = cluster::turn().await;
    let c = turn.sync_cluster().await;
    c.run_async(&["wait-healthy"]).await;
    let p = proxy(c).await;
    let old = c.leader();
    // A client's session parameters move with it to the new primary.
    let (keeper, conn) = tokio_postgres::connect(
        &format!("{} application_name=keeper", url(&p)),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    keeper
        .simple_query("SET TimeZone = 'Asia/Tokyo'")
        .await
        .unwrap();
    let mut event_at = Instant::now();
    let report = around(&p, async {
        event_at = Instant::now();
        c.run_async(&["switchover"]).await;
        // Until the old primary streams from the new one again: writes must
        // not go back to it when it returns.
        c.run_async(&["wait-healthy"]).await;
        let new = c.leader();
        pgkeel_sees(&p, "the new leader as primary", |t| {
            t.primary.as_ref().is_some_and(|m| m.name == new)
        })
        .await;
    })
    .await;
    let show = |sql: &'static str| {
        let k = &keeper;
        async move {
            k.simple_query(sql)
                .await
                .unwrap()
                .into_iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .unwrap()
        }
    };
    let new_port: u16 = show("/* pgkeel: primary */ SELECT inet_server_port()::text")
        .await
        .parse()
        .unwrap();
    assert_eq!(
        (
            show("SHOW application_name").await,
            show("SHOW TimeZone").await
        ),
        ("keeper".into(), "Asia/Tokyo".into())
    );
    let new = c.leader();
    assert_eq!(
        new_port,
        c.port_of(&new),
        "the session now runs on the new leader"
    );
    let failovers = p.shared().topology.failovers();
    p.shutdown().await;
    c.run_async(&["wait-healthy"]).await;
    assert_ne!(new, old);
    assert_eq!(
        report.errors(),
        0,
        "clients saw errors through a planned switchover"
    );
    assert_eq!(report.disconnects(), 0);
    every_writer_resumed(&report, event_at);
    all_acked_writes_present(c, &report).await;
    no_half_applied_transactions(c).await;
    let f = failovers;
    let last = f.last().expect("the failover was recorded");
    assert_eq!(last.kind, "planned");
    assert!(last.ended_at.is_some());
    eprintln!(
        "switchover: primary unavailable {} ms, {} clients held at most",
        last.outage_ms.unwrap(),
        last.held_clients_peak
    );
}

#[tokio::test]
async fn killed_leader_no_disconnects_at_most_one_error_per_client_no_lost_writes() {
    let turn = cluster::turn().await;
    let c = turn.sync_cluster().await;
    c.run_async(&["wait-healthy"]).await;
    let p = proxy(c).await;
    let old = c.leader();
    let mut event_at = Instant::now();
    let report = around(&p, async {
        event_at = Instant::now();
        c.run_async(&["kill-leader"]).await;
        pgkeel_sees(&p, "a new primary", |t| {
            t.primary.as_ref().is_some_and(|m| m.name != old)
        })
        .await;
    })
    .await;
    let failovers = p.shared().topology.failovers();
    eprintln!("{}", replays(&p));
    p.shutdown().await;
    let old: &'static str = Box::leak(old.into_boxed_str());
    tokio::task::spawn_blocking(move || c.run(&["start-member", old]))
        .await
        .unwrap();
    c.run_async(&["wait-healthy"]).await;
    assert_eq!(report.disconnects(), 0, "client connections broke");
    only_unknown_outcomes(&report);
    for cl in &report.clients {
        assert!(
            cl.errors.len() <= 1,
            "{:?} client saw {} errors",
            cl.kind,
            cl.errors.len()
        );
    }
    every_writer_resumed(&report, event_at);
    all_acked_writes_present(c, &report).await;
    no_half_applied_transactions(c).await;
    let last = failovers.last().expect("the failover was recorded");
    assert_eq!(last.kind, "unplanned");
    eprintln!(
        "leader killed: primary unavailable {} ms, {} clients held at most, {} errors returned",
        last.outage_ms.unwrap(),
        last.held_clients_peak,
        last.errors_returned
    );
}

#[tokio::test]
async fn killed_replica_no_errors() {
    let turn = cluster::turn().await;
    let c = turn.sync_cluster().await;
    c.run_async(&["wait-healthy"]).await;
    let p = proxy(c).await;
    let leader = c.leader();
    let replica: &'static str = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    let report = around(&p, async {
        tokio::task::spawn_blocking(move || c.run(&["kill-member", replica]))
            .await
            .unwrap();
        pgkeel_sees(&p, "the killed replica gone", |t| {
            !t.members
                .iter()
                .any(|m| m.member.name == replica && m.healthy)
        })
        .await;
    })
    .await;
    p.shutdown().await;
    tokio::task::spawn_blocking(move || c.run(&["start-member", replica]))
        .await
        .unwrap();
    c.run_async(&["wait-healthy"]).await;
    assert_eq!(report.errors(), 0, "a replica going away caused errors");
    assert_eq!(report.disconnects(), 0);
}

fn suspicions(p: &pgkeel::ProxyHandle, result: &str) -> u64 {
    p.shared()
        .metrics
        .suspicions_total
        .with_label_values(&[result])
        .get()
}

/// Holds so far from `pgkeel_hold_seconds`: count, seconds in all, and
/// how many took at most 100 ms.
fn holds(p: &pgkeel::ProxyHandle) -> (u64, f64, u64) {
    let h = &p.shared().metrics.hold_seconds;
    let within = h
        .metric()
        .get_histogram()
        .get_bucket()
        .iter()
        .find(|b| (b.upper_bound() - 0.1).abs() < 1e-9)
        .map_or(0, |b| b.cumulative_count());
    (h.get_sample_count(), h.get_sample_sum(), within)
}

/// Idle connections of `user`'s pool on the member at `port`.
fn idle_on(p: &pgkeel::ProxyHandle, port: u16, user: &str) -> usize {
    p.shared()
        .pools
        .all()
        .iter()
        .filter(|pool| pool.key.port == port && pool.key.user == user)
        .map(|pool| pool.idle_count())
        .sum()
}

#[tokio::test]
async fn terminated_backend_is_suspected_then_cleared_and_breaks_no_connection() {
    let turn = cluster::turn().await;
    let c = turn.sync_cluster().await;
    c.run_async(&["wait-healthy"]).await;
    let p = proxy_with(c, "pool_size = 20").await;
    let leader = c.leader();
    let direct = common::pg_client(c.port_of(&leader), "postgres", "postgres", "app").await;
    // The victim: inside a transaction, so its server connection is its own.
    let victim = connect(p.local_addr(), "app", "app_password", "app")
        .await
        .unwrap();
    let failovers_before = p.shared().topology.failovers().len();
    let (raised, cleared, confirmed) = (
        suspicions(&p, "raised"),
        suspicions(&p, "cleared"),
        suspicions(&p, "confirmed"),
    );
    let holds_before = holds(&p);
    let mut took = Duration::ZERO;
    let report = around(&p, async {
        victim.batch_execute("BEGIN").await.unwrap();
        let pid: i32 = victim
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        let at = Instant::now();
        direct
            .execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || async {
                suspicions(&p, "cleared") > cleared
            })
            .await,
            "the suspicion was not cleared"
        );
        took = at.elapsed();
    })
    .await;
    let holds_after = holds(&p);
    // The victim learns its transaction is gone (the server's own error:
    // no failover happened), and carries on.
    let e = victim.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(sqlstate(&e), "57P01", "{e}");
    victim.simple_query("ROLLBACK").await.unwrap();
    victim.simple_query("SELECT 1").await.unwrap();
    assert!(!victim.is_closed());
    // Not asserted: on a loaded machine a health check timing out is a
    // failover of its own (that a cleared suspicion is none is a unit test).
    let failovers = p.shared().topology.failovers().len() - failovers_before;
    let (n, sum, within) = (
        holds_after.0 - holds_before.0,
        holds_after.1 - holds_before.1,
        holds_after.2 - holds_before.2,
    );
    eprintln!(
        "pg_terminate_backend: suspicion raised and seen cleared {:.1} ms after the terminate (polled every 50 ms); \
         {n} transactions held, {:.2} ms on average, {within} of them within 100 ms; \
         {failovers} failovers recorded meanwhile",
        took.as_secs_f64() * 1e3,
        if n > 0 { sum * 1e3 / n as f64 } else { 0.0 },
    );
    let counts = (
        suspicions(&p, "raised") - raised,
        suspicions(&p, "cleared") - cleared,
        suspicions(&p, "confirmed") - confirmed,
    );
    p.shutdown().await;
    assert_eq!(counts, (1, 1, 0), "suspicions raised, cleared, confirmed");
    assert_eq!(report.disconnects(), 0, "client connections broke");
    assert_eq!(report.errors(), 0, "other clients saw errors");
}

#[tokio::test]
async fn killed_leader_under_heavy_load_with_idle_connections_breaks_no_connection() {
    let turn = cluster::turn().await;
    let repeat: usize = std::env::var("PGKEEL_KILL_REPEAT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let c = turn.sync_cluster().await;
    let mut broken = Vec::new();
    for run in 1..=repeat {
        c.run_async(&["wait-healthy"]).await;
        // The leader killed last time was replaced: its successor's
        // synchronous standby must stream before the next kill, or its
        // commits wait for one (no client progress, whatever pgkeel does).
        c.wait_synchronous().await;
        let p = proxy_with(c, "pool_size = 20\nmin_pool_size = 20").await;
        let old = c.leader();
        let old_port = c.port_of(&old);
        let raised = suspicions(&p, "raised");
        let delays = &p.shared().metrics.suspicion_hold_delay_seconds;
        let mut idle_at_kill = 0;
        let report = around_with(&p, HEAVY, async {
            // Under load: writes flowing (a fresh synchronous cluster may
            // take a moment to accept them) and idle connections pooled.
            let flowing = p.shared().metrics.transactions_completed() + 500;
            assert!(
                wait_until(Duration::from_secs(30), || async {
                    p.shared().metrics.transactions_completed() > flowing
                })
                .await,
                "no write load before the kill"
            );
            assert!(
                wait_until(Duration::from_secs(10), || async {
                    idle_on(&p, old_port, "app") > 0
                })
                .await,
                "no idle pooled connection to the leader"
            );
            idle_at_kill = idle_on(&p, old_port, "app");
            c.run_async(&["kill-leader"]).await;
        })
        .await;
        let failovers = p.shared().topology.failovers();
        let (n, sum) = (delays.get_sample_count(), delays.get_sample_sum());
        eprintln!(
            "kill {run}/{repeat}: {} broken connections, {} errors in {} clients, {idle_at_kill} idle \
             connections to the leader at the kill; {} suspicions raised ({} confirmed), \
             {:.2} ms from a connection's end to the hold on average; outage {} ms",
            report.disconnects(),
            report.errors(),
            report.clients_with_errors(),
            suspicions(&p, "raised") - raised,
            suspicions(&p, "confirmed"),
            if n > 0 { sum * 1e3 / n as f64 } else { 0.0 },
            failovers.last().and_then(|f| f.outage_ms).unwrap_or(0),
        );
        eprintln!("kill {run}/{repeat}: {}", replays(&p));
        p.shutdown().await;
        let old: &'static str = Box::leak(old.into_boxed_str());
        tokio::task::spawn_blocking(move || c.run(&["start-member", old]))
            .await
            .unwrap();
        all_acked_writes_present(c, &report).await;
        no_half_applied_transactions(c).await;
        only_unknown_outcomes(&report);
        for cl in &report.clients {
            // A second error would be a request lent a dead connection.
            assert!(
                cl.errors.len() <= 1,
                "kill {run}: {:?} client saw {} errors",
                cl.kind,
                cl.errors.len()
            );
        }
        broken.push(report.disconnects());
    }
    c.run_async(&["wait-healthy"]).await;
    eprintln!("broken client connections per kill: {broken:?}");
    assert!(
        broken.iter().all(|b| *b == 0),
        "client connections broke: {broken:?}"
    );
}
