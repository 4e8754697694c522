//! The pump: moves bytes between a client and its server connection while a
//! transaction (or session) is attached, reading only message headers.
//!
//! Both directions run at once (one `select!`, four branches), so neither
//! side can stall the other: a client that pipelines while a server streams
//! a large result is fine. Reads from one side stop while the other side has
//! not taken the previous chunk: that is the back-pressure that keeps memory
//! bounded whatever the result size.
//!
//! Bookkeeping that decides when a server connection can be released:
//! every Query, FunctionCall and Sync sent to the server earns exactly one
//! ReadyForQuery back (`pending`), the last ReadyForQuery gives the
//! transaction status, and `unsynced` notes extended-protocol messages not
//! yet followed by a Sync.

use std::time::Instant;

use bytes::{Buf, BytesMut};
use prometheus::{Histogram, IntCounter, IntCounterVec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::classify;
use crate::config::PinFeature;
use crate::protocol::{self, TxStatus, HEADER_LEN};
use crate::querylog::QueryLog;
use crate::statements::ConnStatements;

use super::effects::{self, Effects};
use super::prepared::{Prepared, Verdict};

/// Read granularity: large enough that a big result moves in few syscalls.
const READ_CHUNK: usize = 32 * 1024;

/// The four buffers of a session, kept across transactions so their memory
/// is reused.
#[derive(Default)]
pub struct Buffers {
    /// Bytes read from the client, not yet scanned into whole messages.
    pub from_client: BytesMut,
    /// Whole client messages waiting to be written to the server.
    pub to_server: BytesMut,
    /// Bytes read from the server, not yet scanned.
    pub from_server: BytesMut,
    /// Scanned server bytes waiting to be written to the client.
    pub to_client: BytesMut,
    /// A copy of the transaction's request while it may still be re-run on
    /// another server (read-only, nothing answered yet).
    pub replay: BytesMut,
    /// Rewritten client messages, before they join `to_server`.
    pub rewrite: BytesMut,
}

/// Protocol state of the attached server connection, as seen in the stream.
#[derive(Debug, Clone)]
pub struct TxState {
    /// ReadyForQuery messages the server still owes.
    pub pending: u32,
    /// Status byte of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: TxStatus,
    /// Extended-protocol messages were sent after the last Sync.
    pub unsynced: bool,
    /// Body bytes of the current server message still to pass through; non-zero
    /// means the client has seen part of a message.
    pub server_skip: usize,
    /// Queries (Q/S/F) forwarded, for metrics; drained by the session.
    pub queries: u64,
    /// Some of the server's answer went to the client since attach: the
    /// request can no longer be retried elsewhere.
    pub responded: bool,
    /// Preamble messages (ParseComplete, BindComplete, ParameterDescription,
    /// RowDescription, NoData) forwarded before any real answer. They are
    /// the same on any server, so a re-run request drops the new server's.
    pub preamble: u32,
    /// Preamble messages still to drop from a re-run request's answer.
    pub drop_preamble: u32,
    /// Answers (up to ReadyForQuery) to swallow: pgkeel's own `SET` prelude.
    pub swallow: u32,
    /// ParameterStatus (name, value) the server sent during this attach.
    pub reported: Vec<(String, String)>,
    /// The client is sending COPY data (between its first CopyData and its
    /// CopyDone/CopyFail).
    pub in_copy: bool,
    /// The request so far is read-only and kept in `Buffers::replay`.
    pub replayable: bool,
    /// The request in flight ends a transaction (COMMIT/END): if the server
    /// dies now, the transaction's outcome is unknown.
    pub commit_in_flight: bool,
    /// Forward one request at a time (the session routes each request on
    /// its own: attached to a replica, the next one may be a write).
    pub one_request: bool,
    /// With `one_request`: a whole request went to the server; the next
    /// waits until its ReadyForQuery.
    pub request_done: bool,
    /// Syncs sent since the last Execute. If that Execute started a COPY
    /// FROM STDIN, the server ignores them (it ignores Sync in copy-in mode),
    /// so they earn no ReadyForQuery.
    pub syncs_since_execute: u32,
    /// What the statements sent during this attach do to the session.
    pub effects: Effects,
    /// A statement needed the client pinned to this connection.
    pub pinned: Option<PinFeature>,
    /// SQLSTATE classes of the ErrorResponses forwarded to the client and
    /// not yet counted (the pump counts them after each server read).
    pub server_errors: Vec<[u8; 2]>,
    /// `[log] log_queries`: who sends this attach's queries. `None` (the
    /// default) costs one check per Query or Parse.
    pub log: Option<Box<QueryLog>>,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            pending: 0,
            status: TxStatus::Idle,
            unsynced: false,
            server_skip: 0,
            queries: 0,
            responded: false,
            preamble: 0,
            drop_preamble: 0,
            swallow: 0,
            reported: Vec::new(),
            replayable: false,
            commit_in_flight: false,
            in_copy: false,
            one_request: false,
            request_done: false,
            syncs_since_execute: 0,
            effects: Effects::NONE,
            pinned: None,
            server_errors: Vec::new(),
            log: None,
        }
    }
}

impl TxState {
    /// The server is between transactions with nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.at_rest() && self.status == TxStatus::Idle
    }

    /// Nothing is in flight, though a transaction may be open.
    pub fn at_rest(&self) -> bool {
        // `swallow`: pgkeel's own prelude may still be answering when the
        // client's request was answered by pgkeel itself.
        self.pending == 0
            && self.swallow == 0
            && !self.unsynced
            && self.server_skip == 0
            && !self.in_copy
    }
}

#[derive(Debug)]
pub enum Outcome {
    /// The server connection is idle and may go back to the pool.
    Released,
    /// Idle, but a statement pinned the client to this connection
    /// (`TxState::pinned`): the session keeps it from now on.
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
    pub query_seconds: [Histogram; 2],
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
    fn count_server_errors(&self, st: &mut TxState) {
        for class in st.server_errors.drain(..) {
            let label = std::str::from_utf8(&class).unwrap_or("XX");
            self.server_errors.with_label_values(&[label]).inc();
        }
    }
}

/// Requests whose send times are kept; deeper pipelines are answered untimed.
const CLOCKED: usize = 16;

/// Each request's time, from going to the server to its ReadyForQuery.
///
/// A request is what earns one ReadyForQuery (`TxState::pending`): a simple
/// Query, or extended-protocol messages up to their Sync, whose clock starts
/// at the first of them. Send times wait in a small ring, oldest first, and
/// each ReadyForQuery takes the oldest: exact for pipelines too, and for a
/// client that sends its next request as soon as an ErrorResponse arrives
/// (tokio-postgres does), which timing a whole busy period at once would
/// merge with the failed one. One `Instant::now()` per request, no
/// allocation. A PREPARE pgkeel sends ahead of a client's EXECUTE earns a
/// ReadyForQuery and so counts as a request of its own.
#[derive(Default)]
struct RequestClock {
    ring: [Option<Instant>; CLOCKED],
    head: usize,
    len: usize,
    /// Owed beyond the ring (newer than all in it): answered without a time.
    untimed: u32,
    /// When the extended-protocol messages not yet followed by a Sync began.
    batch: Option<Instant>,
}

impl RequestClock {
    fn owed(&self) -> u32 {
        self.len as u32 + self.untimed
    }

    /// After client messages were scanned: clocks the requests sent.
    fn sent(&mut self, st: &TxState) {
        let owed = self.owed();
        let mut now = None;
        if st.pending > owed {
            let at = self
                .batch
                .take()
                .unwrap_or_else(|| *now.get_or_insert_with(Instant::now));
            for _ in owed..st.pending {
                if self.untimed > 0 || self.len == CLOCKED {
                    self.untimed += 1;
                } else {
                    self.ring[(self.head + self.len) % CLOCKED] = Some(at);
                    self.len += 1;
                }
            }
        } else {
            // Syncs sent into COPY FROM STDIN earn nothing: the newest go,
            // and the request (the COPY) keeps its start.
            for _ in st.pending..owed {
                if self.untimed > 0 {
                    self.untimed -= 1;
                } else {
                    self.len -= 1;
                    let at = self.ring[(self.head + self.len) % CLOCKED].take();
                    self.batch = self.batch.or(at);
                }
            }
        }
        if st.unsynced && self.batch.is_none() {
            self.batch = Some(now.unwrap_or_else(Instant::now));
        }
    }

    /// After server messages were scanned: times the requests answered.
    fn answered(&mut self, st: &TxState, histogram: &Histogram) {
        for _ in st.pending..self.owed() {
            if self.len > 0 {
                if let Some(at) = self.ring[self.head].take() {
                    histogram.observe(at.elapsed().as_secs_f64());
                }
                self.head = (self.head + 1) % CLOCKED;
                self.len -= 1;
            } else {
                self.untimed -= 1;
            }
        }
    }
}

/// Transaction-mode bookkeeping for an attach: the client's prepared
/// statements, the connection's, and which session features pin.
pub struct Track<'a> {
    pub prepared: &'a mut Prepared,
    pub conn: &'a mut ConnStatements,
    pub pin_on: &'a [PinFeature],
}

impl Track<'_> {
    /// Session effects of a Query or Parse: statements the server drops,
    /// and features that pin the client or are refused. `Some(sql)`: send
    /// this instead of the client's Query.
    fn effects(&mut self, typ: u8, frame: &[u8], st: &mut TxState) -> Option<String> {
        let fx = match typ {
            b'B' => self.prepared.bind_effects(frame),
            _ => effects::scan(protocol::query_text(typ, frame)),
        };
        if fx.is_empty() {
            return None;
        }
        st.effects |= fx;
        if fx.contains(Effects::DROPS_STATEMENTS) {
            self.conn.clear();
            self.prepared.forget_all();
        }
        let feature = fx.pin_feature()?;
        if st.pinned.is_some() || self.pin_on.contains(&feature) {
            st.pinned.get_or_insert(feature);
            return None;
        }
        let message = format!(
            "{} is not supported in transaction pooling mode",
            feature.describe()
        );
        let hint = format!(
            "Add \"{}\" to pin_on in pgkeel's [proxy] settings to give such clients their own server connection, or use pool_mode = \"session\".",
            feature.name()
        );
        if typ == b'Q' {
            Some(super::prepared::raising_query(
                protocol::sqlstate::FEATURE_NOT_SUPPORTED,
                &message,
                &hint,
            ))
        } else {
            self.prepared
                .refuse(protocol::sqlstate::FEATURE_NOT_SUPPORTED, &message, &hint);
            Some(String::new())
        }
    }
}

#[derive(Debug)]
pub enum ClientScan {
    Ok,
    Terminate,
}

/// Notes a ParameterStatus (name, value) body.
fn record_parameter(st: &mut TxState, mut body: &[u8]) {
    if let (Some(k), Some(v)) = (protocol::get_cstr(&mut body), protocol::get_cstr(&mut body)) {
        st.reported.push((k, v));
    }
}

/// Messages a server sends before the actual answer, identical on any server
/// for the same request.
fn is_preamble(typ: u8) -> bool {
    matches!(typ, b'1' | b'2' | b't' | b'T' | b'n')
}

/// The SQL text of a Query ('Q') or Parse ('P') frame ("" if malformed).
fn query_text(typ: u8, frame: &[u8]) -> &str {
    std::str::from_utf8(protocol::query_text(typ, frame)).unwrap_or("")
}

/// COMMIT or END: the statement that makes a transaction's outcome matter.
fn ends_transaction(sql: &str) -> bool {
    let first = sql
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    first.eq_ignore_ascii_case("commit") || first.eq_ignore_ascii_case("end")
}

/// May this frame be part of a request re-run on another server?
/// Only the message types are checked here, on the hot path; what the
/// request runs is checked by `replay_reads_only`, when a server has died.
fn replayable_frame(typ: u8) -> bool {
    matches!(typ, b'Q' | b'P' | b'B' | b'D' | b'E' | b'S' | b'H')
}

/// True when everything a kept request runs only reads, so it may run
/// again on another server: each Query and Parse, and the statement of
/// each Bind: the unnamed one parsed earlier in the request, or one of the
/// client's named statements (`statements`, transaction mode), which
/// pgkeel prepares again wherever the request lands.
pub fn replay_reads_only(replay: &[u8], statements: Option<&Prepared>) -> bool {
    let reads = |sql: &[u8]| {
        classify::classify(std::str::from_utf8(sql).unwrap_or(""), &Default::default())
            == classify::Kind::Read
    };
    let mut parsed = false;
    let mut rest = replay;
    while let Some(Ok((typ, len))) = protocol::header(rest) {
        if rest.len() < len {
            return false;
        }
        let frame = &rest[..len];
        let ok = match typ {
            b'Q' | b'P' => {
                parsed |= typ == b'P';
                reads(protocol::query_text(typ, frame))
            }
            b'B' => match super::prepared::bound_name(frame) {
                Some(b"") => parsed,
                Some(name) => statements.and_then(|p| p.query_of(name)).is_some_and(reads),
                None => false,
            },
            _ => true,
        };
        if !ok {
            return false;
        }
        rest = &rest[len..];
    }
    rest.is_empty()
}

/// Moves whole client messages from `from_client` to `to_server`, counting
/// what the server will owe. Frames are validated here: an unknown type or a
/// length over `max` is a protocol violation. With `track` (transaction
/// mode), statement names are rewritten and session effects noted.
pub fn scan_client(
    b: &mut Buffers,
    st: &mut TxState,
    max: usize,
    mut track: Option<&mut Track>,
) -> Result<ClientScan, String> {
    let mut pos = 0;
    // Start of the bytes to copy as they are (before `pos`).
    let mut start = 0;
    let mut terminate = None;
    while let Some(h) = protocol::header(&b.from_client[pos..]) {
        if st.request_done {
            break;
        }
        let (typ, len) = h.map_err(|l| format!("invalid message length {l}"))?;
        if !protocol::is_frontend_type(typ) {
            return Err(format!("invalid frontend message type {typ}"));
        }
        if len > max {
            return Err(format!(
                "message of {len} bytes exceeds max_message_size ({max} bytes)"
            ));
        }
        if b.from_client.len() - pos < len {
            break;
        }
        let frame = &b.from_client[pos..pos + len];
        if matches!(typ, b'Q' | b'P') {
            let text = query_text(typ, frame);
            st.commit_in_flight |= ends_transaction(text);
            if let Some(log) = &st.log {
                log.client_message(typ, frame);
            }
        }
        if st.replayable {
            if !st.responded && replayable_frame(typ) {
                b.replay.extend_from_slice(frame);
            } else {
                st.replayable = false;
                b.replay.clear();
            }
        }
        if typ == b'X' {
            terminate = Some(len);
            break;
        }
        let verdict = match track.as_deref_mut() {
            None => Verdict::Forward,
            Some(t) => {
                b.rewrite.clear();
                let instead = if matches!(typ, b'Q' | b'P' | b'B') {
                    t.effects(typ, frame, st)
                } else {
                    None
                };
                match instead {
                    Some(sql) if typ == b'Q' => {
                        protocol::put_query(&mut b.rewrite, &sql);
                        t.prepared.sent(typ);
                        Verdict::Replaced
                    }
                    // (A refused Parse: the error is queued, the batch dropped.)
                    _ => t
                        .prepared
                        .client_message(typ, frame, t.conn, &mut b.rewrite),
                }
            }
        };
        let sent = verdict != Verdict::Dropped;
        if let Some(t) = track.as_deref_mut() {
            st.pending += t.prepared.take_injected();
        }
        match typ {
            b'Q' | b'F' if sent => {
                st.pending += 1;
                st.queries += 1;
                st.request_done = st.one_request;
            }
            // The server ignores Sync in copy-in mode.
            b'S' if st.in_copy => {}
            b'S' => {
                st.pending += 1;
                st.queries += 1;
                st.unsynced = false;
                st.syncs_since_execute += 1;
                st.request_done = st.one_request;
            }
            b'E' => {
                st.unsynced = true;
                st.syncs_since_execute = 0;
            }
            b'P' | b'B' | b'D' | b'C' | b'H' => st.unsynced = true,
            b'd' | b'c' | b'f' => {
                if !st.in_copy {
                    // COPY data means the last Execute (or Query) started a
                    // COPY FROM STDIN: Syncs sent after that Execute were
                    // ignored. Until the copy ends the server is busy, so it
                    // must not be released.
                    st.in_copy = true;
                    if st.syncs_since_execute > 0 {
                        if let Some(t) = track.as_deref_mut() {
                            t.prepared.forget_syncs(st.syncs_since_execute);
                        }
                        st.pending = st.pending.saturating_sub(st.syncs_since_execute);
                        st.syncs_since_execute = 0;
                        st.unsynced = true;
                    }
                }
                if typ != b'd' {
                    st.in_copy = false;
                }
            }
            _ => {}
        }
        if verdict != Verdict::Forward {
            b.to_server.extend_from_slice(&b.from_client[start..pos]);
            b.to_server.extend_from_slice(&b.rewrite);
            start = pos + len;
        }
        pos += len;
        if let Some(t) = track.as_deref_mut() {
            // pgkeel's own answers whose turn has come (nothing before them
            // is still owed by the server).
            t.prepared.due(t.conn, &mut b.to_client, st);
        }
    }
    if pos > 0 {
        if start == 0 && b.to_server.is_empty() && pos == b.from_client.len() {
            std::mem::swap(&mut b.from_client, &mut b.to_server);
        } else {
            b.to_server.extend_from_slice(&b.from_client[start..pos]);
            b.from_client.advance(pos);
        }
    }
    if let Some(len) = terminate {
        // Drop the Terminate itself: the server connection outlives the client.
        b.from_client.advance(len);
        return Ok(ClientScan::Terminate);
    }
    // Make room for the rest of a partial message in one go.
    if let Some(Ok((_, len))) = protocol::header(&b.from_client) {
        if len > b.from_client.len() {
            b.from_client.reserve(len - b.from_client.len());
        }
    }
    Ok(ClientScan::Ok)
}

/// Server messages up to this size reach the client only whole, so a server
/// that dies mid-result leaves the client's protocol stream in step (pgkeel
/// can still answer with an ErrorResponse). Larger messages (huge rows)
/// stream through in pieces to keep memory bounded.
pub const WHOLE_MESSAGE_LIMIT: usize = 1 << 20;

/// Moves server bytes from `from_server` to `to_client`: whole messages,
/// except ones over `WHOLE_MESSAGE_LIMIT`, which pass in pieces. Only
/// headers (and ReadyForQuery's status byte, and ErrorResponse severities)
/// are read. A FATAL or PANIC from the server ends that server connection,
/// not the client's session: it is not forwarded, and its message is
/// returned (`Ok(Some(..))`) so the session can say what happened.
pub fn scan_server(
    b: &mut Buffers,
    st: &mut TxState,
    mut track: Option<&mut Track>,
) -> Result<Option<String>, String> {
    // pgkeel's own prelude (restoring session parameters) comes first.
    while st.swallow > 0 {
        let Some(h) = protocol::header(&b.from_server) else {
            return Ok(None);
        };
        let (typ, len) = h.map_err(|l| format!("invalid server message length {l}"))?;
        if b.from_server.len() < len {
            return Ok(None);
        }
        let body = &b.from_server[HEADER_LEN..len];
        match typ {
            b'Z' => st.swallow -= 1,
            b'S' => record_parameter(st, body),
            b'E' => {
                let f = protocol::parse_error_fields(body);
                return Err(format!(
                    "restoring session parameters failed: {}",
                    protocol::error_field(&f, b'M').unwrap_or("?")
                ));
            }
            _ => {}
        }
        b.from_server.advance(len);
    }
    // A re-run request: the client already has this much of the answer.
    // (With `track`, where pgkeel's own messages interleave, this is done
    // message by message below.)
    while track.is_none() && st.drop_preamble > 0 && st.server_skip == 0 {
        match protocol::header(&b.from_server) {
            Some(Ok((typ, len))) if is_preamble(typ) => {
                if b.from_server.len() < len {
                    return Ok(None);
                }
                b.from_server.advance(len);
                st.drop_preamble -= 1;
                // Still counts as preamble the client has, for a further re-run.
                st.preamble += 1;
            }
            Some(_) => st.drop_preamble = 0,
            None => return Ok(None),
        }
    }
    let buf = &b.from_server;
    let mut pos = 0;
    // Start of the bytes to pass on as they are; `cut`: some were not.
    let mut start = 0;
    let mut cut = false;
    let mut fatal = None;
    loop {
        if st.server_skip > 0 {
            let n = st.server_skip.min(buf.len() - pos);
            pos += n;
            st.server_skip -= n;
            if st.server_skip > 0 {
                break;
            }
        }
        let Some(h) = protocol::header(&buf[pos..]) else {
            break;
        };
        let (typ, len) = h.map_err(|l| format!("invalid server message length {l}"))?;
        if typ == b'Z' && len != 6 {
            return Err("malformed ReadyForQuery".into());
        }
        if len > WHOLE_MESSAGE_LIMIT {
            if let Some(t) = track.as_deref_mut() {
                // A huge row (or copy data): never completes anything.
                t.prepared.server_message(typ, t.conn);
            }
            st.responded = true;
            pos += HEADER_LEN;
            st.server_skip = len - HEADER_LEN;
            continue;
        }
        if buf.len() - pos < len {
            break;
        }
        let body = &buf[pos + HEADER_LEN..pos + len];
        // The SQLSTATE class of an ErrorResponse, counted if it reaches the client.
        let mut error_class = None;
        match typ {
            b'Z' => {
                st.status = TxStatus::from_byte(body[0]).ok_or("malformed ReadyForQuery status")?;
                st.responded = true;
                st.pending = st.pending.saturating_sub(1);
                if st.pending == 0 {
                    st.commit_in_flight = false;
                    st.request_done = false;
                }
            }
            b'S' => record_parameter(st, body),
            // CopyInResponse: the COPY data is part of the request.
            b'G' => st.request_done = false,
            b'E' => {
                let fields = protocol::parse_error_fields(body);
                if matches!(
                    protocol::error_field(&fields, b'V').or(protocol::error_field(&fields, b'S')),
                    Some("FATAL" | "PANIC")
                ) {
                    let msg = protocol::error_field(&fields, b'M')
                        .unwrap_or("server error")
                        .to_owned();
                    fatal = Some(msg);
                    break;
                }
                error_class = Some(crate::metrics::sqlstate_class(protocol::error_field(
                    &fields, b'C',
                )));
            }
            _ => {}
        }
        let mut forward = true;
        if let Some(t) = track.as_deref_mut() {
            // Whether the message answers the client or pgkeel itself.
            forward = t.prepared.server_message(typ, t.conn);
            if forward && st.drop_preamble > 0 && typ != b'Z' {
                if is_preamble(typ) {
                    forward = false;
                    st.drop_preamble -= 1;
                    st.preamble += 1;
                } else {
                    st.drop_preamble = 0;
                }
            }
        }
        if !forward {
            b.to_client.extend_from_slice(&buf[start..pos]);
            (start, cut) = (pos + len, true);
        } else if is_preamble(typ) && !st.responded {
            st.preamble += 1;
        } else {
            st.responded = true;
            if let Some(class) = error_class {
                st.server_errors.push(class);
            }
        }
        pos += len;
        if let Some(t) = track.as_deref_mut() {
            if t.prepared.has_due() {
                b.to_client.extend_from_slice(&buf[start..pos]);
                t.prepared.due(t.conn, &mut b.to_client, st);
                (start, cut) = (pos, true);
            }
        }
    }
    if fatal.is_some() {
        // Whatever follows the FATAL is the connection's end: drop it.
        b.from_server.truncate(pos);
    }
    if cut {
        b.to_client.extend_from_slice(&b.from_server[start..pos]);
        b.from_server.advance(pos);
        return Ok(fatal);
    }
    if pos == 0 {
        // Make room for the rest of a partial message in one go.
        if let Some(Ok((_, len))) = protocol::header(&b.from_server) {
            if len <= WHOLE_MESSAGE_LIMIT && len > b.from_server.capacity() {
                b.from_server.reserve(len - b.from_server.len());
            }
        }
        return Ok(fatal);
    }
    if b.to_client.is_empty() {
        // Hand the whole buffer over and copy back only the partial tail:
        // in steady state nothing is allocated and little is copied.
        std::mem::swap(&mut b.from_server, &mut b.to_client);
        if pos < b.to_client.len() {
            b.from_server.extend_from_slice(&b.to_client[pos..]);
            b.to_client.truncate(pos);
        }
    } else {
        b.to_client.extend_from_slice(&b.from_server[..pos]);
        b.from_server.advance(pos);
    }
    Ok(fatal)
}

fn ensure_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Runs until the connection can be released, or one side ends.
/// `shutdown` turning true makes a session-mode pump release at the next
/// idle point too.
#[allow(clippy::too_many_arguments)]
pub async fn pump(
    client: &mut TcpStream,
    server: &mut TcpStream,
    b: &mut Buffers,
    st: &mut TxState,
    opts: &Options,
    mut track: Option<Track<'_>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut release_on_idle = opts.release_on_idle;
    let mut closing = *shutdown.borrow();
    if closing {
        release_on_idle = true;
    }
    let mut terminated = false;
    // The server is gone; report it once what it sent before is delivered.
    let mut lost: Option<std::io::Error> = None;
    let counters = &opts.counters;
    let query_seconds = &counters.query_seconds[opts.role];
    let mut clock = RequestClock::default();
    loop {
        if lost.is_some() && b.to_client.is_empty() {
            return Outcome::ServerLost(lost.take().expect("checked"));
        }
        if !terminated {
            match scan_client(b, st, opts.max_message_size, track.as_mut()) {
                Ok(ClientScan::Ok) => {}
                Ok(ClientScan::Terminate) => terminated = true,
                Err(e) => return Outcome::ClientProtocol(e),
            }
            clock.sent(st);
        }
        let flushed = b.to_server.is_empty() && b.to_client.is_empty() && b.from_server.is_empty();
        if terminated && b.to_server.is_empty() {
            return Outcome::ClientTerminated;
        }
        if release_on_idle && flushed && st.is_idle() && lost.is_none() {
            if st.pinned.is_some() && opts.release_on_idle {
                return Outcome::Pinned;
            }
            return Outcome::Released;
        }
        ensure_room(&mut b.from_server);
        ensure_room(&mut b.from_client);
        tokio::select! {
            r = cr.read_buf(&mut b.from_client), if b.to_server.is_empty() && !terminated && !st.request_done => match r {
                Ok(0) | Err(_) => return Outcome::ClientGone,
                Ok(n) => counters.client_received.inc_by(n as u64),
            },
            r = sr.read_buf(&mut b.from_server), if b.to_client.is_empty() && lost.is_none() => match r {
                Ok(0) => return Outcome::ServerLost(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Outcome::ServerLost(e),
                Ok(n) => {
                    counters.server_received.inc_by(n as u64);
                    let scanned = scan_server(b, st, track.as_mut());
                    if !st.server_errors.is_empty() {
                        counters.count_server_errors(st);
                    }
                    clock.answered(st, query_seconds);
                    match scanned {
                        Ok(None) => {}
                        Ok(Some(fatal)) => lost = Some(std::io::Error::other(format!("the server ended the connection: {fatal}"))),
                        Err(e) => return Outcome::ServerProtocol(e),
                    }
                }
            },
            r = cw.write_buf(&mut b.to_client), if !b.to_client.is_empty() => match r {
                Ok(n) => counters.client_sent.inc_by(n as u64),
                Err(_) => return Outcome::ClientGone,
            },
            r = sw.write_buf(&mut b.to_server), if !b.to_server.is_empty() => match r {
                Ok(n) => counters.server_sent.inc_by(n as u64),
                Err(e) => return Outcome::ServerLost(e),
            },
            r = shutdown.changed(), if !closing => {
                let _ = r;
                closing = true;
                release_on_idle = true;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn server_scan_forwards_only_whole_messages() {
        let mut b = Buffers::default();
        let mut st = TxState {
            pending: 1,
            ..TxState::default()
        };
        let row = msg(b'D', &[1u8; 100]);
        let done = msg(b'C', b"SELECT 2\0");
        b.from_server.extend_from_slice(&row);
        b.from_server.extend_from_slice(&done[..4]);
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(
            &b.to_client[..],
            &row[..],
            "the complete row goes, the partial one waits"
        );
        assert_eq!(&b.from_server[..], &done[..4]);
        assert!(st.responded);
        assert_eq!(st.server_skip, 0);
        b.to_client.clear();
        b.from_server.extend_from_slice(&done[4..]);
        b.from_server.extend_from_slice(&msg(b'Z', b"I"));
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(b.to_client.len(), done.len() + 6);
        assert!(st.is_idle());
    }

    #[test]
    fn a_rerun_drops_the_preamble_the_client_already_has() {
        let mut b = Buffers::default();
        let mut st = TxState {
            pending: 1,
            ..TxState::default()
        };
        b.from_server.extend_from_slice(&msg(b'1', b""));
        b.from_server.extend_from_slice(&msg(b'2', b""));
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(
            (st.preamble, st.responded),
            (2, false),
            "preamble alone is not an answer"
        );
        // The server dies; the request runs again elsewhere.
        let mut again = TxState {
            pending: 1,
            drop_preamble: st.preamble,
            ..TxState::default()
        };
        let mut b = Buffers::default();
        let rest = [
            msg(b'D', b"\0\x01\0\0\0\x011"),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        b.from_server.extend_from_slice(&msg(b'1', b""));
        b.from_server.extend_from_slice(&msg(b'2', b""));
        b.from_server.extend_from_slice(&rest);
        scan_server(&mut b, &mut again, None).unwrap();
        assert_eq!(&b.to_client[..], &rest[..]);
        assert!(again.is_idle() && again.responded);
        assert_eq!(again.preamble, 2, "a further re-run would drop both again");
    }

    #[test]
    fn the_set_prelude_answer_is_swallowed_and_parameters_noted() {
        let mut b = Buffers::default();
        let mut st = TxState {
            pending: 1,
            swallow: 1,
            ..TxState::default()
        };
        let prelude = [
            msg(b'C', b"SET\0"),
            msg(b'S', b"TimeZone\0UTC\0"),
            msg(b'Z', b"I"),
        ]
        .concat();
        let answer = [msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat();
        b.from_server.extend_from_slice(&prelude[..7]);
        scan_server(&mut b, &mut st, None).unwrap();
        assert!(b.to_client.is_empty());
        b.from_server.extend_from_slice(&prelude[7..]);
        b.from_server.extend_from_slice(&answer);
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(
            &b.to_client[..],
            &answer[..],
            "only the client's answer goes through"
        );
        assert_eq!(
            st.reported,
            vec![("TimeZone".to_string(), "UTC".to_string())]
        );
        assert!(st.is_idle());
    }

    #[test]
    fn only_requests_that_read_are_replayed() {
        let read = [
            msg(b'P', b"\0SELECT count(*) FROM t WHERE id = $1\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        assert!(replay_reads_only(&read, None));
        let only = |frames: &[u8]| replay_reads_only(frames, None);
        assert!(only(&msg(b'Q', b"SELECT 1\0")));
        assert!(!only(&msg(b'Q', b"INSERT INTO t VALUES (1)\0")));
        assert!(!only(&msg(b'P', b"\0SELECT nextval('s')\0\0\0")));
        // An unnamed Bind needs its Parse in the copy.
        let unnamed_bind = [
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat();
        assert!(!only(&unnamed_bind));
        // A named one is re-run if the client's statement only reads.
        let mut p = Prepared::new(Default::default());
        let mut conn = ConnStatements::default();
        for f in [
            msg(b'P', b"r\0SELECT 1\0\0\0"),
            msg(b'P', b"w\0DELETE FROM t\0\0\0"),
        ] {
            p.client_message(b'P', &f, &mut conn, &mut BytesMut::new());
        }
        let bind = |name: &str| {
            [
                msg(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes()),
                msg(b'E', b"\0\0\0\0\0"),
                msg(b'S', b""),
            ]
            .concat()
        };
        assert!(replay_reads_only(&bind("r"), Some(&p)));
        assert!(!replay_reads_only(&bind("w"), Some(&p)));
        assert!(!replay_reads_only(&bind("unknown"), Some(&p)));
        assert!(!replay_reads_only(&bind("r"), None));
        assert!(
            !replay_reads_only(&read[..read.len() - 2], None),
            "a truncated copy is not replayed"
        );
    }

    #[test]
    fn server_fatal_is_not_forwarded() {
        let mut b = Buffers::default();
        let mut st = TxState {
            pending: 1,
            ..TxState::default()
        };
        let row = msg(b'D', &[1u8; 10]);
        let mut fatal = BytesMut::new();
        protocol::put_error(
            &mut fatal,
            protocol::Severity::Fatal,
            "57P01",
            "terminating connection due to administrator command",
        );
        b.from_server.extend_from_slice(&row);
        b.from_server.extend_from_slice(&fatal);
        let got = scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(
            got.as_deref(),
            Some("terminating connection due to administrator command")
        );
        assert_eq!(&b.to_client[..], &row[..], "the row before it still goes");
        assert!(b.from_server.is_empty());
        // An ERROR is an ordinary answer and passes.
        let mut b = Buffers::default();
        let mut err = BytesMut::new();
        protocol::put_error(
            &mut err,
            protocol::Severity::Error,
            "42P01",
            "no such table",
        );
        b.from_server.extend_from_slice(&err);
        assert_eq!(scan_server(&mut b, &mut st, None).unwrap(), None);
        assert_eq!(&b.to_client[..], &err[..]);
    }

    #[test]
    fn forwarded_errors_are_noted_by_class() {
        let mut st = TxState {
            pending: 2,
            ..TxState::default()
        };
        let mut b = Buffers::default();
        for (severity, code) in [
            (protocol::Severity::Error, "22012"),
            (protocol::Severity::Error, "23505"),
        ] {
            let mut e = BytesMut::new();
            protocol::put_error(&mut e, severity, code, "boom");
            b.from_server.extend_from_slice(&e);
            b.from_server.extend_from_slice(&msg(b'Z', b"I"));
        }
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(st.server_errors, vec![*b"22", *b"23"]);
        // A FATAL ends the server connection and is not forwarded: not counted.
        let mut st = TxState {
            pending: 1,
            ..TxState::default()
        };
        let mut b = Buffers::default();
        let mut fatal = BytesMut::new();
        protocol::put_error(&mut fatal, protocol::Severity::Fatal, "57P01", "bye");
        b.from_server.extend_from_slice(&fatal);
        assert!(scan_server(&mut b, &mut st, None).unwrap().is_some());
        assert!(st.server_errors.is_empty());
    }

    #[test]
    fn each_request_is_timed_from_sending_to_its_ready_for_query() {
        let histogram = Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap();
        let mut clock = RequestClock::default();
        let mut b = Buffers::default();
        let mut st = TxState::default();
        let send = |clock: &mut RequestClock, b: &mut Buffers, st: &mut TxState, req: &[u8]| {
            b.from_client.extend_from_slice(req);
            scan_client(b, st, 1 << 20, None).unwrap();
            clock.sent(st);
            b.to_server.clear();
        };
        let answer = |clock: &mut RequestClock, b: &mut Buffers, st: &mut TxState, resp: &[u8]| {
            b.from_server.extend_from_slice(resp);
            scan_server(b, st, None).unwrap();
            clock.answered(st, &histogram);
            b.to_client.clear();
        };
        let ready = msg(b'Z', b"I");
        let query = msg(b'Q', b"SELECT 1\0");
        send(&mut clock, &mut b, &mut st, &query);
        assert_eq!(clock.owed(), 1);
        answer(&mut clock, &mut b, &mut st, &ready);
        assert_eq!(histogram.get_sample_count(), 1);
        // Pipelined, or sent right after an error before its ReadyForQuery
        // came: each request is timed on its own.
        send(
            &mut clock,
            &mut b,
            &mut st,
            &[query.clone(), query.clone()].concat(),
        );
        answer(&mut clock, &mut b, &mut st, &ready);
        assert_eq!(histogram.get_sample_count(), 2);
        send(&mut clock, &mut b, &mut st, &query);
        assert_eq!(clock.owed(), 2);
        answer(
            &mut clock,
            &mut b,
            &mut st,
            &[ready.clone(), ready.clone()].concat(),
        );
        assert_eq!(histogram.get_sample_count(), 4);
        // Extended protocol: the clock starts at the Parse, before any Sync,
        // and a ParseComplete does not stop it.
        send(&mut clock, &mut b, &mut st, &msg(b'P', b"\0SELECT 1\0\0\0"));
        let parsed = clock.batch.expect("the batch is clocked");
        assert_eq!(clock.owed(), 0);
        answer(&mut clock, &mut b, &mut st, &msg(b'1', b""));
        send(&mut clock, &mut b, &mut st, &msg(b'S', b""));
        assert_eq!(clock.ring[clock.head], Some(parsed));
        answer(&mut clock, &mut b, &mut st, &ready);
        assert_eq!(histogram.get_sample_count(), 5);
        // Deeper than the ring: the overflow is answered untimed, in order.
        let many: Vec<u8> = (0..CLOCKED + 4).flat_map(|_| query.clone()).collect();
        send(&mut clock, &mut b, &mut st, &many);
        assert_eq!((clock.len, clock.untimed), (CLOCKED, 4));
        let readies: Vec<u8> = (0..CLOCKED + 4).flat_map(|_| ready.clone()).collect();
        answer(&mut clock, &mut b, &mut st, &readies);
        assert_eq!(histogram.get_sample_count(), 5 + CLOCKED as u64);
        assert_eq!(clock.owed(), 0);
        // Syncs sent into COPY FROM STDIN earn nothing: forgotten.
        send(
            &mut clock,
            &mut b,
            &mut st,
            &[msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")].concat(),
        );
        assert_eq!(clock.owed(), 1);
        let executed = clock.ring[clock.head];
        send(&mut clock, &mut b, &mut st, &msg(b'd', b"1\n"));
        assert_eq!(clock.owed(), 0);
        assert_eq!(clock.batch, executed, "the copy is still the request");
    }

    #[test]
    fn client_scan_counts_and_keeps_partial_frames() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        let q = msg(b'Q', b"select 1\0");
        b.from_client.extend_from_slice(&q);
        b.from_client
            .extend_from_slice(&msg(b'P', b"\0select 1\0\0\0")[..7]);
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(&b.to_server[..], &q[..]);
        assert_eq!(b.from_client.len(), 7);
        assert_eq!(st.pending, 1);
        assert!(!st.unsynced);
    }

    #[test]
    fn client_scan_extended_and_sync() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        for m in [
            msg(b'P', b"\0x\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert!(st.unsynced);
        assert_eq!(st.pending, 0);
        b.from_client.extend_from_slice(&msg(b'S', b""));
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert!(!st.unsynced);
        assert_eq!(st.pending, 1);
    }

    #[test]
    fn sync_before_copy_data_earns_no_ready_for_query() {
        // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync.
        let mut b = Buffers::default();
        let mut st = TxState::default();
        for m in [
            msg(b'B', b"\0s0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(st.pending, 1);
        b.from_client.extend_from_slice(&msg(b'd', b"1\tx\n"));
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(
            st.pending, 0,
            "the Sync sent into copy-in mode is ignored by the server"
        );
        assert!(!st.at_rest(), "mid-COPY is never a release point");
        for m in [msg(b'c', b""), msg(b'S', b"")] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(st.pending, 1);
        assert!(!st.in_copy);
        // Simple-protocol COPY: one Query, one ReadyForQuery.
        let mut st = TxState::default();
        for m in [
            msg(b'Q', b"COPY t FROM STDIN\0"),
            msg(b'd', b"1\n"),
            msg(b'c', b""),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(st.pending, 1);
        assert!(!st.in_copy);
    }

    #[test]
    fn client_scan_rejects_bad_frames() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        b.from_client.extend_from_slice(&msg(b'z', b""));
        assert!(scan_client(&mut b, &mut st, 1 << 20, None)
            .unwrap_err()
            .contains("type"));
        let mut b = Buffers::default();
        b.from_client.extend_from_slice(b"Q\x00\x10\x00\x00");
        assert!(scan_client(&mut b, &mut st, 1024, None)
            .unwrap_err()
            .contains("max_message_size"));
        let mut b = Buffers::default();
        b.from_client.extend_from_slice(b"Q\x00\x00\x00\x01");
        assert!(scan_client(&mut b, &mut st, 1024, None)
            .unwrap_err()
            .contains("length"));
    }

    #[test]
    fn client_scan_stops_at_terminate() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        b.from_client.extend_from_slice(&msg(b'Q', b"commit\0"));
        b.from_client.extend_from_slice(&msg(b'X', b""));
        assert!(matches!(
            scan_client(&mut b, &mut st, 1 << 20, None),
            Ok(ClientScan::Terminate)
        ));
        assert_eq!(b.to_server.len(), 12);
        assert!(b.from_client.is_empty());
    }

    #[test]
    fn server_scan_streams_large_messages_and_reads_status() {
        let mut b = Buffers::default();
        let mut st = TxState {
            pending: 1,
            ..TxState::default()
        };
        // A huge row streams through in pieces.
        let row = msg(b'D', &vec![7u8; WHOLE_MESSAGE_LIMIT + 10]);
        b.from_server.extend_from_slice(&row[..50]);
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(b.to_client.len(), 50);
        assert_eq!(st.server_skip, row.len() - 50);
        b.to_client.clear();
        b.from_server.extend_from_slice(&row[50..]);
        b.from_server.extend_from_slice(&msg(b'Z', b"T")[..5]);
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(st.server_skip, 0);
        assert_eq!(st.pending, 1, "ReadyForQuery not complete yet");
        assert_eq!(b.from_server.len(), 5);
        b.from_server.extend_from_slice(b"T");
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!((st.pending, st.status), (0, TxStatus::InTransaction));
        assert!(!st.is_idle());
        assert!(st.at_rest());
    }
}
