//! The chaos run: the real 3-member cluster in synchronous mode, pgkeel in
//! front (transaction replay on, commit tokens on), and a mixed load on
//! persistent connections: autocommit writers, two-row write transactions,
//! readers (half of them with a named prepared statement) and a
//! session-mode client, while events are injected one after another: the
//! leader killed, a planned switchover, a replica killed, etcd restarted,
//! the leader frozen (SIGSTOP) until another member leads, pgkeel's config
//! reloaded. After each event every client must make progress again (no
//! fixed waits). At the end: every acknowledged write is on the final
//! leader, no transaction half-applied, no connection broken, and the only
//! errors are outcomes nobody can know (an autocommit write in flight at a
//! crash: 08006; a session-mode client's session state lost with its
//! server). One line sums it up.
//!
//! `PGKEEL_CHAOS_EVENTS` events, cycling through the kinds (each once by
//! default; more by hand). The frozen leader only with
//! `PGKEEL_CHAOS_PAUSE=1` (see `kinds`).

use crate::common;
use crate::failover::{
    all_acked_writes_present, no_half_applied_transactions, only_unknown_outcomes, pgkeel_sees,
    replays, url,
};
use crate::support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use support::workload;
use support::*;
use tokio::sync::watch;

const KINDS: [&str; 6] = [
    "kill-leader",
    "switchover",
    "kill-replica",
    "restart-etcd",
    "pause-leader",
    "reload",
];

/// The kinds this run injects: the frozen leader only with
/// `PGKEEL_CHAOS_PAUSE=1`. Woken, a frozen leader sometimes takes the lead
/// back from the member Patroni promoted meanwhile, which then cannot
/// follow it (a newer timeline): the cluster needs a rebuild, and the
/// other tests sharing it would fail. Patroni's matter, but not for CI.
fn kinds() -> Vec<&'static str> {
    let pause = std::env::var("PGKEEL_CHAOS_PAUSE").is_ok_and(|v| v == "1");
    KINDS
        .into_iter()
        .filter(|k| pause || *k != "pause-leader")
        .collect()
}

fn config(c: &Cluster, pool_size: u32) -> String {
    c.pgkeel_config(
        &c.scope,
        &format!(
            "pool_size = {pool_size}\n[failover]\nhold_timeout = \"60s\"\ncommit_outcome = \"token\""
        ),
    )
    // The superuser's clients are session-mode ones.
    .replace(
        "name = \"postgres\"\npassword = \"postgres\"",
        "name = \"postgres\"\npassword = \"postgres\"\npool_mode = \"session\"",
    )
}

/// What the session-mode client saw.
#[derive(Default)]
struct SessionClient {
    ok: AtomicU64,
    errors: std::sync::Mutex<Vec<(String, String)>>,
    disconnects: AtomicU64,
}

/// A session-mode client reading in a loop on one connection (a new one
/// only if it broke, which counts as broken).
async fn session_client(
    addr: std::net::SocketAddr,
    seen: Arc<SessionClient>,
    stop: watch::Receiver<bool>,
) {
    let mut conn: Option<tokio_postgres::Client> = None;
    while !*stop.borrow() {
        let c = match &conn {
            Some(c) if !c.is_closed() => c,
            Some(_) => {
                seen.disconnects.fetch_add(1, Ordering::Relaxed);
                conn = None;
                continue;
            }
            None => match connect(addr, "postgres", "postgres", "app").await {
                Ok(c) => {
                    conn = Some(c);
                    continue;
                }
                Err(e) => {
                    seen.errors
                        .lock()
                        .unwrap()
                        .push((sqlstate(&e), format!("connect: {e}")));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        match c.simple_query("SELECT count(*) FROM failover_log").await {
            Ok(_) => {
                seen.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => seen.errors.lock().unwrap().push((
                sqlstate(&e),
                e.as_db_error()
                    .map_or(e.to_string(), |d| d.message().to_owned()),
            )),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A member other than the leader.
fn a_replica(c: &Cluster) -> &'static str {
    let leader = c.leader();
    ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|n| *n != leader)
        .expect("three members")
}

async fn run(c: &'static Cluster, args: Vec<String>) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        c.run(&args)
    })
    .await
    .unwrap();
}

/// The cluster is healthy within `secs` seconds.
async fn healthy_within(c: &'static Cluster, secs: u32) -> bool {
    tokio::task::spawn_blocking(move || {
        c.command("wait-healthy")
            .env("PGKEEL_UP_TIMEOUT", secs.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap()
}

async fn settled(c: &'static Cluster, p: &pgkeel::ProxyHandle) {
    c.run_async(&["wait-healthy"]).await;
    c.wait_synchronous().await;
    let leader = c.leader();
    pgkeel_sees(p, "the leader as primary", |t| {
        t.primary.as_ref().is_some_and(|m| m.name == leader)
    })
    .await;
}

/// Injects one event of `kind`, and waits until the cluster settled after it.
async fn inject(
    c: &'static Cluster,
    p: &pgkeel::ProxyHandle,
    kind: &str,
    file: &std::path::Path,
    round: usize,
) {
    match kind {
        "kill-leader" | "pause-leader" => {
            let old = c.leader();
            let said = c
                .run_async(if kind == "kill-leader" {
                    &["kill-leader"]
                } else {
                    &["pause-leader"]
                })
                .await;
            // A killed leader is replaced. A frozen one is too, but once
            // woken Patroni may hand it the lead again: then pgkeel must
            // follow it back (the clients' checks at the end still hold).
            let moved = wait_until(Duration::from_secs(40), || async {
                let leader = if kind == "kill-leader" {
                    None
                } else {
                    Some(c.leader())
                };
                p.shared()
                    .topology
                    .load()
                    .primary
                    .as_ref()
                    .is_some_and(|m| m.name != old || leader.as_deref() == Some(m.name.as_str()))
            })
            .await;
            assert!(
                moved,
                "after {kind} ({said}): etcd's leader is {}, pgkeel's topology {:?}",
                c.leader(),
                p.shared().topology.load()
            );
            if kind == "kill-leader" {
                run(c, vec!["start-member".into(), old]).await;
            } else if !healthy_within(c, 60).await {
                // A leader frozen and woken may leave a member that cannot
                // rewind and rejoin (the old leader, or the one promoted
                // meanwhile if Patroni hands the lead back): an operator
                // rebuilds it. Patroni's matter, not the clients'.
                let done = c.run_async(&["reinit-stragglers"]).await;
                eprintln!("chaos: after {old}'s pause the cluster did not heal: {done}");
            }
        }
        "switchover" => {
            c.run_async(&["switchover"]).await;
        }
        "kill-replica" => {
            let r = a_replica(c);
            run(c, vec!["kill-member".into(), r.into()]).await;
            run(c, vec!["start-member".into(), r.into()]).await;
        }
        "restart-etcd" => {
            c.run_async(&["stop-etcd"]).await;
            c.run_async(&["start-etcd"]).await;
        }
        "reload" => {
            std::fs::write(file, config(c, 10 + (round % 2) as u32 * 4)).unwrap();
            p.reload(file).expect("the new config loads");
        }
        other => unreachable!("{other}"),
    }
    settled(c, p).await;
}

#[tokio::test]
async fn chaos_run_loses_nothing_and_breaks_no_connection() {
    let turn = cluster::turn().await;
    let c = turn.sync_cluster().await;
    let events: usize = std::env::var("PGKEEL_CHAOS_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(kinds().len());
    settled_cluster(c).await;
    let leader = common::pg_client(c.port_of(&c.leader()), "postgres", "postgres", "app").await;
    leader
        .batch_execute(pgkeel::commit_token::SQL)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pgkeel.toml");
    std::fs::write(&file, config(c, 10)).unwrap();
    let p = start(&config(c, 10)).await;
    connect(p.local_addr(), "app", "app_password", "app")
        .await
        .unwrap()
        .simple_query(workload::SCHEMA)
        .await
        .unwrap();

    let (stop_tx, stop_rx) = watch::channel(false);
    let (clients, progress) = workload::start_with(
        &url(&p),
        4,
        4,
        2,
        Duration::from_millis(10),
        stop_rx.clone(),
    );
    let session = Arc::new(SessionClient::default());
    let session_task = tokio::spawn(session_client(p.local_addr(), session.clone(), stop_rx));
    let none = vec![0; 10];
    assert!(
        wait_until(Duration::from_secs(30), || async {
            progress.every_client_beyond(&none, 20)
        })
        .await,
        "the load did not start: {:?}",
        progress.counts()
    );
    let started = Instant::now();
    let mut injected: BTreeMap<&str, usize> = BTreeMap::new();
    for round in 0..events {
        let kinds = kinds();
        let kind = kinds[round % kinds.len()];
        let at = progress.counts();
        let session_at = session.ok.load(Ordering::Relaxed);
        inject(c, &p, kind, &file, round).await;
        *injected.entry(kind).or_default() += 1;
        eprintln!(
            "chaos: {kind} injected and settled at {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let resumed = wait_until(Duration::from_secs(60), || async {
            progress.every_client_beyond(&at, 20)
                && session.ok.load(Ordering::Relaxed) > session_at + 5
        })
        .await;
        assert!(
            resumed,
            "clients did not resume after {kind}: {:?} successes each since",
            progress
                .counts()
                .iter()
                .zip(&at)
                .map(|(n, t)| n - t)
                .collect::<Vec<_>>()
        );
    }
    stop_tx.send_replace(true);
    let report = clients.await.unwrap();
    session_task.await.unwrap();
    let summary = replays(&p);
    p.shutdown().await;
    settled_cluster(c).await;

    let mut by_code: BTreeMap<String, usize> = BTreeMap::new();
    for cl in &report.clients {
        for (_, code, _) in &cl.errors {
            *by_code.entry(code.clone()).or_default() += 1;
        }
    }
    let session_errors = session.errors.lock().unwrap().clone();
    for (code, _) in &session_errors {
        *by_code.entry(format!("{code} (session mode)")).or_default() += 1;
    }
    let broken = report.disconnects() + session.disconnects.load(Ordering::Relaxed);
    eprintln!(
        "chaos: {events} events ({injected:?}) in {:.0} s; client errors {by_code:?}; {broken} broken connections; {} acknowledged writes; longest write stall {:.1} s; {summary}",
        started.elapsed().as_secs_f64(),
        report.acked().len(),
        report.longest_write_gap().as_secs_f64(),
    );
    all_acked_writes_present(c, &report).await;
    no_half_applied_transactions(c).await;
    assert_eq!(broken, 0, "client connections broke");
    only_unknown_outcomes(&report);
    for (code, msg) in &session_errors {
        // Its server's session state went with the server: said so, once
        // per loss, never a broken connection.
        assert!(
            code == "08006" && msg.contains("session state"),
            "the session-mode client was told {code} {msg}"
        );
    }
}

/// Healthy, with a synchronous standby streaming.
async fn settled_cluster(c: &'static Cluster) {
    c.run_async(&["wait-healthy"]).await;
    c.wait_synchronous().await;
}
