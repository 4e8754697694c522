//! Several pgkeel instances serving one Patroni cluster: each registers in
//! etcd under a lease and lists the others (`/status`, `SHOW PEERS`, the
//! `pgkeel_fleet_instances` gauge); one that stops leaves the list at once,
//! one that is killed leaves it when its lease expires. Real binaries, the
//! real cluster (a shared turn, except for the switchover under load, which
//! has the cluster to itself). Two instances under load through a planned
//! switchover lose nothing, and a client listing both in its connection
//! string moves to the second when the first is killed.

use std::time::Duration;

use crate::common::cluster;
use crate::support::workload;
use crate::support::{connect, http_get, url, wait_until};

/// A free loopback address for a binary to listen on.
fn free_addr() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The names `/status` lists under `fleet.instances`.
async fn fleet_names(admin: std::net::SocketAddr) -> Vec<String> {
    let (code, body) = http_get(admin, "/status").await;
    if code != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["fleet"]["instances"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

struct Instance {
    child: std::process::Child,
    _file: tempfile::NamedTempFile,
    addr: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

async fn start(c: &cluster::Cluster, name: &str, prefix: &str, ttl: &str) -> Instance {
    let addr = free_addr();
    let admin = free_addr();
    // The proxy's listen line comes first, the admin endpoint's second.
    let cfg = c
        .pgkeel_config(&c.scope, "")
        .replacen("listen = \"127.0.0.1:0\"", &format!("listen = \"{addr}\""), 1)
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{admin}\"\nusers = [\"postgres\"]"),
            1,
        )
        .replace(
            "dial_timeout = \"1s\"",
            &format!(
                "dial_timeout = \"1s\"\ninstance_name = \"{name}\"\ninstance_ttl = \"{ttl}\"\ninstance_prefix = \"{prefix}\""
            ),
        );
    let (child, file) = crate::support::spawn_binary(&cfg, addr).await;
    Instance {
        child,
        _file: file,
        addr,
        admin,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_of_one_cluster_list_each_other_and_leave() {
    let (_turn, c) = cluster::shared_turn().await;
    // A prefix of this test's own: other runs' instances never show up.
    let prefix = format!("/pgkeel-fleet-test-{}/", std::process::id());
    let mut a = start(c, "a", &prefix, "2s").await;
    // b's lease would outlive the test: only its revoke can remove it in time.
    let mut b = start(c, "b", &prefix, "600s").await;
    for i in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || async {
                fleet_names(i.admin).await == ["a", "b"]
            })
            .await,
            "{} lists {:?}, not a and b",
            i.admin,
            fleet_names(i.admin).await
        );
    }
    // Both serve the cluster: each finds the primary.
    for i in [&a, &b] {
        let out = std::process::Command::new("psql")
            .arg(format!("postgres://postgres:postgres@{}/postgres", i.addr))
            .args(["-XAtc", "/* pgkeel: primary */ SELECT pg_is_in_recovery()"])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "f",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The console and the gauge say the same.
    let out = std::process::Command::new("psql")
        .arg(format!("postgres://postgres:postgres@{}/pgkeel", a.addr))
        .args(["-XAt", "-F", ",", "-c", "SHOW PEERS"])
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = rows.lines().collect();
    assert_eq!(lines.len(), 2, "SHOW PEERS: {rows}");
    assert!(
        lines[0].starts_with(&format!("a,{},", a.addr)) && lines[0].ends_with(",t"),
        "{rows}"
    );
    assert!(
        lines[1].starts_with(&format!("b,{},", b.addr)) && lines[1].ends_with(",f"),
        "{rows}"
    );
    let (_, metrics) = http_get(a.admin, "/metrics").await;
    assert!(
        metrics.contains("\npgkeel_fleet_instances 2\n"),
        "{metrics}"
    );

    // A stopping instance revokes its lease: gone long before its 600 s ttl.
    unsafe { libc::kill(b.child.id() as i32, libc::SIGTERM) };
    b.child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || async {
            fleet_names(a.admin).await == ["a"]
        })
        .await,
        "a still lists {:?} after b stopped",
        fleet_names(a.admin).await
    );

    // A killed one cannot revoke: it leaves when its 2 s lease expires.
    let mut k = start(c, "k", &prefix, "2s").await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            fleet_names(a.admin).await == ["a", "k"]
        })
        .await
    );
    k.child.kill().unwrap();
    k.child.wait().unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            fleet_names(a.admin).await == ["a"]
        })
        .await,
        "a still lists {:?} after k was killed",
        fleet_names(a.admin).await
    );
    a.child.kill().unwrap();
    let _ = a.child.wait();
}

/// Each instance's workload, started at once and stopped together.
fn split_workload(
    instances: [&Instance; 2],
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Vec<(
    tokio::task::JoinHandle<workload::Report>,
    workload::Progress,
)> {
    instances
        .iter()
        .map(|i| {
            workload::start_with_progress(
                &url(i.addr, "app", "app_password", "app"),
                2,
                2,
                2,
                stop.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_under_load_through_a_switchover_and_a_client_moving_on_a_kill() {
    let turn = cluster::turn().await;
    let c = turn.sync_cluster().await;
    c.run_async(&["wait-healthy"]).await;
    let prefix = format!("/pgkeel-fleet-load-{}/", std::process::id());
    let mut a = start(c, "a", &prefix, "10s").await;
    let mut b = start(c, "b", &prefix, "10s").await;
    for i in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(20), || async {
                fleet_names(i.admin).await == ["a", "b"]
            })
            .await,
            "{} lists {:?}, not a and b",
            i.admin,
            fleet_names(i.admin).await
        );
    }
    let setup = connect(a.addr, "app", "app_password", "app").await.unwrap();
    setup.simple_query(workload::SCHEMA).await.unwrap();
    drop(setup);

    // Half of the clients on each instance, through a planned switchover.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let loads = split_workload([&a, &b], &stop_rx);
    let none = vec![0; 6];
    for (_, progress) in &loads {
        assert!(
            wait_until(Duration::from_secs(30), || async {
                progress.every_client_beyond(&none, 5)
            })
            .await,
            "the workload did not start: {:?}",
            progress.counts()
        );
    }
    let old = c.leader();
    c.run_async(&["switchover"]).await;
    c.run_async(&["wait-healthy"]).await;
    let new = c.leader();
    assert_ne!(new, old);
    let at_event: Vec<Vec<u64>> = loads.iter().map(|(_, p)| p.counts()).collect();
    for ((_, progress), since) in loads.iter().zip(&at_event) {
        assert!(
            wait_until(Duration::from_secs(45), || async {
                progress.every_client_beyond(since, 10)
            })
            .await,
            "traffic did not resume after the switchover: {:?} since {since:?}",
            progress.counts()
        );
    }
    stop_tx.send(true).unwrap();
    for (name, (handle, _)) in ["a", "b"].iter().zip(loads) {
        let report = handle.await.unwrap();
        eprintln!(
            "instance {name} through the switchover: {}",
            report.summary()
        );
        assert_eq!(report.errors(), 0, "clients of {name} saw errors");
        assert_eq!(
            report.disconnects(),
            0,
            "clients of {name} lost connections"
        );
    }
    // Each still lists the other.
    for i in [&a, &b] {
        assert_eq!(fleet_names(i.admin).await, ["a", "b"]);
    }

    // A client listing both instances, connected to the first: killed, it
    // reconnects to the second with the same connection string. Without
    // target_session_attrs=read-write: the driver checks it with `SHOW
    // transaction_read_only`, which the read/write split sends to a replica
    // (so every instance looks read-only to it).
    let multi = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=app password=app_password dbname=app connect_timeout=5",
        a.addr.port(),
        b.addr.port()
    );
    let (client, conn) = tokio_postgres::connect(&multi, tokio_postgres::NoTls)
        .await
        .expect("a multi-host connection string reaches an instance");
    tokio::spawn(conn);
    client.simple_query("SELECT 1").await.unwrap();
    // On the first host: killing it breaks this connection (asserted below).
    let killed_at = std::time::Instant::now();
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert!(client.simple_query("SELECT 1").await.is_err(), "a is gone");
    let mut attempts = 0;
    let moved = loop {
        attempts += 1;
        match tokio_postgres::connect(&multi, tokio_postgres::NoTls).await {
            Ok((c2, conn)) => {
                tokio::spawn(conn);
                if let Ok(rows) = c2
                    .simple_query("/* pgkeel: primary */ SELECT pg_is_in_recovery()::text")
                    .await
                {
                    break rows;
                }
            }
            Err(e) => assert!(attempts < 100, "never reconnected: {e}"),
        }
    };
    let took = killed_at.elapsed();
    assert!(
        moved.iter().any(
            |m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("false"))
        ),
        "the second instance reaches the primary"
    );
    eprintln!(
        "a client listing both instances worked again {} ms after the first was killed ({attempts} connection attempt(s))",
        took.as_millis()
    );
    b.child.kill().unwrap();
    let _ = b.child.wait();
}
