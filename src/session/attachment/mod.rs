//! The attachment core: everything the byte streams of one server
//! attachment need, with no I/O in it (no sockets, no tokio, no clock).
//!
//! The relay reads bytes into `Buffers::from_client` / `from_server`, calls
//! `feed_client` / `feed_server`, and writes out what lands in `to_server`
//! / `to_client`. The core keeps the bookkeeping that decides whether the
//! server connection may go back to the pool, and answers it with
//! `release`, a positive proof of cleanliness:
//!
//! - every Query, FunctionCall and Sync sent earns one ReadyForQuery
//!   (`pending`), except Syncs the server reads as COPY input and ignores;
//! - COPY state is the *server's*: set by its CopyInResponse /
//!   CopyOutResponse / CopyBothResponse, ended by its CommandComplete or
//!   ErrorResponse. Client CopyData/CopyDone/CopyFail outside COPY change
//!   nothing (PostgreSQL ignores them);
//! - extended-protocol messages not yet followed by a Sync (`unsynced`), a
//!   partly forwarded server message (`server_skip`), pgkeel's own prelude
//!   still being answered (`swallow`), pgkeel replies still queued, or a
//!   stream the core cannot account for exactly (`uncertain`) all block
//!   release.
//!
//! `client.rs` scans client frames, `server.rs` server frames.

mod client;
pub mod journal;
mod server;

use bytes::BytesMut;

use crate::classify;
use crate::config::PinFeature;
use crate::protocol::{self, frontend, sqlstate, TxStatus};
use crate::querylog::QueryLog;
use crate::statements::ConnStatements;

use super::prepared::Prepared;
use crate::classify::effects::{self, Effects};
use crate::commit_token::Token;
use journal::Journal;

pub use client::scan_client;
pub use server::{scan_server, WHOLE_MESSAGE_LIMIT};

/// Buffers grow by at most this much ahead of bytes actually received, so
/// a declared length reserves nothing.
pub const GROW_STEP: usize = 64 * 1024;

/// A buffer whose capacity grew past this (a large message went through)
/// is shrunk back to `SHRINK_TO` once it is (nearly) empty.
pub const SHRINK_ABOVE: usize = 1 << 20;
pub const SHRINK_TO: usize = 8 * 1024;

/// A server's FATAL: its SQLSTATE and message, for telling the client
/// what the server said when nothing else (a failover) explains the loss.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFatal {
    pub code: String,
    pub message: String,
}

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
    /// An autocommit write's answer, held back until its commit token's
    /// answer is in (`commit_outcome = "token"`).
    pub held: BytesMut,
}

impl Buffers {
    /// Gives back the memory a large message left behind.
    pub fn shrink(&mut self) {
        // The usual case, checked straight: no buffer ever grew large.
        let largest = self
            .from_client
            .capacity()
            .max(self.to_server.capacity())
            .max(self.from_server.capacity())
            .max(self.to_client.capacity())
            .max(self.replay.capacity())
            .max(self.rewrite.capacity())
            .max(self.held.capacity());
        if largest <= SHRINK_ABOVE {
            return;
        }
        for buf in [
            &mut self.from_client,
            &mut self.to_server,
            &mut self.from_server,
            &mut self.to_client,
            &mut self.replay,
            &mut self.rewrite,
            &mut self.held,
        ] {
            shrink(buf);
        }
    }
}

/// Makes room to read into `buf`: at least a quarter of `step` free, never
/// more than `GROW_STEP` reserved at once.
pub fn ensure_room(buf: &mut BytesMut, step: usize) {
    if buf.capacity() - buf.len() < step / 4 {
        buf.reserve(step.min(GROW_STEP));
    }
}

fn shrink(buf: &mut BytesMut) {
    if buf.capacity() > SHRINK_ABOVE && buf.len() <= SHRINK_TO / 2 {
        let mut small = BytesMut::with_capacity(SHRINK_TO);
        small.extend_from_slice(buf);
        *buf = small;
    }
}

/// COPY as the server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Copy {
    #[default]
    None,
    /// CopyInResponse: the server reads COPY data from the client.
    In,
    /// CopyOutResponse: the server sends COPY data.
    Out,
    /// CopyBothResponse (replication).
    Both,
}

/// Protocol state of the attached server connection, as seen in the stream.
#[derive(Debug)]
pub struct State {
    /// ReadyForQuery messages the server still owes.
    pub pending: u32,
    /// Status of the last ReadyForQuery.
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
    /// The server's COPY state.
    pub copy: Copy,
    /// The request so far is read-only and kept in `Buffers::replay`.
    pub replayable: bool,
    /// The request in flight commits (COMMIT, END, PREPARE TRANSACTION...,
    /// anywhere in its text): if the server dies now, the transaction's
    /// outcome is unknown.
    pub commit_in_flight: bool,
    /// Forward one request at a time (the session routes each request on
    /// its own: attached to a replica, the next one may be a write).
    pub one_request: bool,
    /// With `one_request`: a whole request went to the server; the next
    /// waits until its ReadyForQuery.
    pub request_done: bool,
    /// What the statements sent during this attach do to the session.
    pub effects: Effects,
    /// A statement needed the client pinned to this connection.
    pub pinned: Option<PinFeature>,
    /// The client's next batch waits for the server to confirm the
    /// statement names the previous one recorded (reading pauses too).
    pub batch_waits: bool,
    /// The server's FATAL was a protocol violation of the client's.
    pub client_violation: bool,
    /// The FATAL the server ended the connection with, if it said why.
    pub server_fatal: Option<ServerFatal>,
    /// (server process id, the client's own): a notification the client's
    /// own server connection sent names the process id the client was
    /// given at login, as without pgkeel.
    pub own_pid: Option<(i32, i32)>,
    /// Settings `pg_settings` hides (`x.y`, `role`) that statements sent
    /// during this attach set: the session reads them back by name.
    pub hidden_settings: Vec<String>,
    /// SQLSTATE classes of the ErrorResponses forwarded to the client and
    /// not yet counted (the pump counts them after each server read).
    pub server_errors: Vec<[u8; 2]>,
    /// `[log] log_queries`: who sends this attach's queries. `None` (the
    /// default) costs one check per Query or Parse.
    pub log: Option<Box<QueryLog>>,
    /// Syncs found to be read as COPY input (earning nothing), not yet
    /// taken by the request clock.
    pub ignored_syncs: u32,
    /// The stream took a turn the core cannot count exactly (a command
    /// sent into COPY, a COPY answer to a pipelined command): the
    /// connection is never released, only closed.
    pub uncertain: bool,
    /// The last command (Query, FunctionCall or Execute) sent, for matching
    /// a CopyInResponse to it.
    last: LastCommand,
    /// In copy-in, the client has not ended its COPY input yet: what it
    /// sends is read as COPY data (Syncs earn nothing).
    input_open: bool,
    /// Syncs sent into the server's copy-in mode (not counted in `pending`).
    syncs_in_copy: u32,
    /// Transaction replay's record: what the client sent and received.
    pub journal: Journal,
    /// A commit token pgkeel records ahead of the client's COMMIT
    /// (`commit_outcome = "token"`, the connection's database has the
    /// functions, the transaction may write).
    pub token_offer: Option<Token>,
    /// The token sent ahead of the COMMIT in flight (or with an autocommit
    /// write), and its answer.
    pub token: TokenState,
    /// After a recorded token: the COMMIT's CommandComplete reached the
    /// client (for an autocommit write: its whole answer is in
    /// `Buffers::held`).
    pub commit_tag_sent: bool,
}

/// A commit token's progress in one attachment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenState {
    #[default]
    None,
    /// Sent; its answer (swallowed) not read yet.
    Sent(Token),
    /// Answered: recorded in the transaction whose COMMIT follows (or
    /// that transaction wrote nothing, and its COMMIT can lose nothing).
    Recorded(Token),
    /// The token failed (and the transaction with it): that COMMIT's
    /// outcome stays unknown.
    Refused,
    /// Sent after an autocommit write, in its query: the write's own
    /// answer comes first (`statement_done` once its CommandComplete
    /// passed), then the token's (held back; `recorded` once it said t).
    Trailing {
        token: Token,
        statement_done: bool,
        recorded: bool,
    },
}

/// What followed the last command the client sent, so that a
/// CopyInResponse answering it tells which Syncs the server read as COPY
/// input.
#[derive(Debug, Default, Clone, Copy)]
struct LastCommand {
    /// A command was sent since the attach (else no COPY can answer one).
    sent: bool,
    /// It was an Execute (extended protocol: the COPY ends at a Sync).
    execute: bool,
    /// An Execute came before it since the last Sync: a COPY answer could
    /// be that one's.
    batched: bool,
    /// ReadyForQuery messages owed for what was sent before it.
    owed_before: u32,
    /// Syncs sent after it (counted in `pending`) before any CopyDone/CopyFail.
    syncs: u32,
    /// A CopyDone or CopyFail was sent after it (or another message that
    /// would end a COPY: `broken`).
    copy_ended: bool,
    /// A message that is neither COPY input nor Sync/Flush followed it: if
    /// it started a COPY, the server fails the COPY there.
    broken: bool,
    /// Executes since the last Sync.
    executes: u32,
    /// A Sync (counted) followed the end of the COPY input.
    synced_after_end: bool,
    /// Extended-protocol messages were waiting for a Sync when it was sent.
    unsynced_before: bool,
}

impl State {
    /// The token of a COMMIT in flight that is all the server owes, if the
    /// server recorded one: the new primary can say whether it committed.
    pub fn commit_token(&self) -> Option<Token> {
        let token = match self.token {
            // A token commits if its transaction does: sent is enough (its
            // answer may be lost with the server; pgkeel's prelude may be
            // still unanswered ahead of a trailing one).
            TokenState::Recorded(t) | TokenState::Sent(t) => t,
            TokenState::Trailing { token, .. } => token,
            _ => return None,
        };
        (self.commit_in_flight && self.pending == 1 && !self.unsynced).then_some(token)
    }

    /// A token may go ahead of a COMMIT now: the transaction is open and
    /// has not failed, and the server owes nothing (so the token's answer
    /// is the next to come back, and is swallowed).
    fn token_may_go(&self) -> bool {
        self.idle_for_token() && self.status == TxStatus::InTransaction
    }

    /// The server owes nothing and nothing is in the way of a token.
    fn idle_for_token(&self) -> bool {
        self.pending == 0
            && !self.unsynced
            && self.swallow == 0
            && self.copy == Copy::None
            && !self.uncertain
    }

    /// An autocommit write may carry a token after it now: nothing of the
    /// client's is in flight (pgkeel's prelude may be: its answers come
    /// first and are swallowed as ever).
    fn token_may_trail(&self) -> bool {
        self.pending == 0
            && !self.unsynced
            && self.copy == Copy::None
            && !self.uncertain
            && self.status == TxStatus::Idle
    }

    /// Forwarding one request at a time (`one_request`), a request was
    /// answered and the server is idle: the next request must be routed on
    /// its own, so no more client bytes go to this server.
    pub fn answered_alone(&self) -> bool {
        self.one_request && self.queries > 0 && self.pending == 0 && self.status == TxStatus::Idle
    }
}

impl super::prepared::Stream for State {
    fn status(&self) -> TxStatus {
        self.status
    }

    fn query_skipped(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    fn own_parse_complete(&mut self) -> bool {
        if self.drop_preamble > 0 {
            self.drop_preamble -= 1;
            self.preamble += 1;
            return false;
        }
        if self.responded {
            return true;
        }
        self.preamble += 1;
        true
    }

    fn answered(&mut self) {
        self.responded = true;
    }
}

impl Default for State {
    fn default() -> Self {
        State {
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
            copy: Copy::None,
            replayable: false,
            commit_in_flight: false,
            one_request: false,
            request_done: false,
            effects: Effects::NONE,
            pinned: None,
            hidden_settings: Vec::new(),
            client_violation: false,
            server_fatal: None,
            own_pid: None,
            batch_waits: false,
            server_errors: Vec::new(),
            log: None,
            ignored_syncs: 0,
            uncertain: false,
            last: LastCommand::default(),
            input_open: false,
            syncs_in_copy: 0,
            journal: Journal::off(),
            token_offer: None,
            token: TokenState::None,
            commit_tag_sent: false,
        }
    }
}

impl State {
    /// A fresh attachment's state. `replayable`: the request may be re-run
    /// elsewhere; `drop_preamble`: the client has this much of a re-run
    /// request's answer; `one_request`: forward one request at a time;
    /// `journal`: transaction replay's record, recording or off.
    pub fn attached(
        replayable: bool,
        drop_preamble: u32,
        one_request: bool,
        journal: Journal,
    ) -> State {
        State {
            replayable,
            drop_preamble,
            one_request,
            journal,
            ..State::default()
        }
    }

    /// The server is between transactions with nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.at_rest() && self.status == TxStatus::Idle
    }

    /// Nothing is in flight, though a transaction may be open.
    pub fn at_rest(&self) -> bool {
        self.not_yet().is_none()
    }

    /// Why the stream is not at rest, if it is not.
    fn not_yet(&self) -> Option<NotYet> {
        if self.pending > 0 {
            return Some(NotYet::Owed(self.pending));
        }
        if self.swallow > 0 {
            // pgkeel's own prelude may still be answering when the client's
            // request was answered by pgkeel itself.
            return Some(NotYet::Prelude);
        }
        if self.unsynced {
            return Some(NotYet::Unsynced);
        }
        if self.copy != Copy::None {
            return Some(NotYet::Copy(self.copy));
        }
        if self.server_skip > 0 {
            return Some(NotYet::PartialMessage);
        }
        if self.uncertain {
            return Some(NotYet::Uncertain);
        }
        if self.journal.verifying() {
            return Some(NotYet::Replaying);
        }
        None
    }

    /// Syncs read as COPY input since the last call (for the request clock).
    pub fn take_ignored_syncs(&mut self) -> u32 {
        std::mem::take(&mut self.ignored_syncs)
    }

    /// A command (Query, FunctionCall, Execute) goes to the server.
    fn command_sent(&mut self, execute: bool) {
        if self.copy == Copy::In && self.input_open {
            // The server reads it as COPY input and fails the COPY: what it
            // then answers depends on timing the core cannot see.
            self.uncertain = true;
            self.input_open = false;
        }
        let executes = self.last.executes;
        self.last = LastCommand {
            sent: true,
            execute,
            batched: executes > 0,
            owed_before: self.pending,
            executes: executes + u32::from(execute),
            unsynced_before: self.unsynced,
            ..LastCommand::default()
        };
    }

    /// A Sync goes to the server; false if the server will read it as COPY
    /// input (and earn nothing for it).
    fn sync_sent(&mut self) -> bool {
        if self.copy == Copy::In && self.input_open {
            self.syncs_in_copy += 1;
            return false;
        }
        if self.last.copy_ended {
            self.last.synced_after_end = true;
        } else {
            self.last.syncs += 1;
        }
        self.last.executes = 0;
        true
    }

    /// CopyDone or CopyFail goes to the server. Outside COPY the server
    /// ignores it, so it changes nothing else.
    fn copy_end_sent(&mut self) {
        self.last.copy_ended = true;
        self.input_open = false;
    }

    /// Parse, Bind, Describe or Close goes to the server. In COPY (or if
    /// the last command turns out to start one) the server reads it as bad
    /// COPY input and ends the COPY with an error: Syncs after it count.
    fn other_sent(&mut self) {
        if !self.last.copy_ended {
            self.last.copy_ended = true;
            self.last.broken = true;
        }
        self.input_open = false;
    }

    /// A ReadyForQuery arrived.
    fn ready(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        self.last.owed_before = self.last.owed_before.saturating_sub(1);
    }

    /// The server entered copy-in mode. Returns the Syncs that turn out to
    /// have been read as COPY input: those the client sent after the
    /// command that started the COPY and before its CopyDone/CopyFail.
    fn copy_in_started(&mut self) -> u32 {
        let last = self.last;
        if !last.sent || (self.pending == 0 && !self.unsynced) {
            // No command was sent, or nothing sent is waiting for an
            // answer: no request of the client's started this COPY (a
            // server off the protocol).
            self.uncertain = true;
        }
        if last.owed_before > 0 || last.batched || self.copy != Copy::None || last.broken {
            // The COPY may answer an earlier command than the last one, or
            // fails on a message sent after it.
            self.uncertain = true;
        }
        self.copy = Copy::In;
        self.input_open = !last.copy_ended;
        let n = last.syncs.min(self.pending);
        self.pending -= n;
        self.queries = self.queries.saturating_sub(u64::from(n));
        self.ignored_syncs += n;
        self.last.syncs = 0;
        if !last.synced_after_end && (last.execute || (last.unsynced_before && n > 0)) {
            // An extended-protocol COPY ends at the Sync after CopyDone; and
            // a Sync read as COPY input closed no batch.
            self.unsynced = true;
        }
        n
    }

    /// CommandComplete or ErrorResponse while the server was in COPY.
    fn copy_finished(&mut self, error: bool) {
        if error && self.copy == Copy::In && self.syncs_in_copy > 0 && self.input_open {
            // The COPY failed on its own: Syncs sent into it may have been
            // read after it ended, and answered.
            self.uncertain = true;
        }
        self.copy = Copy::None;
        self.input_open = false;
        self.syncs_in_copy = 0;
    }
}

/// Why a server connection cannot be released yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotYet {
    /// ReadyForQuery messages still owed.
    Owed(u32),
    /// pgkeel's own prelude is still being answered.
    Prelude,
    /// Extended-protocol messages not yet followed by a Sync.
    Unsynced,
    /// The server is in COPY.
    Copy(Copy),
    /// Part of a server message went to the client, or is buffered.
    PartialMessage,
    /// Bytes are still waiting to be written.
    Unflushed,
    /// pgkeel's own replies are still queued.
    QueuedReply,
    /// The stream cannot be accounted for exactly: close, never release.
    Uncertain,
    /// A transaction is open (or failed).
    InTransaction(TxStatus),
    /// A replayed transaction's answer is still being compared with what
    /// the client had.
    Replaying,
}

/// May the attached connection go back to the pool?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Proven clean: idle, nothing owed or buffered.
    Clean,
    /// Clean, but a statement pinned the client to this connection.
    Pinned(PinFeature),
    NotYet(NotYet),
}

/// One server attachment's streams: the buffers and the state.
#[derive(Default)]
pub struct Attachment {
    pub bufs: Buffers,
    pub st: State,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ClientStep {
    /// Scanned what was whole; more may come.
    Ok,
    /// The client sent Terminate (not forwarded).
    Terminate,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ServerStep {
    Ok,
    /// The server sent FATAL or PANIC (not forwarded): its message.
    Fatal(String),
}

impl Attachment {
    /// Scans whole client messages into `to_server` (see `scan_client`).
    pub fn feed_client(
        &mut self,
        max: usize,
        track: Option<&mut Track>,
    ) -> Result<ClientStep, String> {
        // pgkeel's own answers (a Parse it did not send) reach the client here.
        let from = self.bufs.to_client.len();
        let step = scan_client(&mut self.bufs, &mut self.st, max, track);
        self.st.journal.delivered(&mut self.bufs.to_client, from);
        step
    }

    /// Scans server bytes into `to_client` (see `scan_server`).
    pub fn feed_server(&mut self, track: Option<&mut Track>) -> Result<ServerStep, String> {
        let from = self.bufs.to_client.len();
        let fatal = scan_server(&mut self.bufs, &mut self.st, track)?;
        let j = &mut self.st.journal;
        j.delivered(&mut self.bufs.to_client, from);
        j.check_short(self.st.pending, self.st.unsynced);
        Ok(match fatal {
            Some(m) => ServerStep::Fatal(m),
            None => ServerStep::Ok,
        })
    }

    /// Whether the connection is proven clean to go back to the pool.
    pub fn release(&self, track: Option<&Track>) -> Release {
        if let Some(why) = self.st.not_yet() {
            return Release::NotYet(why);
        }
        let b = &self.bufs;
        if !b.from_server.is_empty() {
            return Release::NotYet(NotYet::PartialMessage);
        }
        if !b.to_server.is_empty() || !b.to_client.is_empty() || !b.held.is_empty() {
            return Release::NotYet(NotYet::Unflushed);
        }
        if track.is_some_and(|t| !t.prepared.settled()) {
            return Release::NotYet(NotYet::QueuedReply);
        }
        if self.st.status != TxStatus::Idle {
            return Release::NotYet(NotYet::InTransaction(self.st.status));
        }
        match self.st.pinned {
            Some(f) => Release::Pinned(f),
            None => Release::Clean,
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
    /// Session effects of a Query, Parse or Bind: statements the server
    /// drops, and features that pin the client or are refused. `Some(sql)`:
    /// send this instead of the client's Query.
    fn effects(&mut self, typ: u8, frame: &[u8], st: &mut State) -> Option<String> {
        let mut fx = match typ {
            frontend::BIND => self.prepared.bind_effects(frame),
            _ => effects::scan(protocol::query_text(typ, frame)),
        };
        if fx.is_empty() {
            return None;
        }
        if let Some(r) = fx.refusal(typ == frontend::QUERY) {
            // Nothing of it runs: its effects are not the session's.
            if typ == frontend::QUERY {
                return Some(super::prepared::raising_query(r.code, r.message, r.hint));
            }
            self.prepared.refuse(r.code, r.message, r.hint);
            return Some(String::new());
        }
        // What runs: the text itself, the statement a Bind names, the one
        // a SQL-level EXECUTE names.
        let text = match typ {
            frontend::BIND => {
                protocol::bind_statement_name(frame).and_then(|n| self.prepared.query_of(n))
            }
            _ => Some(protocol::query_text(typ, frame)),
        };
        let executed = match typ {
            frontend::QUERY if fx.contains(Effects::SQL_PREPARED) => {
                text.and_then(|t| self.prepared.executed_text(t))
            }
            _ => None,
        };
        if let Some(x) = executed {
            fx |= effects::scan(x);
        }
        if fx.contains(Effects::HIDDEN_SETTING) {
            for t in [text, executed].into_iter().flatten() {
                effects::hidden_settings(t, &mut st.hidden_settings);
            }
        }
        st.effects |= fx;
        if fx.contains(Effects::DROPS_STATEMENTS) {
            // It runs at a Bind of a statement (named: after the Bind is
            // rewritten), at an unnamed Parse's Bind or at a Query; a named
            // Parse only defines it.
            match typ {
                frontend::BIND => self.prepared.forget_all_after(),
                frontend::PARSE if frame.get(protocol::HEADER_LEN) != Some(&0) => {}
                _ => {
                    self.conn.clear();
                    self.prepared.forget_all();
                }
            }
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
        if typ == frontend::QUERY {
            Some(super::prepared::raising_query(
                sqlstate::FEATURE_NOT_SUPPORTED,
                &message,
                &hint,
            ))
        } else {
            self.prepared
                .refuse(sqlstate::FEATURE_NOT_SUPPORTED, &message, &hint);
            Some(String::new())
        }
    }
}

/// May this frame be part of a request re-run on another server?
/// Only the message types are checked here, on the hot path; what the
/// request runs is checked by `replay_reads_only`, when a server has died.
fn replayable_frame(typ: u8) -> bool {
    use frontend::*;
    matches!(
        typ,
        QUERY | PARSE | BIND | DESCRIBE | EXECUTE | SYNC | FLUSH
    )
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
            frontend::QUERY | frontend::PARSE => {
                parsed |= typ == frontend::PARSE;
                reads(protocol::query_text(typ, frame))
            }
            frontend::BIND => match protocol::bind_statement_name(frame) {
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

#[cfg(test)]
pub(crate) mod testing {
    /// A whole message of type `t` with `body`.
    pub fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;
