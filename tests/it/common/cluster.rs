//! One real Patroni cluster (etcd + three PostgreSQL 15 members) for the
//! whole test binary, brought up by `scripts/cluster.sh` on free ports in a
//! temporary directory. A reaper process tears it down once the test process
//! exits, whichever way it exits.
//!
//! Tests that switch leaders, kill members, stop etcd or pause replay take
//! turns (`turn()`), each from a whole, healthy cluster in the replication
//! mode it asks for: asynchronous (`Turn::cluster`) or Patroni's synchronous
//! mode (`Turn::sync_cluster`), switched at run time with `patronictl
//! edit-config` instead of starting a second cluster. Tests that change
//! nothing in it share it, alongside each other (`shared_turn()`).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub struct Cluster {
    pub dir: PathBuf,
    pub scope: String,
    pub etcd_port: u16,
    pub etcd_peer_port: u16,
    pub pg_ports: [u16; 3],
    pub api_ports: [u16; 3],
    /// Patroni's synchronous_mode as last set: no acknowledged commit is
    /// lost when the leader dies.
    synchronous: AtomicBool,
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

fn shared() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        std::thread::spawn(Cluster::start)
            .join()
            .expect("the Patroni cluster starts")
    })
}

/// The cluster's turns, across every module of the binary: a test that
/// changes the cluster has it to itself (`turn`); tests that only need it
/// steady share it (`shared_turn`). A tokio lock: it is not poisoned when a
/// test fails while holding it.
static TURN: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A test's exclusive use of the cluster, until it is dropped.
pub struct Turn {
    _guard: tokio::sync::RwLockWriteGuard<'static, ()>,
}

/// Waits for the cluster to itself, for a test that changes it (switches
/// leaders, kills members, stops etcd, pauses replay). Hold it for the
/// whole test.
pub async fn turn() -> Turn {
    Turn {
        _guard: TURN.write().await,
    }
}

impl Turn {
    /// The cluster, whole and healthy, replicating asynchronously.
    pub async fn cluster(&self) -> &'static Cluster {
        prepared(false).await
    }

    /// The cluster, whole and healthy, in synchronous mode with a
    /// synchronous standby chosen (for tests that count lost writes).
    pub async fn sync_cluster(&self) -> &'static Cluster {
        prepared(true).await
    }
}

/// A test's share of the cluster, next to other tests that change nothing
/// in it, until it is dropped.
pub struct SharedTurn {
    _guard: tokio::sync::RwLockReadGuard<'static, ()>,
}

/// Waits until no test changes the cluster, then shares it, whole and
/// healthy, in whichever replication mode it runs, with the other tests
/// that change nothing: leaders, members and etcd stay as they are
/// (scratch etcd scopes, tables and pgkeel instances of their own are fine).
pub async fn shared_turn() -> (SharedTurn, &'static Cluster) {
    let guard = TURN.read().await;
    let c = tokio::task::spawn_blocking(shared).await.unwrap();
    let whole = tokio::task::spawn_blocking(|| shared().healthy_now())
        .await
        .unwrap();
    if whole {
        return (SharedTurn { _guard: guard }, c);
    }
    // An earlier test failed and left it broken: repair it alone, then share.
    drop(guard);
    let exclusive = TURN.write().await;
    tokio::task::spawn_blocking(|| shared().repair())
        .await
        .unwrap();
    (
        SharedTurn {
            _guard: exclusive.downgrade(),
        },
        c,
    )
}

async fn prepared(synchronous: bool) -> &'static Cluster {
    tokio::task::spawn_blocking(move || {
        let c = shared();
        c.repair();
        c.set_synchronous(synchronous);
        c
    })
    .await
    .expect("the cluster is prepared")
}

impl Cluster {
    fn start() -> Cluster {
        let p: [u16; 8] = free_ports();
        let dir = std::env::temp_dir().join(format!("pgkeel-cluster-test-{}", std::process::id()));
        let c = Cluster {
            dir,
            scope: format!("pgkeel-test-{}", std::process::id()),
            etcd_port: p[0],
            etcd_peer_port: p[1],
            pg_ports: [p[2], p[3], p[4]],
            api_ports: [p[5], p[6], p[7]],
            synchronous: AtomicBool::new(false),
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
            // Bootstraps asynchronous; `set_synchronous` switches it later.
            .env("PGKEEL_SYNC_MODE", "false");
        c
    }

    /// Brings back whatever an earlier test left stopped (etcd, a killed
    /// member; a no-op for what runs), then waits until the cluster is healthy.
    fn repair(&self) {
        self.run(&["start-etcd"]);
        for m in ["pg1", "pg2", "pg3"] {
            self.run(&["start-member", m]);
        }
        self.run(&["wait-healthy"]);
    }

    /// True when the cluster is healthy right now (one check, no waiting).
    fn healthy_now(&self) -> bool {
        self.command("wait-healthy")
            .env("PGKEEL_UP_TIMEOUT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Switches Patroni's synchronous_mode when it differs, then waits until
    /// the leader runs in that mode: a synchronous standby streaming, or
    /// none named. (Checked on every turn: after a failover the new leader
    /// names its synchronous standby anew.)
    fn set_synchronous(&self, on: bool) {
        if self.synchronous.load(Ordering::SeqCst) != on {
            let out = Command::new("patronictl")
                .arg("-c")
                .arg(self.dir.join("pg1/patroni.yml"))
                .args(["edit-config", "--quiet", "--force", "--set"])
                .arg(format!("synchronous_mode={on}"))
                .output()
                .expect("patronictl runs");
            assert!(
                out.status.success(),
                "patronictl edit-config failed:\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            self.synchronous.store(on, Ordering::SeqCst);
        }
        let sql = if on {
            "SELECT current_setting('synchronous_standby_names') <> '' AND EXISTS (SELECT 1 FROM pg_stat_replication WHERE sync_state = 'sync' AND state = 'streaming')"
        } else {
            "SELECT current_setting('synchronous_standby_names') = ''"
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let leader = self.leader();
            if !leader.is_empty()
                && self.psql(self.port_of(&leader), sql) == "t"
                && (!on || self.sync_standby_registered(&leader))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the leader did not run with synchronous_mode={on} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the leader has a synchronous standby streaming again
    /// (after a failover the new leader names one anew; until then commits
    /// wait for it), for tests that kill one leader after another.
    pub async fn wait_synchronous(&'static self) {
        tokio::task::spawn_blocking(move || self.set_synchronous(true))
            .await
            .expect("the synchronous standby check runs");
    }

    /// Patroni's `sync` key names `leader` and a standby that streams to
    /// it synchronously: only then will Patroni promote that standby if the
    /// leader dies (it updates the key after the server's own setting, so
    /// a kill between the two leaves no member it may promote).
    fn sync_standby_registered(&self, leader: &str) -> bool {
        let out = Command::new("etcdctl")
            .arg(format!("--endpoints={}", self.etcd_url()))
            .args(["get", "--print-value-only"])
            .arg(format!("/service/{}/sync", self.scope))
            .output();
        let Ok(out) = out else { return false };
        let key: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        let standby = key["sync_standby"].as_str().unwrap_or("");
        key["leader"].as_str() == Some(leader)
            && !standby.is_empty()
            && self.psql(
                self.port_of(leader),
                &format!("SELECT EXISTS (SELECT 1 FROM pg_stat_replication WHERE application_name = '{standby}' AND sync_state = 'sync' AND state = 'streaming')"),
            ) == "t"
    }

    /// Patroni's synchronous_mode as last set.
    pub fn synchronous(&self) -> bool {
        self.synchronous.load(Ordering::SeqCst)
    }

    /// One value from `sql` run as postgres on `port` ("" when it fails).
    fn psql(&self, port: u16, sql: &str) -> String {
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "postgres", "-d", "postgres", "-Atc", sql])
            .env("PGPASSWORD", "postgres")
            .env("PGCONNECT_TIMEOUT", "2")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
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
