//! pgkeel following a real Patroni cluster through etcd: planned switchover,
//! a killed leader, an etcd restart, and the watch's edge cases (events
//! between read and watch, noloadbalance tags, vanishing members, a leader
//! key naming a dead server). The binary's one cluster, shared with
//! routing.rs and failover.rs: each test holds its turn, since they change it.

use crate::common;
use crate::support;

use std::time::{Duration, Instant};

use common::cluster::{self, Cluster};
use pgkeel::topology::Role;
use support::*;

async fn proxy(c: &Cluster) -> pgkeel::ProxyHandle {
    start(&c.pgkeel_config(&c.scope, "query_wait_timeout = \"2s\"")).await
}

/// Port and recovery state of the server behind a fresh connection through pgkeel.
async fn where_writes_go(p: &pgkeel::ProxyHandle) -> Result<(u16, bool), String> {
    let client = connect(p.local_addr(), "app", "app_password", "app")
        .await
        .map_err(|e| e.to_string())?;
    let rows = client
        .simple_query("INSERT INTO patroni_writes (at) VALUES (now()) RETURNING inet_server_port(), pg_is_in_recovery()")
        .await
        .map_err(|e| e.to_string())?;
    for m in rows {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            return Ok((r.get(0).unwrap().parse().unwrap(), r.get(1) == Some("t")));
        }
    }
    Err("no row".into())
}

/// The table, once for the binary: tests sharing the cluster run at the
/// same time, and a concurrent `CREATE ... IF NOT EXISTS` of one name can fail.
async fn setup_table(p: &pgkeel::ProxyHandle) {
    static TABLE: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    TABLE
        .get_or_init(|| async {
            let c = connect(p.local_addr(), "app", "app_password", "app")
                .await
                .unwrap();
            c.simple_query(
                "CREATE TABLE IF NOT EXISTS patroni_writes (id serial primary key, at timestamptz)",
            )
            .await
            .unwrap();
        })
        .await;
}

/// Waits until writes through pgkeel land on `port`; returns how long that took.
async fn writes_reach(p: &pgkeel::ProxyHandle, port: u16, within: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < within {
        match where_writes_go(p).await {
            Ok((got, false)) if got == port => return started.elapsed(),
            Ok(other) => last = format!("{other:?}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("writes did not reach port {port} within {within:?}; last: {last}");
}

fn switch_seconds(p: &pgkeel::ProxyHandle) -> (u64, f64) {
    let h = &p.shared().metrics.primary_switch_seconds;
    (h.get_sample_count(), h.get_sample_sum())
}

/// A healthy cluster, and pgkeel following it with its topology settled;
/// returns the proxy and the leader's name.
async fn settled_proxy(c: &'static Cluster) -> (pgkeel::ProxyHandle, String) {
    wait_healthy(c).await;
    let p = proxy(c).await;
    setup_table(&p).await;
    let leader = c.leader();
    topology_settles(&p, &leader).await;
    (p, leader)
}

async fn wait_healthy(c: &'static Cluster) {
    c.run_async(&["wait-healthy"]).await;
}

/// pgkeel's topology agrees: every member healthy, `leader` the primary, others replicas.
async fn topology_settles(p: &pgkeel::ProxyHandle, leader: &str) {
    let ok = wait_until(Duration::from_secs(30), || async {
        let t = p.shared().topology.load();
        t.members.len() == 3
            && t.primary.as_ref().is_some_and(|m| m.name == leader)
            && t.members
                .iter()
                .all(|m| m.healthy && (m.role == Role::Primary) == (m.member.name == leader))
    })
    .await;
    assert!(
        ok,
        "topology did not settle: {:?}",
        p.shared().topology.load()
    );
}

#[tokio::test]
async fn follows_a_planned_switchover() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let (p, old) = settled_proxy(c).await;
    assert_eq!(where_writes_go(&p).await.unwrap(), (c.port_of(&old), false));

    let started = Instant::now();
    c.run_async(&["switchover"]).await;
    let new = c.leader();
    assert_ne!(new, old);
    writes_reach(&p, c.port_of(&new), Duration::from_secs(30)).await;
    eprintln!(
        "switchover: writes through pgkeel reach {new} {:?} after the command",
        started.elapsed()
    );
    let (n, sum) = switch_seconds(&p);
    assert_eq!(n, 1, "one leader change, timed once");
    eprintln!(
        "switchover: leader key to confirmed writable: {:.0} ms (mean of {n})",
        sum / n as f64 * 1000.0
    );
    assert!(p.shared().metrics.leader_changes_total.get() >= 1);

    // The old leader comes back as a replica and pgkeel sees it so.
    wait_healthy(c).await;
    topology_settles(&p, &new).await;
    p.shutdown().await;
}

#[tokio::test]
async fn follows_a_killed_leader_and_sees_it_rejoin() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let (p, old) = settled_proxy(c).await;

    let started = Instant::now();
    c.run_async(&["kill-leader"]).await;
    // The leader key only goes when its lease expires (ttl 10 s).
    let new = loop {
        let l = c.leader();
        if !l.is_empty() && l != old {
            break l;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "no new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    writes_reach(&p, c.port_of(&new), Duration::from_secs(30)).await;
    eprintln!(
        "leader killed: writes through pgkeel reach {new} {:?} after the kill",
        started.elapsed()
    );
    let (n, sum) = switch_seconds(&p);
    assert_eq!(n, 1, "one leader change, timed once");
    eprintln!(
        "leader killed: leader key to confirmed writable: {:.0} ms (mean of {n})",
        sum / n as f64 * 1000.0
    );

    // The dead member is marked down by pgkeel's own checks meanwhile.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.shared()
                .topology
                .load()
                .member(&old)
                .is_none_or(|m| !m.healthy)
        })
        .await
    );
    // Restarted, it rejoins as a replica, and pgkeel sees that.
    let old_name: &'static str = Box::leak(old.clone().into_boxed_str());
    tokio::task::spawn_blocking(move || c.run(&["start-member", old_name]))
        .await
        .unwrap();
    wait_healthy(c).await;
    topology_settles(&p, &new).await;
    p.shutdown().await;
}

#[tokio::test]
async fn keeps_serving_through_an_etcd_restart() {
    let turn = cluster::turn().await;
    let c = turn.cluster().await;
    let (p, leader) = settled_proxy(c).await;
    let client = connect(p.local_addr(), "app", "app_password", "app")
        .await
        .unwrap();

    c.run_async(&["stop-etcd"]).await;
    assert!(
        wait_until(Duration::from_secs(15), || async {
            p.shared().topology.load().stale
        })
        .await,
        "not marked stale"
    );
    // Clients carry on with the last known topology, old and new.
    for _ in 0..10 {
        client
            .simple_query("INSERT INTO patroni_writes (at) VALUES (now())")
            .await
            .unwrap();
    }
    assert_eq!(where_writes_go(&p).await.unwrap().0, c.port_of(&leader));
    assert_eq!(p.shared().metrics.etcd_connected.get(), 0);

    c.run_async(&["start-etcd"]).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            !p.shared().topology.load().stale
        })
        .await,
        "watch did not resume"
    );
    assert_eq!(p.shared().metrics.etcd_connected.get(), 1);
    // Patroni itself may need a moment to notice etcd is back.
    wait_healthy(c).await;
    c.run_async(&["switchover"]).await;
    let new = c.leader();
    writes_reach(&p, c.port_of(&new), Duration::from_secs(30)).await;
    client
        .simple_query("/* pgkeel: primary */ SELECT 1")
        .await
        .ok();
    wait_healthy(c).await;
    p.shutdown().await;
}

/// A scratch scope: keys written by the test itself.
fn scratch(name: &str) -> String {
    format!("pgkeel-scratch-{}-{name}", std::process::id())
}

/// Writes a Patroni member key for `name` into a scratch scope.
async fn put_member(
    etcd: &mut etcd_client::Client,
    prefix: &str,
    name: &str,
    port: u16,
    role: &str,
    tags: &str,
) {
    etcd.put(
        format!("{prefix}members/{name}"),
        member_json(port, role, tags),
        None,
    )
    .await
    .unwrap();
}

fn member_json(port: u16, role: &str, tags: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:1/patroni","state":"running","role":"{role}","xlog_location":100,"timeline":1{tags}}}"#
    )
}

#[tokio::test]
async fn no_event_between_read_and_watch_is_lost() {
    // Changes nothing in the cluster: shares it with the others that do not.
    let (_turn, c) = cluster::shared_turn().await;
    let prefix = format!("/service/{}/", scratch("gap"));
    let settings = pgkeel::topology::etcd::EtcdSettings {
        endpoints: vec![c.etcd_url()],
        prefix: prefix.clone(),
        user: None,
        dial_timeout: Duration::from_secs(2),
    };
    let mut client = pgkeel::topology::etcd::connect(&settings).await.unwrap();
    client
        .put(
            format!("{prefix}members/a"),
            member_json(1, "master", ""),
            None,
        )
        .await
        .unwrap();
    client
        .put(format!("{prefix}leader"), "a", None)
        .await
        .unwrap();
    let (mut state, rev) = pgkeel::topology::etcd::read_scope(&mut client, &prefix)
        .await
        .unwrap();
    assert_eq!(state.leader.as_deref(), Some("a"));
    // Changes after the read, before the watch exists.
    client
        .put(
            format!("{prefix}members/b"),
            member_json(2, "replica", ""),
            None,
        )
        .await
        .unwrap();
    client
        .put(format!("{prefix}leader"), "b", None)
        .await
        .unwrap();
    client
        .delete(format!("{prefix}members/a"), None)
        .await
        .unwrap();
    let mut stream = pgkeel::topology::etcd::watch_scope(&mut client, &prefix, rev + 1)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(state.leader.as_deref() == Some("b")
        && !state.members.contains_key("a")
        && state.members.contains_key("b"))
    {
        assert!(Instant::now() < deadline, "events missed: {state:?}");
        let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        pgkeel::topology::etcd::apply_response(&mut state, &prefix, &resp);
    }
    client
        .delete(
            prefix.clone(),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn noloadbalance_tags_vanishing_members_and_dead_leaders() {
    // Changes nothing in the cluster: shares it with the others that do not.
    let (_turn, c) = cluster::shared_turn().await;
    wait_healthy(c).await;
    let scope = scratch("tags");
    let prefix = format!("/service/{scope}/");
    let mut etcd = etcd_client::Client::connect([c.etcd_url()], None)
        .await
        .unwrap();
    // Point a scratch scope at the real servers: the leader and one replica.
    let leader = c.leader();
    let replica = ["pg1", "pg2", "pg3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap();
    put_member(&mut etcd, &prefix, "L", c.port_of(&leader), "master", "").await;
    put_member(
        &mut etcd,
        &prefix,
        "R",
        c.port_of(replica),
        "replica",
        r#","tags":{"noloadbalance":true}"#,
    )
    .await;
    etcd.put(format!("{prefix}leader"), "L", None)
        .await
        .unwrap();

    let p = start(&c.pgkeel_config(&scope, "query_wait_timeout = \"1s\"")).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let t = p.shared().topology.load();
            t.primary.as_ref().is_some_and(|m| m.name == "L")
                && t.member("R")
                    .is_some_and(|r| r.healthy && r.role == Role::Replica)
        })
        .await,
        "{:?}",
        p.shared().topology.load()
    );
    let t = p.shared().topology.load_full();
    assert!(
        !t.member("R").unwrap().readable(),
        "noloadbalance members never take reads"
    );
    assert!(t.member("L").unwrap().readable());

    // A member whose key disappears leaves the topology.
    etcd.delete(format!("{prefix}members/R"), None)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.shared().topology.load().member("R").is_none()
        })
        .await
    );

    // A leader key naming a server that does not answer is not routed to.
    let dead = dead_port();
    put_member(&mut etcd, &prefix, "D", dead, "master", "").await;
    etcd.put(format!("{prefix}leader"), "D", None)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.shared().topology.load().leader.as_deref() == Some("D")
        })
        .await
    );
    assert!(p.shared().topology.load().primary.is_none());
    let (code, _) = http_get(p.admin_addr().unwrap(), "/ready").await;
    assert_eq!(code, 503);
    let e = connect(p.local_addr(), "app", "app_password", "app")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");

    p.shutdown().await;
    etcd.delete(
        prefix,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
}

/// Collects the JSON bodies POSTed to it.
/// Waits until pgkeel holds a client's statement, waiting for a primary.
async fn held_now(p: &pgkeel::ProxyHandle) {
    let held = wait_until(Duration::from_secs(10), || async {
        p.shared().metrics.held_clients.get() > 0
    })
    .await;
    assert!(held, "the statement was never held");
}

async fn webhook_sink() -> (u16, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = s.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            let _ = tx.send(serde_json::from_str(&body[..len]).unwrap());
                            let _ = s
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn held_statements_time_out_or_cancel_and_hooks_hear_of_it() {
    // Changes nothing in the cluster: shares it with the others that do not.
    let (_turn, c) = cluster::shared_turn().await;
    wait_healthy(c).await;
    let scope = scratch("hold");
    let prefix = format!("/service/{scope}/");
    let mut etcd = etcd_client::Client::connect([c.etcd_url()], None)
        .await
        .unwrap();
    let leader = c.leader();
    put_member(&mut etcd, &prefix, "L", c.port_of(&leader), "master", "").await;
    let dead = dead_port();
    put_member(&mut etcd, &prefix, "D", dead, "master", "").await;
    etcd.put(format!("{prefix}leader"), "L", None)
        .await
        .unwrap();

    let events = tempfile::NamedTempFile::new().unwrap();
    let (hook_port, mut posted) = webhook_sink().await;
    let extra = format!(
        "[failover]\nhold_timeout = \"1500ms\"\n[[notify]]\ncommand = \"echo $PGKEEL_EVENT $PGKEEL_KIND $PGKEEL_OLD_LEADER $PGKEEL_NEW_LEADER >> {}\"\nwebhook = \"http://127.0.0.1:{hook_port}/pgkeel\"\n",
        events.path().display()
    );
    let p = start(&format!("{}\n{extra}", c.pgkeel_config(&scope, ""))).await;
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.shared().topology.load().primary.is_some()
        })
        .await
    );
    let client = connect(p.local_addr(), "app", "app_password", "app")
        .await
        .unwrap();
    client
        .simple_query("/* pgkeel: primary */ SELECT 1")
        .await
        .unwrap();

    // The leader key names a member that does not answer: no primary.
    etcd.put(format!("{prefix}leader"), "D", None)
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            p.shared()
                .topology
                .failovers()
                .last()
                .is_some_and(|f| f.ended_at.is_none())
        })
        .await
    );

    // Held, then told after hold_timeout; the connection stays usable.
    let started = Instant::now();
    let e = client
        .simple_query("/* pgkeel: primary */ SELECT 1")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "57P03", "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "answered before hold_timeout"
    );
    assert!(!client.is_closed());

    // A cancel ends a held statement at once: 57014, not hold_timeout's 57P03.
    let token = client.cancel_token();
    let held = tokio::spawn(async move {
        (
            client.simple_query("/* pgkeel: primary */ SELECT 2").await,
            client,
        )
    });
    held_now(&p).await;
    token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    let (r, client) = held.await.unwrap();
    assert_eq!(sqlstate(&r.unwrap_err()), "57014");

    // A statement held while the leader comes back just runs.
    let held = tokio::spawn(async move {
        (
            client.simple_query("/* pgkeel: primary */ SELECT 3").await,
            client,
        )
    });
    held_now(&p).await;
    etcd.put(format!("{prefix}leader"), "L", None)
        .await
        .unwrap();
    let (r, _client) = held.await.unwrap();
    r.expect("held statement runs once a primary is back");

    // Operators heard of it: hooks, /status.
    let f = p.shared().topology.failovers();
    let last = f.last().unwrap();
    assert!(last.ended_at.is_some() && last.kind == "unplanned");
    assert!(last.errors_returned >= 1, "the hold timeout was counted");
    assert!(p.shared().metrics.hold_seconds.get_sample_count() >= 3);
    let (_, status) = http_get(p.admin_addr().unwrap(), "/status").await;
    assert!(status.contains("\"failovers\""));
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let v = tokio::time::timeout(Duration::from_secs(10), posted.recv())
            .await
            .expect("webhook called")
            .unwrap();
        seen.push(v["event"].as_str().unwrap().to_owned());
    }
    for e in ["leader_change", "failover_start", "failover_end"] {
        assert!(seen.iter().any(|s| s == e), "{e} not posted: {seen:?}");
    }
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let log = std::fs::read_to_string(events.path()).unwrap_or_default();
            log.contains("failover_start unplanned L")
                && log.contains("failover_end unplanned L L")
                && log.contains("leader_change")
        })
        .await,
        "{}",
        std::fs::read_to_string(events.path()).unwrap_or_default()
    );
    p.shutdown().await;
    etcd.delete(
        prefix,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn static_mode_finds_the_primary_among_its_servers() {
    // Changes nothing in the cluster: shares it with the others that do not.
    let (_turn, c) = cluster::shared_turn().await;
    wait_healthy(c).await;
    let servers: String = c
        .pg_ports
        .iter()
        .map(|port| format!("[[servers]]\nhost = \"127.0.0.1\"\nport = {port}\n"))
        .collect();
    let toml = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"\"\n[health]\nuser = \"postgres\"\npassword = \"postgres\"\n[[users]]\nname = \"app\"\npassword = \"app_password\"\n{servers}"
    );
    let p = start(&toml).await;
    let leader = c.leader();
    let t = p.shared().topology.load_full();
    assert_eq!(t.primary.as_ref().map(|m| m.port), Some(c.port_of(&leader)));
    assert_eq!(
        t.members
            .iter()
            .filter(|m| m.role == Role::Replica && m.healthy)
            .count(),
        2
    );
    setup_table(&p).await;
    assert_eq!(
        where_writes_go(&p).await.unwrap(),
        (c.port_of(&leader), false)
    );
    p.shutdown().await;
}
