//! The fleet: every pgkeel instance that follows one Patroni scope registers
//! itself in etcd and reads the others' registrations.
//!
//! pgkeel instances are stateless followers of etcd, so any number can serve
//! one cluster. Each one puts `<instance_prefix><scope>/<name>` (a JSON
//! `Peer`) under a lease it keeps alive; a dead instance's key goes with its
//! lease, `instance_ttl` after its last keep-alive, and a stopping one
//! revokes its lease so it leaves at once. The same loop reads the prefix and
//! watches it (from the read's revision + 1, as `etcd.rs` does), so every
//! instance lists the whole fleet: `SHOW PEERS`, `/status`, a gauge.
//! etcd being unreachable changes nothing on the data path: the last list
//! stays, and registration starts again when etcd is back.

use std::collections::BTreeMap;
use std::time::Duration;

use arc_swap::ArcSwap;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::watch;

use super::etcd::{connect, EtcdSettings};
use crate::metrics::Metrics;

/// One registered instance, as stored in its key.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Peer {
    pub name: String,
    /// Where clients reach it.
    pub address: String,
    /// Its admin HTTP endpoint, if it has one.
    pub admin: Option<String>,
    pub version: String,
    /// Seconds since the Unix epoch.
    pub started_at: f64,
    pub pid: u32,
}

/// The fleet as this instance last read it. Empty in static mode.
#[derive(Default)]
pub struct FleetHandle {
    /// This instance's name (`None` in static mode: no fleet).
    me: Option<String>,
    peers: ArcSwap<Vec<Peer>>,
}

impl FleetHandle {
    pub fn new(me: Option<String>) -> FleetHandle {
        FleetHandle {
            me,
            peers: ArcSwap::default(),
        }
    }

    pub fn me(&self) -> Option<&str> {
        self.me.as_deref()
    }

    /// Every registered instance, this one included, sorted by name.
    pub fn peers(&self) -> std::sync::Arc<Vec<Peer>> {
        self.peers.load_full()
    }

    fn publish(&self, peers: &BTreeMap<String, Peer>, metrics: &Metrics) {
        metrics.fleet_instances.set(peers.len() as i64);
        self.peers
            .store(std::sync::Arc::new(peers.values().cloned().collect()));
    }
}

/// What the fleet loop needs.
pub struct FleetSettings {
    /// Endpoints, credentials and timeouts; `prefix` is the instances' prefix.
    pub etcd: EtcdSettings,
    pub me: Peer,
    pub ttl: Duration,
}

/// The peer a key and value describe; `None` for a key outside the prefix
/// or a value that is not a registration (written by something else).
pub fn parse_peer(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, Peer)> {
    let name = std::str::from_utf8(key.strip_prefix(prefix.as_bytes())?).ok()?;
    if name.is_empty() || name.contains('/') {
        return None;
    }
    let peer: Peer = serde_json::from_slice(value).ok()?;
    Some((name.to_owned(), peer))
}

/// Applies one watch event to the list: a put adds or replaces, a delete
/// removes. Returns whether the list changed.
pub fn apply_event(
    peers: &mut BTreeMap<String, Peer>,
    prefix: &str,
    kind: EventType,
    key: &[u8],
    value: &[u8],
) -> bool {
    match kind {
        EventType::Put => match parse_peer(prefix, key, value) {
            Some((name, peer)) => peers.insert(name, peer.clone()) != Some(peer),
            None => false,
        },
        EventType::Delete => {
            let Some(name) = key
                .strip_prefix(prefix.as_bytes())
                .and_then(|n| std::str::from_utf8(n).ok())
            else {
                return false;
            };
            peers.remove(name).is_some()
        }
    }
}

/// Registers and follows the fleet until shutdown; then revokes the lease
/// (bounded by the dial timeout), so this instance leaves the list at once.
pub async fn run(
    settings: FleetSettings,
    handle: std::sync::Arc<FleetHandle>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Metrics,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    let mut lease: Option<(Client, i64)> = None;
    loop {
        let ended = tokio::select! {
            r = serve(&settings, &handle, &metrics, &mut lease) => r,
            _ = shutdown.changed() => break,
        };
        match ended {
            Ok(why) => {
                tracing::info!(reason = why, "fleet registration restarts");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "fleet registration in etcd failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    if let Some((mut client, id)) = lease {
        let revoked =
            tokio::time::timeout(settings.etcd.dial_timeout, client.lease_revoke(id)).await;
        tracing::info!(ok = matches!(revoked, Ok(Ok(_))), "left the fleet");
    }
}

/// One connection's worth: grant a lease, register, read and watch the
/// fleet, keep the lease alive. Returns when any of it ends.
async fn serve(
    s: &FleetSettings,
    handle: &FleetHandle,
    metrics: &Metrics,
    lease: &mut Option<(Client, i64)>,
) -> Result<&'static str, etcd_client::Error> {
    let timeout = s.etcd.dial_timeout * 2;
    let timed_out = |what: &str| etcd_client::Error::InvalidArgs(format!("{what} timed out"));
    let mut client = tokio::time::timeout(timeout, connect(&s.etcd))
        .await
        .map_err(|_| timed_out("connect"))??;
    let ttl_secs = s.ttl.as_secs().max(2) as i64;
    let granted = tokio::time::timeout(timeout, client.lease_grant(ttl_secs, None))
        .await
        .map_err(|_| timed_out("lease grant"))??;
    let id = granted.id();
    *lease = Some((client.clone(), id));
    let key = format!("{}{}", s.etcd.prefix, s.me.name);
    let value = serde_json::to_vec(&s.me).expect("a peer serializes");
    tokio::time::timeout(
        timeout,
        client.put(key.clone(), value, Some(PutOptions::new().with_lease(id))),
    )
    .await
    .map_err(|_| timed_out("register"))??;
    tracing::info!(key = %key, ttl = ttl_secs, "registered in the fleet");

    let resp = tokio::time::timeout(
        timeout,
        client.get(s.etcd.prefix.clone(), Some(GetOptions::new().with_prefix())),
    )
    .await
    .map_err(|_| timed_out("read"))??;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut peers = BTreeMap::new();
    for kv in resp.kvs() {
        if let Some((name, peer)) = parse_peer(&s.etcd.prefix, kv.key(), kv.value()) {
            peers.insert(name, peer);
        }
    }
    handle.publish(&peers, metrics);

    let mut watch = client
        .watch(
            s.etcd.prefix.clone(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    let (mut keeper, mut keep_alive) = client.lease_keep_alive(id).await?;
    // A keep-alive a third of the way through the lease survives one lost one.
    let mut tick = tokio::time::interval(s.ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => keeper.keep_alive().await?,
            r = keep_alive.message() => match r? {
                Some(ka) if ka.ttl() > 0 => {}
                // The lease expired (etcd was unreachable longer than the ttl):
                // the key is gone; register again under a new lease.
                Some(_) => return Ok("lease expired"),
                None => return Ok("keep-alive stream closed"),
            },
            r = watch.message() => {
                let Some(resp) = r? else { return Ok("watch stream closed") };
                if resp.canceled() {
                    return Ok("watch cancelled");
                }
                let mut changed = false;
                for ev in resp.events() {
                    if let Some(kv) = ev.kv() {
                        changed |= apply_event(&mut peers, &s.etcd.prefix, ev.event_type(), kv.key(), kv.value());
                    }
                }
                if changed {
                    handle.publish(&peers, metrics);
                }
                if !peers.contains_key(&s.me.name) {
                    // Someone deleted our key: put it back.
                    return Ok("registration deleted");
                }
            }
        }
    }
}

/// This host's name, for default instance names and advertised addresses.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str) -> Peer {
        Peer {
            name: name.into(),
            address: "10.0.0.1:54320".into(),
            admin: None,
            version: "0.1.0".into(),
            started_at: 1.0,
            pid: 7,
        }
    }

    const P: &str = "/pgkeel/demo/";

    #[test]
    fn a_registration_is_read_back_by_name() {
        let v = serde_json::to_vec(&peer("a")).unwrap();
        let (name, p) = parse_peer(P, b"/pgkeel/demo/a", &v).unwrap();
        assert_eq!(name, "a");
        assert_eq!(p, peer("a"));
    }

    #[test]
    fn keys_outside_the_prefix_or_not_registrations_are_ignored() {
        let v = serde_json::to_vec(&peer("a")).unwrap();
        assert!(parse_peer(P, b"/pgkeel/other/a", &v).is_none());
        assert!(parse_peer(P, b"/pgkeel/demo/a/b", &v).is_none());
        assert!(parse_peer(P, b"/pgkeel/demo/", &v).is_none());
        assert!(parse_peer(P, b"/pgkeel/demo/a", b"not json").is_none());
    }

    #[test]
    fn puts_add_and_deletes_remove() {
        let mut peers = BTreeMap::new();
        let v = serde_json::to_vec(&peer("a")).unwrap();
        assert!(apply_event(
            &mut peers,
            P,
            EventType::Put,
            b"/pgkeel/demo/a",
            &v
        ));
        // The same registration again (a re-put after a reconnect) changes nothing.
        assert!(!apply_event(
            &mut peers,
            P,
            EventType::Put,
            b"/pgkeel/demo/a",
            &v
        ));
        let mut b = peer("b");
        b.pid = 9;
        let vb = serde_json::to_vec(&b).unwrap();
        assert!(apply_event(
            &mut peers,
            P,
            EventType::Put,
            b"/pgkeel/demo/b",
            &vb
        ));
        assert_eq!(peers.len(), 2);
        assert!(apply_event(
            &mut peers,
            P,
            EventType::Delete,
            b"/pgkeel/demo/a",
            b""
        ));
        assert!(!apply_event(
            &mut peers,
            P,
            EventType::Delete,
            b"/pgkeel/demo/a",
            b""
        ));
        assert_eq!(peers.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn the_handle_lists_peers_sorted_and_counts_them() {
        let h = FleetHandle::new(Some("b".into()));
        let m = Metrics::new();
        let mut peers = BTreeMap::new();
        peers.insert("b".to_string(), peer("b"));
        peers.insert("a".to_string(), peer("a"));
        h.publish(&peers, &m);
        let names: Vec<String> = h.peers().iter().map(|p| p.name.clone()).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(m.fleet_instances.get(), 2);
        assert_eq!(h.me(), Some("b"));
    }
}
