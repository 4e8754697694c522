//! Which servers exist, which is the primary, and which are healthy.
//!
//! The topology is an immutable snapshot behind an `ArcSwap`: sessions read
//! it without locks; one publisher task writes it. In static mode (this file)
//! the members come from `[[servers]]` and their roles from pgkeel's own
//! health checks (`SELECT pg_is_in_recovery()`). The etcd/Patroni watcher
//! publishes into the same handle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use tokio::sync::{mpsc, watch};

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
    Unknown,
}

/// A server pgkeel may route to. Identity only; its state is in `MemberState`.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct Member {
    pub name: String,
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberState {
    pub member: Arc<Member>,
    pub role: Role,
    pub healthy: bool,
    pub last_error: Option<String>,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Topology {
    pub members: Vec<MemberState>,
    /// The member that takes writes, once confirmed writable and healthy.
    pub primary: Option<Arc<Member>>,
    pub generation: u64,
}

/// The published topology and a way to wait for the next change.
pub struct TopologyHandle {
    current: ArcSwap<Topology>,
    changed: watch::Sender<u64>,
    generation: AtomicU64,
}

impl TopologyHandle {
    pub fn new(initial: Topology) -> Arc<TopologyHandle> {
        let (changed, _) = watch::channel(0);
        Arc::new(TopologyHandle {
            current: ArcSwap::from_pointee(initial),
            changed,
            generation: AtomicU64::new(0),
        })
    }

    pub fn load(&self) -> Guard<Arc<Topology>> {
        self.current.load()
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

/// One health-check result.
struct Probe {
    index: usize,
    result: Result<Role, String>,
}

/// Builds the initial static topology (every member unknown until checked).
pub fn static_members(config: &Config) -> Topology {
    Topology {
        members: config
            .servers
            .iter()
            .map(|s| MemberState {
                member: Arc::new(Member {
                    name: format!("{}:{}", s.host, s.port),
                    host: s.host.clone(),
                    port: s.port,
                }),
                role: Role::Unknown,
                healthy: false,
                last_error: None,
            })
            .collect(),
        primary: None,
        generation: 0,
    }
}

/// Starts health checks for the static members: one prober task per member
/// and one publisher that owns the topology. Returns once every member has
/// been probed once (or `first_round` elapsed), so the proxy starts routing
/// with roles known.
pub async fn spawn_static_health(
    config: &Config,
    handle: Arc<TopologyHandle>,
    shutdown: watch::Receiver<bool>,
    first_round: Duration,
) {
    let (tx, mut rx) = mpsc::channel::<Probe>(64);
    let (user, password) = config.health_credentials();
    let members: Vec<Arc<Member>> = handle
        .load()
        .members
        .iter()
        .map(|m| m.member.clone())
        .collect();
    for (index, member) in members.iter().enumerate() {
        let mut pg = tokio_postgres::Config::new();
        pg.host(&member.host)
            .port(member.port)
            .user(&user)
            .dbname(&config.health.database)
            .application_name("pgkeel health check")
            .connect_timeout(config.health.timeout.0);
        if let Some(p) = &password {
            pg.password(p);
        }
        tokio::spawn(probe_loop(
            index,
            pg,
            config.health.interval.0,
            config.health.timeout.0,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    drop(tx);

    let (first_tx, mut first_rx) = watch::channel(false);
    let n = members.len();
    tokio::spawn(async move {
        let mut seen = vec![false; n];
        while let Some(probe) = rx.recv().await {
            let cur = handle.load();
            let mut members = cur.members.clone();
            let m = &mut members[probe.index];
            let before = (m.role, m.healthy);
            match probe.result {
                Ok(role) => {
                    m.role = role;
                    m.healthy = true;
                    m.last_error = None;
                }
                Err(e) => {
                    if m.healthy {
                        tracing::warn!(member = %m.member.name, error = %e, "health check failed; member marked down");
                    }
                    m.healthy = false;
                    m.last_error = Some(e);
                }
            }
            let changed = before != (m.role, m.healthy);
            if changed {
                tracing::info!(member = %m.member.name, role = ?m.role, healthy = m.healthy, "member state changed");
            }
            let first = !seen[probe.index];
            seen[probe.index] = true;
            if changed || first {
                let primary = pick_primary(&members);
                if primary.as_ref().map(|p| &p.name) != cur.primary.as_ref().map(|p| &p.name) {
                    tracing::info!(
                        old = cur
                            .primary
                            .as_ref()
                            .map(|p| p.name.as_str())
                            .unwrap_or("none"),
                        new = primary.as_ref().map(|p| p.name.as_str()).unwrap_or("none"),
                        "primary changed"
                    );
                }
                handle.publish(Topology {
                    members,
                    primary,
                    generation: 0,
                });
            }
            if seen.iter().all(|s| *s) {
                first_tx.send_replace(true);
            }
        }
    });
    let _ = tokio::time::timeout(first_round, first_rx.wait_for(|d| *d)).await;
}

fn pick_primary(members: &[MemberState]) -> Option<Arc<Member>> {
    let mut primaries = members
        .iter()
        .filter(|m| m.healthy && m.role == Role::Primary);
    let first = primaries.next()?;
    if primaries.next().is_some() {
        tracing::warn!(
            "more than one server reports it is a primary; using the first configured: {}",
            first.member.name
        );
    }
    Some(first.member.clone())
}

async fn probe_loop(
    index: usize,
    pg: tokio_postgres::Config,
    interval: Duration,
    timeout: Duration,
    tx: mpsc::Sender<Probe>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut client: Option<tokio_postgres::Client> = None;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let started = Instant::now();
        let result = tokio::time::timeout(timeout, probe_once(&pg, &mut client))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        if result.is_err() {
            client = None;
        }
        tracing::trace!(index, elapsed = ?started.elapsed(), ?result, "health probe");
        if tx.send(Probe { index, result }).await.is_err() {
            return;
        }
    }
}

async fn probe_once(
    pg: &tokio_postgres::Config,
    client: &mut Option<tokio_postgres::Client>,
) -> Result<Role, String> {
    if client.as_ref().is_none_or(|c| c.is_closed()) {
        let (c, conn) = pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *client = Some(c);
    }
    let c = client.as_ref().expect("connected above");
    let row = c
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map_err(|e| e.to_string())?;
    let in_recovery: bool = row.get(0);
    Ok(if in_recovery {
        Role::Replica
    } else {
        Role::Primary
    })
}
