//! The pump: moves bytes between a client and its server connection while a
//! transaction (or session) is attached. Only I/O lives here: what the
//! bytes mean, what the server owes and whether the connection is clean is
//! the attachment core's (`super::attachment`).
//!
//! Both directions run at once (one `select!`, four branches), so neither
//! side can stall the other: a client that pipelines while a server streams
//! a large result is fine. Reads from one side stop while the other side has
//! not taken the previous chunk: that is the back-pressure that keeps memory
//! bounded whatever the result size.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::attachment::{ensure_room, Attachment, ClientStep, Release, ServerStep, State, Track};
use super::clock::RequestClock;
use super::signal::Signal;
use super::timers::{attached_wait, Timeouts};
use crate::cancel::ServerKey;
use crate::dbstats::DbCounters;
use crate::limits::Limit;

/// Read granularity: large enough that a big result moves in few syscalls.
const READ_CHUNK: usize = 32 * 1024;

#[derive(Debug)]
pub enum Outcome {
    /// The server connection is idle and may go back to the pool.
    Released,
    /// Idle, but a statement pinned the client to this connection
    /// (`State::pinned`): the session keeps it from now on.
    Pinned,
    /// The client closed its connection (or writing to it failed).
    ClientGone,
    /// The client sent Terminate.
    ClientTerminated,
    /// The server connection closed or failed.
    ServerLost(std::io::Error),
    /// The client broke the protocol; the message explains how.
    ClientProtocol(String),
    /// The server sent something that is not the protocol.
    ServerProtocol(String),
    /// The client sat idle past `client_idle_timeout` or
    /// `idle_transaction_timeout` (the `Limit` says which).
    Idle(Limit),
    /// A replayed transaction's answer differed from what the client had.
    ReplayDiverged,
}

pub struct Options {
    /// Release at the first idle point (transaction pooling).
    pub release_on_idle: bool,
    pub max_message_size: usize,
    /// The attached server's role, as the metrics index it: 0 primary, 1 other.
    pub role: usize,
    pub counters: Counters,
    pub timeouts: Timeouts,
    /// Where a `query_timeout` cancel goes: the attached server.
    pub cancel_key: Option<std::sync::Arc<ServerKey>>,
}

/// The metrics the pump updates itself, as bytes move: a session-mode pump
/// lasts the whole session, so counting at its end would hide a long
/// session's traffic until it leaves. Clones of the registry's metrics.
#[derive(Clone)]
pub struct Counters {
    pub client_received: IntCounter,
    pub client_sent: IntCounter,
    pub server_received: IntCounter,
    pub server_sent: IntCounter,
    /// Request durations on the primary ([0]) and other members ([1]).
    pub query_seconds: [prometheus::Histogram; 2],
    pub server_errors: IntCounterVec,
    /// The client's database's counters (SHOW STATS), when there is one.
    pub db: Option<Arc<DbCounters>>,
    /// `pgkeel_limit_refusals_total{reason="query_timeout"}`.
    pub query_timeouts: IntCounter,
}

impl Counters {
    pub fn new(m: &crate::metrics::Metrics) -> Counters {
        Counters {
            client_received: m.client_bytes_received_total.clone(),
            client_sent: m.client_bytes_sent_total.clone(),
            server_received: m.server_bytes_received_total.clone(),
            server_sent: m.server_bytes_sent_total.clone(),
            query_seconds: m.query_seconds.clone(),
            server_errors: m.server_errors_total.clone(),
            db: None,
            query_timeouts: m
                .limit_refusals_total
                .with_label_values(&[Limit::Query.setting()]),
        }
    }

    /// Counts bytes and request times for `db` too.
    pub fn for_database(mut self, db: Arc<DbCounters>) -> Counters {
        self.db = Some(db);
        self
    }

    /// Counts the errors `scan_server` noted (rare: a label lookup each).
    fn count_server_errors(&self, st: &mut State) {
        for class in st.server_errors.drain(..) {
            let label = std::str::from_utf8(&class).unwrap_or("XX");
            self.server_errors.with_label_values(&[label]).inc();
        }
    }
}

enum Wrote {
    Bytes(usize),
    Flushed,
}

/// Writes what `buf` holds, or, once it is empty, flushes (a TLS side:
/// records rustls kept back because the socket was full).
async fn write_or_flush<W: AsyncWrite + Unpin>(
    w: &mut W,
    buf: &mut bytes::BytesMut,
) -> std::io::Result<Wrote> {
    if buf.is_empty() {
        w.flush().await.map(|()| Wrote::Flushed)
    } else {
        w.write_buf(buf).await.map(Wrote::Bytes)
    }
}

/// Runs until the connection can be released, or one side ends.
/// `shutdown` turning true makes a session-mode pump release at the next
/// idle point too.
pub async fn pump(
    client: &mut crate::tls::Stream,
    server: &mut crate::tls::Stream,
    att: &mut Attachment,
    opts: &Options,
    mut track: Option<Track<'_>>,
    shutdown: &mut Signal,
) -> Outcome {
    // A TLS write may leave records in rustls when the socket is full: a
    // TLS side is flushed before the pump waits on the other side alone
    // or gives the connection back (plain TCP needs no flush).
    let (client_tls, server_tls) = (client.is_tls(), server.is_tls());
    let (mut client_unflushed, mut server_unflushed) = (false, false);
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut release_on_idle = opts.release_on_idle;
    let mut closing = shutdown.is_up();
    if closing {
        release_on_idle = true;
    }
    let mut terminated = false;
    // The server is gone; report it once what it sent before is delivered.
    let mut lost: Option<std::io::Error> = None;
    // The server ended the connection over the client's protocol violation.
    let mut violation: Option<String> = None;
    let counters = &opts.counters;
    let query_seconds = &counters.query_seconds[opts.role];
    let mut clock = RequestClock::default();
    // One timer, re-armed only when what the session waits on changes
    // (a new wait, or one more or one fewer answer owed).
    let mut waiting: Option<(Limit, u32)> = None;
    let mut armed = false;
    let timer = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(timer);
    loop {
        let flushed = !client_unflushed && !server_unflushed;
        if lost.is_some() && att.bufs.to_client.is_empty() && !client_unflushed {
            return Outcome::ServerLost(lost.take().expect("checked"));
        }
        if violation.is_some() && att.bufs.to_client.is_empty() && !client_unflushed {
            // What the server said before its FATAL has reached the client;
            // the session ends the client with the same FATAL.
            return Outcome::ClientProtocol(violation.take().expect("checked"));
        }
        // Attached elsewhere than the primary, each request is routed on
        // its own: once one is answered and the server is idle, nothing
        // more the client sent goes here (even if it arrived meanwhile: a
        // driver may send its next query as soon as an error arrives, before
        // the ReadyForQuery). The session routes it after the release.
        let routed_alone = release_on_idle && att.st.answered_alone();
        if !terminated && !routed_alone {
            match att.feed_client(opts.max_message_size, track.as_mut()) {
                Ok(ClientStep::Ok) => {}
                Ok(ClientStep::Terminate) => terminated = true,
                Err(e) => return Outcome::ClientProtocol(e),
            }
            if att.st.journal.diverged() {
                // (pgkeel's own answers count as the server's.)
                return Outcome::ReplayDiverged;
            }
            clock.sent(&att.st);
        }
        if terminated && att.bufs.to_server.is_empty() {
            return Outcome::ClientTerminated;
        }
        if release_on_idle && lost.is_none() && violation.is_none() && flushed {
            match att.release(track.as_ref()) {
                Release::Clean => return Outcome::Released,
                Release::Pinned(_) if opts.release_on_idle => return Outcome::Pinned,
                Release::Pinned(_) => return Outcome::Released,
                Release::NotYet(_) => {}
            }
        }
        let buffered = !att.bufs.to_client.is_empty() || !att.bufs.to_server.is_empty();
        let wait =
            attached_wait(att.st.pending, att.st.status, buffered).map(|w| (w, att.st.pending));
        if wait != waiting {
            waiting = wait;
            let d = wait.and_then(|(w, _)| opts.timeouts.of(w));
            armed = d.is_some();
            if let Some(d) = d {
                timer.as_mut().reset(tokio::time::Instant::now() + d);
            }
        }
        let b = &mut att.bufs;
        ensure_room(&mut b.from_server, READ_CHUNK);
        ensure_room(&mut b.from_client, READ_CHUNK);
        tokio::select! {
            r = cr.read_buf(&mut b.from_client), if b.to_server.is_empty() && !terminated && !att.st.request_done && !att.st.batch_waits && !routed_alone => match r {
                Ok(0) | Err(_) => return Outcome::ClientGone,
                Ok(n) => {
                    counters.client_received.inc_by(n as u64);
                    if let Some(db) = &counters.db {
                        DbCounters::add(&db.received, n as u64);
                    }
                }
            },
            r = sr.read_buf(&mut b.from_server), if b.to_client.is_empty() && lost.is_none() && violation.is_none() => match r {
                Ok(0) => return Outcome::ServerLost(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Outcome::ServerLost(e),
                Ok(n) => {
                    counters.server_received.inc_by(n as u64);
                    let scanned = att.feed_server(track.as_mut());
                    if !att.st.server_errors.is_empty() {
                        counters.count_server_errors(&mut att.st);
                    }
                    clock.forget(att.st.take_ignored_syncs());
                    let took = clock.answered(&att.st, query_seconds);
                    if let Some(db) = counters.db.as_ref().filter(|_| !took.is_zero()) {
                        DbCounters::add_time(&db.query_us, took);
                    }
                    if att.st.journal.diverged() {
                        return Outcome::ReplayDiverged;
                    }
                    match scanned {
                        Ok(ServerStep::Ok) => {}
                        Ok(ServerStep::Fatal(fatal)) if att.st.client_violation => violation = Some(fatal),
                        Ok(ServerStep::Fatal(fatal)) => lost = Some(std::io::Error::other(format!("the server ended the connection: {fatal}"))),
                        Err(e) => return Outcome::ServerProtocol(e),
                    }
                }
            },
            // Buffers drain by writes: that is where a large message's
            // memory can go back (not checked on every turn of the loop).
            r = write_or_flush(&mut cw, &mut b.to_client), if !b.to_client.is_empty() || client_unflushed => match r {
                Ok(Wrote::Bytes(n)) => {
                    counters.client_sent.inc_by(n as u64);
                    if let Some(db) = &counters.db {
                        DbCounters::add(&db.sent, n as u64);
                    }
                    client_unflushed = client_tls;
                    att.bufs.shrink();
                }
                Ok(Wrote::Flushed) => client_unflushed = false,
                Err(_) => return Outcome::ClientGone,
            },
            r = write_or_flush(&mut sw, &mut b.to_server), if !b.to_server.is_empty() || server_unflushed => match r {
                Ok(Wrote::Bytes(n)) => {
                    counters.server_sent.inc_by(n as u64);
                    server_unflushed = server_tls;
                    att.bufs.shrink();
                }
                Ok(Wrote::Flushed) => server_unflushed = false,
                Err(e) => return Outcome::ServerLost(e),
            },
            _ = &mut *shutdown, if !closing => {
                closing = true;
                release_on_idle = true;
            },
            _ = &mut timer, if armed => {
                armed = false;
                match waiting.map(|(w, _)| w) {
                    Some(Limit::Query) => {
                        // As statement_timeout: the server cancels the
                        // query and answers 57014; the stream goes on.
                        if let Some(key) = opts.cancel_key.clone() {
                            counters.query_timeouts.inc();
                            tracing::info!(server = %key.addr, timeout = ?opts.timeouts.query, "query_timeout reached: cancelling the request on its server");
                            tokio::spawn(async move {
                                if let Err(e) = crate::backend::send_cancel(&key).await {
                                    tracing::warn!(error = %e, server = %key.addr, "cannot cancel a query past query_timeout");
                                }
                            });
                        }
                    }
                    Some(idle) => return Outcome::Idle(idle),
                    None => {}
                }
            },
        }
    }
}
