//! Follows a Patroni scope in etcd (v3 API).
//!
//! One prefix read gives the whole scope and the store revision; the watch
//! then starts at revision + 1, so no change between the two is lost. A
//! cancelled or compacted watch, a broken stream or a lost connection all
//! lead back to a fresh read, with backoff while etcd is unreachable. The
//! last state stays published meanwhile (marked stale): clients are never
//! dropped because etcd blinked.

use std::time::Duration;

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, WatchOptions, WatchResponse, WatchStream,
};
use tokio::sync::{mpsc, watch};

use super::patroni::PatroniState;
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct EtcdSettings {
    pub endpoints: Vec<String>,
    /// `<namespace><scope>/`, e.g. `/service/demo/`.
    pub prefix: String,
    pub user: Option<(String, String)>,
    pub dial_timeout: Duration,
}

#[derive(Debug)]
pub enum EtcdEvent {
    /// The scope's state after a read or a batch of watch events.
    State {
        state: PatroniState,
        revision: i64,
        reason: &'static str,
    },
    /// etcd became unreachable (`false`) or reachable again (`true`).
    Connected(bool),
}

pub async fn connect(s: &EtcdSettings) -> Result<Client, etcd_client::Error> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(s.dial_timeout)
        // HTTP/2 pings notice a silently dead etcd within a few seconds.
        .with_keep_alive(Duration::from_secs(2), s.dial_timeout)
        .with_keep_alive_while_idle(true);
    if let Some((u, p)) = &s.user {
        opts = opts.with_user(u.clone(), p.clone());
    }
    Client::connect(&s.endpoints, Some(opts)).await
}

/// Reads every key of the scope; returns the state and the revision it is at.
pub async fn read_scope(
    client: &mut Client,
    prefix: &str,
) -> Result<(PatroniState, i64), etcd_client::Error> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let mut state = PatroniState::default();
    for kv in resp.kvs() {
        if let Some(rel) = kv.key().strip_prefix(prefix.as_bytes()) {
            state.apply(&String::from_utf8_lossy(rel), Some(kv.value()));
        }
    }
    Ok((state, revision))
}

/// Watches the scope from `revision` (inclusive).
pub async fn watch_scope(
    client: &mut Client,
    prefix: &str,
    revision: i64,
) -> Result<WatchStream, etcd_client::Error> {
    client
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision),
            ),
        )
        .await
}

/// What a watch response means for the state.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Events were applied; the state is at this revision.
    Changed(i64),
    /// Nothing to apply (watch created, progress notification).
    Nothing,
    /// The watch was cancelled (e.g. compaction): read the scope again.
    Cancelled,
}

pub fn apply_response(state: &mut PatroniState, prefix: &str, resp: &WatchResponse) -> Applied {
    if resp.canceled() {
        return Applied::Cancelled;
    }
    if resp.events().is_empty() {
        return Applied::Nothing;
    }
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        let Some(rel) = kv.key().strip_prefix(prefix.as_bytes()) else {
            continue;
        };
        let key = String::from_utf8_lossy(rel);
        match ev.event_type() {
            EventType::Put => state.apply(&key, Some(kv.value())),
            EventType::Delete => state.apply(&key, None),
        }
    }
    Applied::Changed(resp.header().map(|h| h.revision()).unwrap_or(0))
}

/// Follows the scope until shutdown, sending every change to `tx`.
pub async fn run(
    settings: EtcdSettings,
    tx: mpsc::Sender<EtcdEvent>,
    mut shutdown: watch::Receiver<bool>,
    metrics: Metrics,
) {
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = Duration::from_millis(100);
    let mut connected = false;
    loop {
        let ended = tokio::select! {
            r = follow(&settings, &tx, &mut connected, &metrics) => r,
            _ = shutdown.changed() => return,
        };
        metrics.etcd_watch_restarts_total.inc();
        match ended {
            Ok(why) => {
                tracing::info!(reason = why, "etcd watch ended; reading the scope again");
                backoff = Duration::from_millis(100);
            }
            Err(e) => {
                if connected {
                    tracing::warn!(error = %e, endpoints = ?settings.endpoints, "etcd unreachable; serving with the last known topology");
                    connected = false;
                    metrics.etcd_connected.set(0);
                    if tx.send(EtcdEvent::Connected(false)).await.is_err() {
                        return;
                    }
                } else {
                    tracing::debug!(error = %e, "etcd still unreachable");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// One connection's worth of following: read, then watch until something ends it.
async fn follow(
    s: &EtcdSettings,
    tx: &mpsc::Sender<EtcdEvent>,
    connected: &mut bool,
    metrics: &Metrics,
) -> Result<&'static str, etcd_client::Error> {
    let mut client = tokio::time::timeout(s.dial_timeout * 2, connect(s))
        .await
        .map_err(|_| etcd_client::Error::InvalidArgs("connect timed out".into()))??;
    let (mut state, revision) =
        tokio::time::timeout(s.dial_timeout * 2, read_scope(&mut client, &s.prefix))
            .await
            .map_err(|_| etcd_client::Error::InvalidArgs("read timed out".into()))??;
    if !*connected {
        *connected = true;
        metrics.etcd_connected.set(1);
        tracing::info!(endpoints = ?s.endpoints, prefix = %s.prefix, revision, "following Patroni through etcd");
        let _ = tx.send(EtcdEvent::Connected(true)).await;
    }
    let send = |state: &PatroniState, revision, reason| {
        tx.send(EtcdEvent::State {
            state: state.clone(),
            revision,
            reason,
        })
    };
    if send(&state, revision, "read").await.is_err() {
        return Ok("shutting down");
    }
    let mut stream = watch_scope(&mut client, &s.prefix, revision + 1).await?;
    loop {
        let Some(resp) = stream.message().await? else {
            return Ok("watch stream closed");
        };
        match apply_response(&mut state, &s.prefix, &resp) {
            Applied::Nothing => {}
            Applied::Cancelled => {
                return Ok(if resp.compact_revision() > 0 {
                    "watch compacted"
                } else {
                    "watch cancelled"
                });
            }
            Applied::Changed(rev) => {
                if send(&state, rev, "watch").await.is_err() {
                    return Ok("shutting down");
                }
            }
        }
    }
}
