//! The one task that owns the topology. It merges what the source says
//! (the static server list, or Patroni's keys from etcd) with what pgkeel's
//! own probes see, publishes the result as a new snapshot, and logs and
//! counts every material change.
//!
//! The primary is the member the source designates (in etcd mode: the
//! `leader` key; statically: the one healthy server out of recovery) once a
//! probe has confirmed it is writable. Patroni writes the leader key 1–2 s
//! before promotion completes, so right after a leader change its member is
//! probed every 50 ms until `pg_is_in_recovery()` turns false.
//!
//! Fast suspicion: when a session's server connection ends unexpectedly it
//! sends a `Suspicion`; the member is published as down at once (so new
//! transactions are held, or reads go elsewhere) and probed on a fresh
//! connection. An answer clears the suspicion; a failure confirms the
//! member down until its regular probes see it again. Suspicion only ever
//! takes a member out: it never makes another one the primary, and a
//! suspicion cleared in milliseconds is not a failover.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::etcd::EtcdEvent;
use super::patroni::{PatroniMember, PatroniState};
use super::probe::{self, Probe, ProbeResult, ProbeSettings, Prober};
use super::suspicion::{hold_suspects, verdict, Suspect, Verdict, SUSPECT_PROBE_TIMEOUT};
use super::{FailoverRecord, Member, MemberState, Role, Suspicion, Topology, TopologyHandle};
use crate::metrics::Metrics;
use crate::notify::Event;

/// A failover in progress: the primary went away (or a switchover was
/// announced) and no primary is usable yet.
struct Outage {
    since: Instant,
    kind: &'static str,
    old: Option<String>,
    held_peak: i64,
    errors_at_start: u64,
}

/// How often a new leader is probed until it accepts writes.
pub const FAST_PROBE: Duration = Duration::from_millis(50);

/// Where membership comes from.
pub enum Source {
    /// Fixed `[[servers]]`.
    Static(Vec<(String, u16)>),
    /// Patroni keys through etcd.
    Etcd(mpsc::Receiver<EtcdEvent>),
}

struct Entry {
    member: Arc<Member>,
    patroni: Option<PatroniMember>,
    probe: Option<Result<Probe, String>>,
    prober: Prober,
    suspect: Option<Suspect>,
    /// When the last suspicion was raised: probes begun before it cannot
    /// vouch for the member.
    distrust_before: Option<Instant>,
    /// When the probe that last cleared a suspicion began: connections
    /// that ended before it are explained by the same event.
    vouched_at: Option<Instant>,
}

pub struct Publisher {
    handle: Arc<TopologyHandle>,
    metrics: Metrics,
    probe_settings: ProbeSettings,
    interval: Duration,
    etcd_mode: bool,
    entries: BTreeMap<String, Entry>,
    patroni: PatroniState,
    stale: bool,
    revision: i64,
    /// A leader named by etcd and not yet confirmed writable, and since
    /// when (`None` for the leader found at start: not a switch to time).
    awaiting: Option<(String, Option<Instant>)>,
    results_tx: mpsc::Sender<ProbeResult>,
    next_id: u64,
    /// Set once every member has been probed once (start-up waits for it).
    ready: watch::Sender<bool>,
    seen_state: bool,
    switchover_seen: Option<Instant>,
    outage: Option<Outage>,
    notify: mpsc::Sender<Event>,
    /// Probe results; taken by `run`.
    results_rx: Option<mpsc::Receiver<ProbeResult>>,
    next_token: u64,
    /// The primary of the last publish before suspicions were applied:
    /// failovers are tracked on that view, so a suspicion that clears is
    /// no failover.
    raw_primary: Option<String>,
    /// A suspected primary was confirmed down: the outage began when it
    /// was suspected.
    confirmed_since: Option<Instant>,
}

impl Publisher {
    /// A publisher, and a receiver that turns true once every member has
    /// been probed once.
    pub fn new(
        handle: Arc<TopologyHandle>,
        metrics: Metrics,
        probe_settings: ProbeSettings,
        interval: Duration,
        etcd_mode: bool,
        notify: mpsc::Sender<Event>,
    ) -> (Publisher, watch::Receiver<bool>) {
        let (ready, ready_rx) = watch::channel(false);
        let (results_tx, results_rx) = mpsc::channel(256);
        let p = Publisher {
            handle,
            metrics,
            probe_settings,
            interval,
            etcd_mode,
            entries: BTreeMap::new(),
            patroni: PatroniState::default(),
            stale: false,
            revision: 0,
            awaiting: None,
            results_tx,
            next_id: 0,
            ready,
            seen_state: false,
            switchover_seen: None,
            outage: None,
            notify,
            results_rx: Some(results_rx),
            next_token: 0,
            raw_primary: None,
            confirmed_since: None,
        };
        (p, ready_rx)
    }

    fn send(&self, ev: Event) {
        // Never wait on hooks: if the notifier is backed up, drop the event.
        if self.notify.try_send(ev).is_err() {
            tracing::warn!("notify queue full; an event was dropped");
        }
    }

    pub async fn run(mut self, source: Source, mut shutdown: watch::Receiver<bool>) {
        let mut results = self.results_rx.take().expect("run once");
        let mut suspicions = self.handle.take_suspicions();
        let mut etcd_rx = match source {
            Source::Static(servers) => {
                let wanted = servers
                    .into_iter()
                    .map(|(host, port)| (format!("{host}:{port}"), host, port, None))
                    .collect();
                self.reconcile(wanted);
                self.seen_state = true;
                self.publish("start");
                None
            }
            Source::Etcd(rx) => Some(rx),
        };
        loop {
            tokio::select! {
                ev = async { etcd_rx.as_mut()?.recv().await }, if etcd_rx.is_some() => match ev {
                    Some(ev) => self.on_etcd(ev),
                    None => etcd_rx = None,
                },
                Some(r) = results.recv() => self.on_probe(r),
                s = async { suspicions.as_mut()?.recv().await }, if suspicions.is_some() => match s {
                    Some(s) => self.on_suspicion(s),
                    None => suspicions = None,
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    fn on_etcd(&mut self, ev: EtcdEvent) {
        match ev {
            EtcdEvent::Connected(up) => {
                self.stale = !up;
                self.publish(if up {
                    "etcd reachable"
                } else {
                    "etcd unreachable"
                });
            }
            EtcdEvent::State {
                state,
                revision,
                reason,
            } => {
                for (name, why) in &state.unreadable {
                    if !self.patroni.unreadable.contains_key(name) {
                        tracing::warn!(member = %name, error = %why, "ignoring unreadable Patroni member key");
                    }
                }
                let old_leader = self.patroni.leader.clone();
                self.patroni = state;
                self.revision = revision;
                self.stale = false;
                let wanted = self
                    .patroni
                    .members
                    .values()
                    .map(|m| (m.name.clone(), m.host.clone(), m.port, Some(m.clone())))
                    .collect();
                self.reconcile(wanted);
                if self.patroni.leader != old_leader {
                    self.leader_changed(old_leader, reason);
                }
                self.seen_state = true;
                self.publish(reason);
            }
        }
    }

    fn leader_changed(&mut self, old: Option<String>, reason: &str) {
        let new = self.patroni.leader.clone();
        tracing::info!(
            old_leader = old.as_deref().unwrap_or("none"),
            new_leader = new.as_deref().unwrap_or("none"),
            revision = self.revision,
            reason,
            "Patroni leader key changed"
        );
        if new.is_some() && self.seen_state {
            self.metrics.leader_changes_total.inc();
            let mut ev = Event::new("leader_change");
            ev.old_leader = old.clone();
            ev.new_leader = new.clone();
            ev.held_clients = self.metrics.held_clients.get();
            self.send(ev);
        }
        // Stop fast-probing a leader that is no longer the leader.
        if let Some((prev, _)) = self.awaiting.take() {
            if let Some(e) = self.entries.get(&prev) {
                e.prober.set_interval(self.interval);
            }
        }
        if let Some(name) = new {
            let since = self.seen_state.then(Instant::now);
            self.awaiting = Some((name.clone(), since));
            if let Some(e) = self.entries.get(&name) {
                e.prober.set_interval(FAST_PROBE);
            }
        }
    }

    /// Brings probers in line with the wanted members.
    fn reconcile(&mut self, wanted: Vec<(String, String, u16, Option<PatroniMember>)>) {
        let names: Vec<&String> = wanted.iter().map(|w| &w.0).collect();
        let gone: Vec<String> = self
            .entries
            .keys()
            .filter(|k| !names.contains(k))
            .cloned()
            .collect();
        for name in gone {
            // Dropping the entry drops its Prober, which stops the task.
            self.entries.remove(&name);
            tracing::info!(member = %name, "member left the topology; its pool drains");
        }
        for (name, host, port, patroni) in wanted {
            let same_addr = self
                .entries
                .get(&name)
                .is_some_and(|e| e.member.host == host && e.member.port == port);
            if same_addr {
                self.entries.get_mut(&name).expect("checked").patroni = patroni;
                continue;
            }
            self.next_id += 1;
            let fast = self.awaiting.as_ref().is_some_and(|(n, _)| *n == name);
            let prober = probe::spawn(
                name.clone(),
                self.next_id,
                &host,
                port,
                &self.probe_settings,
                if fast { FAST_PROBE } else { self.interval },
                self.results_tx.clone(),
            );
            tracing::info!(member = %name, %host, port, "member joined the topology");
            self.entries.insert(
                name.clone(),
                Entry {
                    member: Arc::new(Member { name, host, port }),
                    patroni,
                    probe: None,
                    prober,
                    suspect: None,
                    distrust_before: None,
                    vouched_at: None,
                },
            );
        }
    }

    fn on_probe(&mut self, r: ProbeResult) {
        let Some(e) = self.entries.get_mut(&r.name) else {
            return;
        };
        if e.prober.id != r.id {
            return;
        }
        let ok = r.result.is_ok();
        match verdict(e.suspect, e.distrust_before, r.token, r.started, ok) {
            Verdict::Ignore => return,
            Verdict::Store => {}
            Verdict::Cleared => {
                let s = e.suspect.take().expect("cleared a suspicion");
                e.vouched_at = Some(r.started);
                self.metrics
                    .suspicions_total
                    .with_label_values(&["cleared"])
                    .inc();
                tracing::info!(member = %r.name, after_ms = s.since.elapsed().as_millis() as u64, "suspect member answers on a new connection: suspicion cleared");
            }
            Verdict::Confirmed => {
                let s = e.suspect.take().expect("confirmed a suspicion");
                self.metrics
                    .suspicions_total
                    .with_label_values(&["confirmed"])
                    .inc();
                if self.raw_primary.as_deref() == Some(r.name.as_str()) {
                    self.confirmed_since = Some(s.since);
                }
            }
        }
        match (&e.probe, &r.result) {
            (Some(Ok(_)) | None, Err(err)) => {
                tracing::warn!(member = %r.name, error = %err, "health check failed; member marked down");
            }
            (Some(Err(_)), Ok(p)) => {
                tracing::info!(member = %r.name, role = ?p.role, "member answers health checks again")
            }
            _ => {}
        }
        e.probe = Some(r.result);
        if let Some((name, since)) = &self.awaiting {
            if *name == r.name
                && matches!(
                    e.probe,
                    Some(Ok(Probe {
                        role: Role::Primary,
                        ..
                    }))
                )
            {
                match since {
                    Some(since) => {
                        let took = since.elapsed();
                        self.metrics
                            .primary_switch_seconds
                            .observe(took.as_secs_f64());
                        tracing::info!(member = %name, after_ms = took.as_millis() as u64, "new primary confirmed writable");
                    }
                    None => tracing::info!(member = %name, "primary confirmed writable"),
                }
                e.prober.set_interval(self.interval);
                self.awaiting = None;
            }
        }
        if self.seen_state && self.entries.values().all(|e| e.probe.is_some()) {
            self.ready.send_replace(true);
        }
        self.publish("health check");
    }

    /// A session's server connection ended unexpectedly: the member is
    /// held out of routing at once and probed on a fresh connection.
    fn on_suspicion(&mut self, s: Suspicion) {
        let Some((name, e)) = self
            .entries
            .iter_mut()
            .find(|(_, e)| e.member.port == s.port && e.member.host == s.host)
        else {
            return;
        };
        // Already suspect, already down, or cleared by a probe that began
        // after this connection ended: nothing new.
        if e.suspect.is_some()
            || !matches!(e.probe, Some(Ok(_)))
            || e.vouched_at.is_some_and(|v| s.at <= v)
        {
            return;
        }
        self.next_token += 1;
        let now = Instant::now();
        e.suspect = Some(Suspect {
            since: now,
            token: self.next_token,
        });
        e.distrust_before = Some(now);
        e.prober.probe_now(
            self.next_token,
            self.probe_settings.timeout.min(SUSPECT_PROBE_TIMEOUT),
        );
        self.metrics
            .suspicions_total
            .with_label_values(&["raised"])
            .inc();
        tracing::warn!(member = %name, "a server connection ended unexpectedly: member suspect, new transactions held until it answers a probe");
        self.publish("suspect");
        self.metrics
            .suspicion_hold_delay_seconds
            .observe(s.at.elapsed().as_secs_f64());
    }

    fn compute(&self) -> Topology {
        // The furthest WAL position a primary reported: what replicas chase.
        let head = self
            .entries
            .values()
            .filter_map(|e| match &e.probe {
                Some(Ok(p)) if p.role == Role::Primary => p.lsn,
                _ => None,
            })
            .max();
        let members: Vec<MemberState> = self
            .entries
            .values()
            .map(|e| {
                let probe = e.probe.as_ref().and_then(|p| p.as_ref().ok());
                // pgkeel's own measure when it has one; Patroni's (updated
                // every loop_wait) otherwise.
                let own_lag = match (probe, head) {
                    (Some(p), Some(head)) if p.role == Role::Replica => {
                        p.lsn.map(|l| head.saturating_sub(l))
                    }
                    _ => None,
                };
                MemberState {
                    member: e.member.clone(),
                    role: probe.map_or(Role::Unknown, |p| p.role),
                    healthy: probe.is_some(),
                    last_error: match &e.probe {
                        Some(Err(m)) => Some(m.clone()),
                        _ => None,
                    },
                    lag_bytes: own_lag
                        .or_else(|| e.patroni.as_ref().and_then(|p| self.patroni.lag_bytes(p))),
                    lsn: probe.and_then(|p| p.lsn),
                    streaming: probe.is_some_and(|p| p.streaming),
                    replay_lag: probe.and_then(|p| p.replay_lag),
                    patroni: e.patroni.clone(),
                }
            })
            .collect();
        let primary = if self.etcd_mode {
            self.patroni.leader.as_ref().and_then(|l| {
                let m = members.iter().find(|m| &m.member.name == l)?;
                let demoted = m.patroni.as_ref().is_some_and(|p| p.role == "demoted");
                (m.healthy && m.role == Role::Primary && !demoted).then(|| m.member.clone())
            })
        } else {
            pick_primary(&members)
        };
        Topology {
            members,
            primary,
            leader: self.patroni.leader.clone(),
            switchover: self.patroni.switchover.clone(),
            synchronous: self.patroni.synchronous,
            switchover_seen: self.switchover_seen,
            stale: self.stale,
            revision: self.revision,
            source: if self.etcd_mode { "etcd" } else { "static" },
            generation: 0,
        }
    }

    fn publish(&mut self, reason: &str) {
        match (&self.patroni.switchover, self.switchover_seen) {
            (Some(_), None) => self.switchover_seen = Some(Instant::now()),
            (None, Some(_)) => self.switchover_seen = None,
            _ => {}
        }
        let mut new = self.compute();
        let old = self.handle.load_full();
        let raw_primary = new.primary_name().map(str::to_owned);
        self.track_failover(self.raw_primary.clone(), &new);
        self.confirmed_since = None;
        self.raw_primary = raw_primary;
        let suspected: Vec<&str> = self
            .entries
            .iter()
            .filter(|(_, e)| e.suspect.is_some())
            .map(|(n, _)| n.as_str())
            .collect();
        hold_suspects(&mut new, &suspected);
        if new.same_as(&old) {
            return;
        }
        if new.materially_differs(&old) {
            self.metrics.topology_changes_total.inc();
            let summary: Vec<String> = new
                .members
                .iter()
                .map(|m| {
                    format!(
                        "{}={:?}{}",
                        m.member.name,
                        m.role,
                        if m.healthy { "" } else { "(down)" }
                    )
                })
                .collect();
            tracing::info!(
                old_primary = old.primary.as_ref().map(|p| p.name.as_str()).unwrap_or("none"),
                new_primary = new.primary.as_ref().map(|p| p.name.as_str()).unwrap_or("none"),
                leader = new.leader.as_deref().unwrap_or("none"),
                switchover = ?new.switchover,
                stale = new.stale,
                revision = new.revision,
                reason,
                members = %summary.join(" "),
                "topology changed"
            );
        }
        self.metrics
            .members_up
            .set(new.members.iter().filter(|m| m.healthy).count() as i64);
        self.metrics.members.set(new.members.len() as i64);
        self.metrics
            .primary_available
            .set(i64::from(new.primary.is_some()));
        // Only on a change: a scrape between reset and set would see no primary.
        if new.primary_name() != old.primary_name() {
            self.metrics.primary_info.reset();
            if let Some(p) = new.primary_name() {
                self.metrics.primary_info.with_label_values(&[p]).set(1);
            }
        }
        // Lag per replica; members that left or became primary drop out.
        self.metrics.replica_lag_bytes.reset();
        self.metrics.replica_lag_seconds.reset();
        for m in new.members.iter().filter(|m| m.role == Role::Replica) {
            let name = [m.member.name.as_str()];
            if let Some(b) = m.lag_bytes {
                let b = i64::try_from(b).unwrap_or(i64::MAX);
                self.metrics
                    .replica_lag_bytes
                    .with_label_values(&name)
                    .set(b);
            }
            if let Some(s) = m.replay_lag {
                self.metrics
                    .replica_lag_seconds
                    .with_label_values(&name)
                    .set(s);
            }
        }
        self.handle.publish(new);
    }

    /// A failover starts when the primary goes away, or a switchover is
    /// announced, while there was one; it ends when a primary is usable again.
    /// Both before suspicions are applied (`old`: the last primary so seen).
    fn track_failover(&mut self, old: Option<String>, new: &Topology) {
        let announced = new
            .switchover
            .as_ref()
            .is_some_and(|s| s.scheduled_at.is_none());
        let unavailable = new.primary.is_none() || announced;
        let name = |t: &Topology| t.primary.as_ref().map(|p| p.name.clone());
        let held = self.metrics.held_clients.get();
        match &mut self.outage {
            None if unavailable && old.is_some() => {
                let kind = if announced || new.switchover.is_some() {
                    "planned"
                } else {
                    "unplanned"
                };
                tracing::warn!(
                    kind,
                    old_primary = old.as_deref().unwrap_or("none"),
                    "failover started: new transactions are held"
                );
                self.metrics.failover_in_progress.set(1);
                self.outage = Some(Outage {
                    since: self.confirmed_since.unwrap_or_else(Instant::now),
                    kind,
                    old: old.clone(),
                    held_peak: held,
                    errors_at_start: self.metrics.failover_errors(),
                });
                let mut ev = Event::new("failover_start");
                ev.kind = Some(kind);
                ev.old_leader = old.clone();
                ev.held_clients = held;
                let started_at = ev.at;
                self.send(ev);
                self.handle.record_failover(|log| {
                    log.push_back(FailoverRecord {
                        kind,
                        started_at,
                        ended_at: None,
                        outage_ms: None,
                        old_primary: old.clone(),
                        new_primary: None,
                        held_clients_peak: held,
                        errors_returned: 0,
                    })
                });
            }
            Some(o) if unavailable => {
                o.held_peak = o.held_peak.max(held);
                if announced {
                    o.kind = "planned";
                }
            }
            Some(_) => {
                let o = self.outage.take().expect("matched Some");
                self.metrics.failover_in_progress.set(0);
                let took = o.since.elapsed();
                let errors = self
                    .metrics
                    .failover_errors()
                    .saturating_sub(o.errors_at_start);
                let peak = o.held_peak.max(held);
                self.metrics
                    .failovers_total
                    .with_label_values(&[o.kind])
                    .inc();
                self.metrics
                    .primary_unavailable_seconds_total
                    .inc_by(took.as_secs_f64());
                tracing::warn!(
                    kind = o.kind,
                    old_primary = o.old.as_deref().unwrap_or("none"),
                    new_primary = name(new).as_deref().unwrap_or("none"),
                    outage_ms = took.as_millis() as u64,
                    held_clients_peak = peak,
                    errors_returned = errors,
                    "failover ended: held transactions resume"
                );
                let mut ev = Event::new("failover_end");
                ev.kind = Some(o.kind);
                ev.old_leader = o.old.clone();
                ev.new_leader = name(new);
                ev.held_clients = peak;
                ev.outage_ms = Some(took.as_millis() as u64);
                let ended_at = ev.at;
                self.send(ev);
                self.handle.record_failover(|log| {
                    if let Some(r) = log.back_mut().filter(|r| r.ended_at.is_none()) {
                        r.kind = o.kind;
                        r.ended_at = Some(ended_at);
                        r.outage_ms = Some(took.as_millis() as u64);
                        r.new_primary = name(new);
                        r.held_clients_peak = peak;
                        r.errors_returned = errors;
                    }
                });
            }
            None => {}
        }
    }
}

fn pick_primary(members: &[MemberState]) -> Option<Arc<Member>> {
    let mut primaries = members
        .iter()
        .filter(|m| m.healthy && m.role == Role::Primary);
    let first = primaries.next()?;
    if primaries.next().is_some() {
        tracing::warn!(
            "more than one server reports it is a primary; using {}",
            first.member.name
        );
    }
    Some(first.member.clone())
}

#[cfg(test)]
mod tests;
