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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// What became of a session's offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The new process serves the client now.
    Taken,
    /// The new process would not take it: it finishes here.
    Refused,
    /// No handover (any more): it goes on here.
    NoHandover,
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
    /// Counts handovers begun: a session the new process refused (or that
    /// found none under way) is not offered again in the same one.
    generation: AtomicU64,
    /// Raised by the next `begin` (then replaced): what idle sessions
    /// wait on, so one that was passed over waits for the next handover.
    round: Mutex<watch::Sender<bool>>,
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
            generation: AtomicU64::new(0),
            round: Mutex::new(watch::channel(false).0),
            offers: Mutex::new(None),
            predecessor: Mutex::new(None),
        }
    }
}

impl Handoff {
    /// Up while a handover is under way (the listener and the admin
    /// endpoints stop accepting when it goes up).
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.active.subscribe()
    }

    /// Raised when the next handover begins (a session waits on it while
    /// idle; one made after a handover began learns of it from
    /// `is_active` at its next message).
    pub fn round(&self) -> watch::Receiver<bool> {
        self.round
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .subscribe()
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
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.raised.store(true, Ordering::Relaxed);
        self.active.send_replace(true);
        let mut round = self.round.lock().unwrap_or_else(|e| e.into_inner());
        round.send_replace(true);
        *round = watch::channel(false).0;
    }

    /// The new process takes no more clients (timeout, or it is gone):
    /// offers are refused from now on, and the sessions finish here.
    pub fn end(&self) {
        self.offers.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// The new process went away before it was done: this process serves
    /// on as before (its listeners are given back by the sender), and a
    /// later handover starts afresh.
    pub fn abort(&self) {
        self.end();
        self.raised.store(false, Ordering::Relaxed);
        self.active.send_replace(false);
    }

    /// The current handover's number (0: none yet).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
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

    /// Offers a session; `Taken` once the new process serves it (the
    /// caller then closes its socket without a word to the client).
    pub async fn offer(&self, state: SessionState, socket: OwnedFd) -> Answer {
        let Some(to) = self
            .offers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        else {
            return Answer::NoHandover;
        };
        let (taken, answer) = oneshot::channel();
        let offer = Offer {
            state,
            socket,
            taken,
        };
        if to.send(offer).await.is_err() {
            return Answer::NoHandover;
        }
        match answer.await {
            Ok(true) => Answer::Taken,
            Ok(false) => Answer::Refused,
            // Dropped in the queue: the handover ended meanwhile.
            Err(_) => Answer::NoHandover,
        }
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
        assert_eq!(h.offer(state(), fd()).await, Answer::NoHandover);
        let first_round = h.round();
        let (tx, mut rx) = mpsc::channel(1);
        h.begin(tx);
        assert!(h.is_active());
        assert_eq!(h.generation(), 1);
        // Those waiting were woken; a new waiter waits for the next one.
        assert!(*first_round.borrow());
        assert!(!*h.round().borrow());
        let taker = tokio::spawn(async move {
            let o: Offer = rx.recv().await.unwrap();
            assert_eq!(o.state.user, "u");
            o.taken.send(true).unwrap();
        });
        assert_eq!(h.offer(state(), fd()).await, Answer::Taken);
        taker.await.unwrap();
        h.end();
        assert_eq!(h.offer(state(), fd()).await, Answer::NoHandover);
        h.abort();
        assert!(!h.is_active() && !*h.watch().borrow());
    }
}
