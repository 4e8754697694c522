//! What an idle client's session hands over to a new pgkeel process at an
//! upgrade (`handover/`), and the channel it hands itself over on.
//!
//! The session decides, between transactions, that it can move
//! (`session/handoff.rs`); it offers its socket and this state here; the
//! handover sender (top layer) passes both to the new process and says
//! whether it took them. This module sits at the bottom: plain data and a
//! channel, so the session never imports the handover transport.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ListenerRoute;

/// The `result` labels of `pgkeel_handover_clients_total`.
pub const MOVED: &str = "moved";
pub const REFUSED: &str = "refused";
pub const STAYED: &str = "stayed";
pub const RESULTS: [&str; 3] = [MOVED, REFUSED, STAYED];

/// A logged-in transaction-mode client between transactions, as the new
/// process rebuilds its session: no re-authentication (the client already
/// logged in), the same cancel key, the same settings and statements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    pub peer: SocketAddr,
    pub listener: ListenerRoute,
    pub user: String,
    pub database: String,
    /// The StartupMessage's parameters (application_name among them).
    pub startup: Vec<(String, String)>,
    /// The BackendKeyData the client was given: its CancelRequests keep working.
    pub cancel_pid: i32,
    pub cancel_secret: i32,
    /// `Session::want`: the reported parameters it wants...
    pub want_reported: Vec<(String, String)>,
    /// ...the other settings it made (`Params::extra`)...
    pub want_extra: Vec<(String, String)>,
    /// ...and the hidden setting names it set (`Params::hidden`).
    pub want_hidden: Vec<String>,
    /// Its named prepared statements.
    pub prepared: Vec<NamedState>,
    pub default_read_only: bool,
    /// Read-your-writes: the primary's WAL position after its last write.
    pub min_lsn: Option<u64>,
}

/// One of the client's statement names (`session::prepared::Named`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedState {
    pub name: Vec<u8>,
    /// The statement's key in the statement cache: a Parse body after the
    /// name (query text, NUL, parameter types), or an SQL PREPARE's.
    pub body: Vec<u8>,
    /// The SQL-level PREPARE's text (`None`: a protocol Parse).
    pub sql_text: Option<Vec<u8>>,
    /// A Parse's own text when pgkeel rewrote it.
    pub original: Option<Vec<u8>>,
}

/// A session offering itself: its socket (a duplicate: the session closes
/// its own once `taken` says true) and its state.
pub struct Offer {
    pub state: SessionState,
    pub socket: OwnedFd,
    pub taken: oneshot::Sender<bool>,
}

/// A handover under way (or not), shared by every session of the old process.
pub struct Handoff {
    active: watch::Sender<bool>,
    /// The same flag, read by every session between transactions without
    /// the channel's lock.
    raised: AtomicBool,
    offers: Mutex<Option<mpsc::Sender<Offer>>>,
    /// In the new process: the old one, while it still serves clients. A
    /// CancelRequest for a key this process does not know goes there.
    predecessor: Mutex<Option<mpsc::Sender<(i32, i32)>>>,
}

/// Cancels on their way to the old process; beyond this many, more are
/// dropped (a CancelRequest is best effort, in PostgreSQL too).
pub const CANCEL_QUEUE: usize = 1024;

impl Default for Handoff {
    fn default() -> Self {
        Handoff {
            active: watch::channel(false).0,
            raised: AtomicBool::new(false),
            offers: Mutex::new(None),
            predecessor: Mutex::new(None),
        }
    }
}

impl Handoff {
    /// The flag sessions wait on between transactions (raised once).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Resolves once a handover began.
    pub fn raised(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.watch();
        async move {
            let _ = rx.wait_for(|up| *up).await;
        }
    }

    pub fn is_active(&self) -> bool {
        self.raised.load(Ordering::Relaxed)
    }

    /// A new process took the listeners: sessions offer themselves on `to`
    /// as they become idle.
    pub fn begin(&self, to: mpsc::Sender<Offer>) {
        *self.offers.lock().unwrap_or_else(|e| e.into_inner()) = Some(to);
        self.raised.store(true, Ordering::Relaxed);
        self.active.send_replace(true);
    }

    /// The new process takes no more clients (timeout, or it is gone):
    /// offers are refused from now on, and the sessions finish here.
    pub fn end(&self) {
        self.offers.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// CancelRequests for unknown keys go to the old process on `to` (none:
    /// it is gone).
    pub fn forward_cancels_to(&self, to: Option<mpsc::Sender<(i32, i32)>>) {
        *self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) = to;
    }

    /// Passes a CancelRequest for a key this process does not know to the
    /// old process, if one still serves clients.
    pub fn forward_cancel(&self, pid: i32, secret: i32) {
        if let Some(to) = &*self.predecessor.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = to.try_send((pid, secret));
        }
    }

    /// Offers a session; true once the new process has taken it (the
    /// caller then closes its socket without a word to the client).
    pub async fn offer(&self, state: SessionState, socket: OwnedFd) -> bool {
        let Some(to) = self
            .offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return false;
        };
        let (taken, answer) = oneshot::channel();
        let offer = Offer {
            state,
            socket,
            taken,
        };
        if to.send(offer).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        SessionState {
            peer: "127.0.0.1:4000".parse().unwrap(),
            listener: ListenerRoute::Auto,
            user: "u".into(),
            database: "d".into(),
            startup: vec![("application_name".into(), "app".into())],
            cancel_pid: 7,
            cancel_secret: -9,
            want_reported: vec![("TimeZone".into(), "UTC".into())],
            want_extra: vec![("search_path".into(), "a, b".into())],
            want_hidden: vec!["x.y".into()],
            prepared: vec![NamedState {
                name: b"s1".to_vec(),
                body: b"SELECT $1\0\0\x01\0\0\0\x17".to_vec(),
                sql_text: None,
                original: None,
            }],
            default_read_only: true,
            min_lsn: Some(42),
        }
    }

    #[test]
    fn state_survives_serialization() {
        let s = state();
        let json = serde_json::to_vec(&s).unwrap();
        assert_eq!(serde_json::from_slice::<SessionState>(&json).unwrap(), s);
    }

    #[tokio::test]
    async fn offers_are_refused_without_a_handover_and_after_its_end() {
        let h = Handoff::default();
        let fd = || std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        assert!(!h.offer(state(), fd()).await);
        let (tx, mut rx) = mpsc::channel(1);
        h.begin(tx);
        assert!(h.is_active());
        let taker = tokio::spawn(async move {
            let o: Offer = rx.recv().await.unwrap();
            assert_eq!(o.state.user, "u");
            o.taken.send(true).unwrap();
        });
        assert!(h.offer(state(), fd()).await);
        taker.await.unwrap();
        h.end();
        assert!(!h.offer(state(), fd()).await);
    }
}
