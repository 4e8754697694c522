//! Which servers exist, which is the primary, and which are healthy.
//!
//! The topology is an immutable snapshot behind an `ArcSwap`: sessions read
//! it without locks, and one publisher task writes it (`publisher.rs`).
//! Sources: the static `[[servers]]` list, or a Patroni scope followed
//! through etcd (`etcd.rs`, `patroni.rs`); either way pgkeel's own probes
//! (`probe.rs`) decide health and confirm the primary is writable.

pub mod etcd;
pub mod fleet;
pub mod patroni;
pub mod probe;
pub mod publisher;
mod suspicion;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::metrics::Metrics;
use patroni::{PatroniMember, Switchover};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Unknown,
}

/// A server pgkeel may route to. Identity only; its state is in `MemberState`.
/// The publisher keeps the same `Arc` while the member keeps its address,
/// so sessions can cache per-member pools by pointer.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemberState {
    pub member: Arc<Member>,
    /// What pgkeel's probe last saw (`Unknown` until it answered).
    pub role: Role,
    pub healthy: bool,
    pub last_error: Option<String>,
    /// What Patroni says about the member (etcd mode).
    pub patroni: Option<PatroniMember>,
    /// Bytes of WAL a replica is behind the primary: from pgkeel's probes
    /// when both answered, else from Patroni's keys (etcd mode).
    pub lag_bytes: Option<u64>,
    /// WAL position from the last probe: the primary's write position, or
    /// what a replica has replayed (read-your-writes compares against it).
    pub lsn: Option<u64>,
    /// A replica has streamed WAL since it started.
    pub streaming: bool,
    /// Seconds a replica's replay is behind (0 when caught up), from its probe.
    pub replay_lag: Option<f64>,
}

impl MemberState {
    /// May take reads: healthy and not tagged `noloadbalance`.
    pub fn readable(&self) -> bool {
        self.healthy && !self.patroni.as_ref().is_some_and(|p| p.noloadbalance)
    }

    /// May take reads as a replica: readable, in recovery, streaming, and
    /// (in etcd mode) running as far as Patroni knows.
    pub fn serves_reads(&self) -> bool {
        self.readable()
            && self.role == Role::Replica
            && self.streaming
            && self
                .patroni
                .as_ref()
                .is_none_or(|p| matches!(p.state.as_str(), "running" | "streaming"))
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Topology {
    pub members: Vec<MemberState>,
    /// The member that takes writes: designated by the source and confirmed
    /// writable and healthy by a probe.
    pub primary: Option<Arc<Member>>,
    /// The Patroni leader key (etcd mode), confirmed or not.
    pub leader: Option<String>,
    /// A planned switchover announced in the `failover` key.
    pub switchover: Option<Switchover>,
    /// Patroni runs the cluster in `synchronous_mode`.
    pub synchronous: bool,
    /// When pgkeel first saw that switchover.
    #[serde(skip)]
    pub switchover_seen: Option<Instant>,
    /// etcd is unreachable: this is the last known state.
    pub stale: bool,
    /// etcd revision the state was read at.
    pub revision: i64,
    pub source: &'static str,
    pub generation: u64,
}

impl Topology {
    pub fn member(&self, name: &str) -> Option<&MemberState> {
        self.members.iter().find(|m| m.member.name == name)
    }

    /// The primary, if new transactions may start on it now: none while a
    /// planned switchover is draining (for at most `drain`).
    pub fn usable_primary(&self, drain: Duration) -> Option<&Arc<Member>> {
        if self.draining(drain) {
            return None;
        }
        self.primary.as_ref()
    }

    /// A switchover is announced and imminent, and `drain` has not passed.
    pub fn draining(&self, drain: Duration) -> bool {
        self.switchover
            .as_ref()
            .is_some_and(|s| s.scheduled_at.is_none())
            && self.switchover_seen.is_some_and(|t| t.elapsed() < drain)
    }

    fn primary_name(&self) -> Option<&str> {
        self.primary.as_ref().map(|p| p.name.as_str())
    }

    /// Nothing a reader could observe changed.
    fn same_as(&self, o: &Topology) -> bool {
        self.members == o.members
            && self.primary_name() == o.primary_name()
            && self.leader == o.leader
            && self.switchover == o.switchover
            && self.stale == o.stale
    }

    /// A change worth a log line: not just lag or an error message.
    fn materially_differs(&self, o: &Topology) -> bool {
        fn same_member(a: &MemberState, b: &MemberState) -> bool {
            let patroni = |m: &MemberState| {
                m.patroni
                    .as_ref()
                    .map(|p| (p.role.clone(), p.state.clone(), p.noloadbalance))
            };
            a.member == b.member
                && a.role == b.role
                && a.streaming == b.streaming
                && a.healthy == b.healthy
                && patroni(a) == patroni(b)
        }
        self.primary_name() != o.primary_name()
            || self.leader != o.leader
            || self.switchover != o.switchover
            || self.stale != o.stale
            || self.members.len() != o.members.len()
            || self
                .members
                .iter()
                .zip(&o.members)
                .any(|(a, b)| !same_member(a, b))
    }
}

/// One failover as pgkeel lived it, for /status.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FailoverRecord {
    pub kind: &'static str,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub ended_at: Option<f64>,
    pub outage_ms: Option<u64>,
    pub old_primary: Option<String>,
    pub new_primary: Option<String>,
    pub held_clients_peak: i64,
    pub errors_returned: u64,
}

/// How many past failovers /status keeps.
const FAILOVER_HISTORY: usize = 20;

/// Suspicions waiting for the publisher. A crashed primary ends every
/// connection to it at once; past this many unread, more say nothing new.
const SUSPICION_QUEUE: usize = 256;

/// A server connection to a member ended without pgkeel or its client
/// asking: the publisher holds new work for that member until a probe on a
/// fresh connection answers.
#[derive(Debug)]
pub struct Suspicion {
    pub host: String,
    pub port: u16,
    /// When the session saw the connection end.
    pub at: Instant,
}

/// The published topology and a way to wait for the next change.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    changed: watch::Sender<u64>,
    generation: AtomicU64,
    failovers: Mutex<VecDeque<FailoverRecord>>,
    suspicions: mpsc::Sender<Suspicion>,
    /// Taken by the publisher when it starts.
    suspicions_rx: Mutex<Option<mpsc::Receiver<Suspicion>>>,
}

impl TopologyHandle {
    pub fn new() -> Arc<TopologyHandle> {
        let (changed, _) = watch::channel(0);
        let (suspicions, rx) = mpsc::channel(SUSPICION_QUEUE);
        Arc::new(TopologyHandle {
            current: ArcSwap::from_pointee(Topology::default()),
            changed,
            generation: AtomicU64::new(0),
            failovers: Mutex::new(VecDeque::new()),
            suspicions,
            suspicions_rx: Mutex::new(Some(rx)),
        })
    }

    /// A server connection to `host:port` died unexpectedly (EOF, reset, a
    /// server FATAL). Never waits: the publisher, the one writer of the
    /// topology, marks the member suspect. A member already down, or
    /// unknown, is left alone.
    pub fn suspect(&self, host: &str, port: u16) {
        let up = self
            .load()
            .members
            .iter()
            .any(|m| m.healthy && m.member.port == port && m.member.host == host);
        if up {
            let _ = self.suspicions.try_send(Suspicion {
                host: host.to_owned(),
                port,
                at: Instant::now(),
            });
        }
    }

    /// The receiving end of `suspect`, once.
    pub(crate) fn take_suspicions(&self) -> Option<mpsc::Receiver<Suspicion>> {
        self.suspicions_rx
            .lock()
            .expect("suspicions poisoned")
            .take()
    }

    /// The last failovers, oldest first (the last may still be going on).
    pub fn failovers(&self) -> Vec<FailoverRecord> {
        self.failovers
            .lock()
            .expect("failover log poisoned")
            .iter()
            .cloned()
            .collect()
    }

    fn record_failover(&self, f: impl FnOnce(&mut VecDeque<FailoverRecord>)) {
        let mut log = self.failovers.lock().expect("failover log poisoned");
        f(&mut log);
        while log.len() > FAILOVER_HISTORY {
            log.pop_front();
        }
    }

    pub fn load(&self) -> Guard<Arc<Topology>> {
        self.current.load()
    }

    /// An owned snapshot, for holding across awaits.
    pub fn load_full(&self) -> Arc<Topology> {
        self.current.load_full()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn publish(&self, mut t: Topology) {
        let g = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        t.generation = g;
        self.current.store(Arc::new(t));
        self.changed.send_replace(g);
    }

    /// Waits until a primary is known, up to `timeout`.
    pub async fn wait_for_primary(&self, timeout: Duration) -> Option<Arc<Member>> {
        let mut rx = self.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(p) = self.load().primary.clone() {
                return Some(p);
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => return self.load().primary.clone(),
            }
        }
    }
}

/// Starts following the topology: etcd when `[etcd]` is configured, else the
/// static `[[servers]]`. Returns once every member has been probed once (or
/// `first_round` passed), so routing starts with roles known.
pub async fn spawn(
    config: &Config,
    handle: Arc<TopologyHandle>,
    metrics: Metrics,
    server_tls: Arc<crate::tls::ServerTls>,
    notify: mpsc::Sender<crate::notify::Event>,
    shutdown: watch::Receiver<bool>,
    first_round: Duration,
) {
    let (user, password) = config.health_credentials();
    let settings = probe::ProbeSettings {
        user,
        password,
        database: config.health.database.clone(),
        timeout: config.health.timeout.0,
        tls: crate::tls::postgres::MakeRustls::new(server_tls),
    };
    let source = match &config.etcd {
        Some(e) => {
            let (tx, rx) = mpsc::channel(64);
            let s = etcd::EtcdSettings {
                endpoints: e.endpoints.clone(),
                prefix: e.prefix(),
                user: e
                    .username
                    .clone()
                    .map(|u| (u, e.password.clone().unwrap_or_default())),
                dial_timeout: e.dial_timeout.0,
            };
            metrics.register_etcd();
            tokio::spawn(etcd::run(s, tx, shutdown.clone(), metrics.clone()));
            publisher::Source::Etcd(rx)
        }
        None => publisher::Source::Static(
            config
                .servers
                .iter()
                .map(|s| (s.host.clone(), s.port))
                .collect(),
        ),
    };
    let (p, mut ready_rx) = publisher::Publisher::new(
        handle,
        metrics,
        settings,
        config.health.interval.0,
        config.etcd.is_some(),
        notify,
    );
    tokio::spawn(p.run(source, shutdown));
    let _ = tokio::time::timeout(first_round, ready_rx.wait_for(|r| *r)).await;
}
