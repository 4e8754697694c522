//! Several pgkeel instances serving one Patroni cluster: each registers in
//! etcd under a lease and lists the others (`/status`, `SHOW PEERS`, the
//! `pgkeel_fleet_instances` gauge); one that stops leaves the list at once,
//! one that is killed leaves it when its lease expires. Real binaries, the
//! real cluster (a shared turn: nothing here changes the cluster).

use std::time::Duration;

use crate::common::cluster;
use crate::support::{http_get, wait_until};

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
