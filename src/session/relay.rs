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

use prometheus::{IntCounter, IntCounterVec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::attachment::{ensure_room, Attachment, ClientStep, Release, ServerStep, State, Track};
use super::clock::RequestClock;
use super::signal::Signal;

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
}

pub struct Options {
    /// Release at the first idle point (transaction pooling).
    pub release_on_idle: bool,
    pub max_message_size: usize,
    /// The attached server's role, as the metrics index it: 0 primary, 1 other.
    pub role: usize,
    pub counters: Counters,
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
        }
    }

    /// Counts the errors `scan_server` noted (rare: a label lookup each).
    fn count_server_errors(&self, st: &mut State) {
        for class in st.server_errors.drain(..) {
            let label = std::str::from_utf8(&class).unwrap_or("XX");
            self.server_errors.with_label_values(&[label]).inc();
        }
    }
}

/// Runs until the connection can be released, or one side ends.
/// `shutdown` turning true makes a session-mode pump release at the next
/// idle point too.
pub async fn pump(
    client: &mut TcpStream,
    server: &mut TcpStream,
    att: &mut Attachment,
    opts: &Options,
    mut track: Option<Track<'_>>,
    shutdown: &mut Signal,
) -> Outcome {
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
    loop {
        if lost.is_some() && att.bufs.to_client.is_empty() {
            return Outcome::ServerLost(lost.take().expect("checked"));
        }
        if violation.is_some() && att.bufs.to_client.is_empty() {
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
            clock.sent(&att.st);
        }
        if terminated && att.bufs.to_server.is_empty() {
            return Outcome::ClientTerminated;
        }
        if release_on_idle && lost.is_none() && violation.is_none() {
            match att.release(track.as_ref()) {
                Release::Clean => return Outcome::Released,
                Release::Pinned(_) if opts.release_on_idle => return Outcome::Pinned,
                Release::Pinned(_) => return Outcome::Released,
                Release::NotYet(_) => {}
            }
        }
        let b = &mut att.bufs;
        ensure_room(&mut b.from_server, READ_CHUNK);
        ensure_room(&mut b.from_client, READ_CHUNK);
        tokio::select! {
            r = cr.read_buf(&mut b.from_client), if b.to_server.is_empty() && !terminated && !att.st.request_done && !att.st.batch_waits && !routed_alone => match r {
                Ok(0) | Err(_) => return Outcome::ClientGone,
                Ok(n) => counters.client_received.inc_by(n as u64),
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
                    clock.answered(&att.st, query_seconds);
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
            r = cw.write_buf(&mut b.to_client), if !b.to_client.is_empty() => match r {
                Ok(n) => {
                    counters.client_sent.inc_by(n as u64);
                    att.bufs.shrink();
                }
                Err(_) => return Outcome::ClientGone,
            },
            r = sw.write_buf(&mut b.to_server), if !b.to_server.is_empty() => match r {
                Ok(n) => {
                    counters.server_sent.inc_by(n as u64);
                    att.bufs.shrink();
                }
                Err(e) => return Outcome::ServerLost(e),
            },
            _ = &mut *shutdown, if !closing => {
                closing = true;
                release_on_idle = true;
            },
        }
    }
}
