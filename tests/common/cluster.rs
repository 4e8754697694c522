//! One real Patroni cluster (etcd + three PostgreSQL 15 members) per test
//! binary, brought up by `scripts/cluster.sh` on free ports in a temporary
//! directory. A reaper process tears it down once the test process exits,
//! whichever way it exits.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub struct Cluster {
    pub dir: PathBuf,
    pub scope: String,
    pub etcd_port: u16,
    pub etcd_peer_port: u16,
    pub pg_ports: [u16; 3],
    pub api_ports: [u16; 3],
    /// Patroni's synchronous_mode: no acknowledged commit is lost when the leader dies.
    pub synchronous: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Distinct free loopback ports.
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    ports.try_into().unwrap()
}

pub fn shared_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        std::thread::spawn(|| Cluster::start(false))
            .join()
            .expect("the Patroni cluster starts")
    })
}

/// The binary's cluster, in synchronous mode (for tests that count lost writes).
pub fn shared_sync_cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        std::thread::spawn(|| Cluster::start(true))
            .join()
            .expect("the Patroni cluster starts")
    })
}

impl Cluster {
    fn start(synchronous: bool) -> Cluster {
        let p: [u16; 8] = free_ports();
        let dir = std::env::temp_dir().join(format!("pgkeel-cluster-test-{}", std::process::id()));
        let c = Cluster {
            dir,
            scope: format!("pgkeel-test-{}", std::process::id()),
            etcd_port: p[0],
            etcd_peer_port: p[1],
            pg_ports: [p[2], p[3], p[4]],
            api_ports: [p[5], p[6], p[7]],
            synchronous,
        };
        // The reaper first, so even a failed start is cleaned up. It outlives
        // this process by design, so it is never waited for.
        let mut reaper = c.command("reap-after");
        reaper
            .arg(std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own session: whatever tears down this test's session or
        // process group must not take the reaper with it.
        unsafe {
            reaper.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        #[allow(clippy::zombie_processes)] // it outlives this process by design
        reaper.spawn().expect("reaper starts");
        let out = c.command("up").output().expect("scripts/cluster.sh runs");
        assert!(
            out.status.success(),
            "cluster up failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    pub fn command(&self, cmd: &str) -> Command {
        let mut c = Command::new("bash");
        c.arg(repo().join("scripts/cluster.sh"))
            .arg(cmd)
            .env("PGKEEL_CLUSTER_DIR", &self.dir)
            .env("PGKEEL_SCOPE", &self.scope)
            .env("PGKEEL_ETCD_PORT", self.etcd_port.to_string())
            .env("PGKEEL_ETCD_PEER_PORT", self.etcd_peer_port.to_string())
            .env(
                "PGKEEL_PG_PORTS",
                self.pg_ports.map(|p| p.to_string()).join(" "),
            )
            .env(
                "PGKEEL_API_PORTS",
                self.api_ports.map(|p| p.to_string()).join(" "),
            )
            .env("PGKEEL_WITH_PROXY", "0")
            .env("PGKEEL_TTL", "10")
            .env("PGKEEL_LOOP_WAIT", "2")
            .env("PGKEEL_RETRY_TIMEOUT", "4")
            .env(
                "PGKEEL_SYNC_MODE",
                if self.synchronous { "true" } else { "false" },
            );
        c
    }

    /// Runs a cluster.sh command to completion; its stdout, trimmed.
    pub fn run(&self, args: &[&str]) -> String {
        let mut cmd = self.command(args[0]);
        cmd.args(&args[1..]);
        let out = cmd.output().expect("scripts/cluster.sh runs");
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub async fn run_async(&'static self, args: &'static [&'static str]) -> String {
        tokio::task::spawn_blocking(move || self.run(args))
            .await
            .unwrap()
    }

    pub fn leader(&self) -> String {
        self.run(&["leader"])
    }

    pub fn port_of(&self, member: &str) -> u16 {
        let i = ["pg1", "pg2", "pg3"]
            .iter()
            .position(|n| *n == member)
            .expect("member name");
        self.pg_ports[i]
    }

    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// A pgkeel config following this cluster (or `scope`) through etcd.
    pub fn pgkeel_config(&self, scope: &str, proxy_extra: &str) -> String {
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
{proxy_extra}
[admin]
listen = "127.0.0.1:0"
[health]
user = "postgres"
password = "postgres"
interval = "250ms"
timeout = "1s"
[etcd]
endpoints = ["{}"]
scope = "{scope}"
dial_timeout = "1s"
[[users]]
name = "app"
password = "app_password"
[[users]]
name = "postgres"
password = "postgres"
"#,
            self.etcd_url()
        )
    }
}
