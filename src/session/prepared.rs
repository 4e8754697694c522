//! A transaction-mode client's named prepared statements, and keeping the
//! server's answers in step with what the client expects.
//!
//! The client's names map to shared statements (`crate::statements`). On
//! the attached server connection, a client's Parse becomes a Parse of the
//! shared name, or nothing if the connection already has it (pgkeel then
//! answers ParseComplete itself); a Bind or Describe of a statement the
//! connection lacks gets a Parse sent ahead of it (its ParseComplete is not
//! the client's); a Close only forgets the client's name (the statement
//! stays for other clients; the connection's LRU closes it later).
//!
//! Answers pgkeel gives or hides must land at the right place in the
//! stream, so every message sent to the server is queued as an `Item`, and
//! each server message is matched to the head of the queue: the message
//! that completes an item pops it, and pgkeel's own replies go out when
//! they reach the head. After an error the server ignores messages until
//! Sync; so does the queue (and undoes what those messages recorded).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{self, backend as Bk, field, frontend as F, HEADER_LEN};
use crate::statements::{ConnStatements, Statement, StatementCache};

use super::attachment::State;

/// What pgkeel sent or will answer, in the order of the client's messages.
#[derive(Debug)]
enum Item {
    /// A message sent to the server. `undo`: the statement id a Parse
    /// recorded on the connection; `forget`: the client name it recorded;
    /// both are dropped if the Parse fails or is skipped. `swallow`: the
    /// message is pgkeel's own, its answer is not the client's.
    Sent {
        typ: u8,
        undo: u64,
        forget: Option<Box<[u8]>>,
        swallow: bool,
    },
    /// An answer pgkeel gives itself when its turn comes; `ready`: then a
    /// ReadyForQuery (it answers a whole simple Query).
    Reply {
        bytes: Bytes,
        forget: Option<Box<[u8]>>,
        ready: bool,
    },
}

/// Counts since the last time the session read them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Parses sent to a server.
    pub prepares: u64,
    /// Uses of a statement the connection already had.
    pub hits: u64,
    /// Statements closed on a server to stay within its cache size.
    pub evictions: u64,
}

/// One client's prepared statements and the answer queue of its attach.
pub struct Prepared {
    cache: Arc<StatementCache>,
    /// Rewrite named statements (`[proxy] prepared_statements`).
    pub enabled: bool,
    /// Statements kept per server connection.
    pub cap: usize,
    names: HashMap<Box<[u8]>, Arc<Statement>>,
    /// Some statement in `names` changes the session (SET...): a Bind must
    /// look its effects up.
    names_have_effects: bool,
    /// Some statement in `names` commits: a Bind must look it up.
    names_commit: bool,
    /// Names of SQL-level PREPAREs.
    sql_names: HashMap<Box<[u8]>, Arc<Statement>>,
    /// Queries pgkeel added, not yet counted by the relay.
    injected: u32,
    queue: VecDeque<Item>,
    /// The server reported an error: it skips to the next Sync.
    skipping: bool,
    /// pgkeel answered an error itself: the client's messages are dropped
    /// up to its Sync, as the server would.
    drop_to_sync: bool,
    pub counters: Counters,
}

/// The Describe/Close target byte for a prepared statement (`P`: a portal).
const STATEMENT: u8 = b'S';

const PARSE_COMPLETE: &[u8] = b"1\0\0\0\x04";
const CLOSE_COMPLETE: &[u8] = b"3\0\0\0\x04";

/// The NUL-terminated string at the start of `b` (without its NUL) and
/// what follows it.
fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = memchr::memchr(0, b)?;
    Some((&b[..n], &b[n + 1..]))
}

fn frame_start(out: &mut BytesMut, typ: u8, body_len: usize) {
    out.put_u8(typ);
    out.put_i32((body_len + 4) as i32);
}

fn extended(typ: u8) -> bool {
    matches!(
        typ,
        F::PARSE | F::BIND | F::DESCRIBE | F::EXECUTE | F::CLOSE
    )
}

/// What to do with a client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send it as it is.
    Forward,
    /// A replacement (maybe with messages ahead of it) was written out.
    Replaced,
    /// Not sent: pgkeel answers it (or drops it, as the server would).
    Dropped,
}

impl Prepared {
    pub fn new(cache: Arc<StatementCache>) -> Prepared {
        Prepared {
            cache,
            enabled: true,
            cap: 500,
            names: HashMap::new(),
            names_have_effects: false,
            names_commit: false,
            sql_names: HashMap::new(),
            injected: 0,
            queue: VecDeque::new(),
            skipping: false,
            drop_to_sync: false,
            counters: Counters::default(),
        }
    }

    /// A new attach: nothing in flight.
    /// The server connection died: the client names its unanswered
    /// Parses and PREPAREs recorded were never confirmed, so they are
    /// forgotten (a re-run request, or the client trying again, records
    /// them anew), and the queue goes with the connection.
    pub fn server_lost(&mut self) {
        for item in self.queue.drain(..) {
            match item {
                Item::Sent {
                    typ: F::QUERY,
                    forget: Some(n),
                    ..
                } => {
                    self.sql_names.remove(&n);
                }
                Item::Sent {
                    forget: Some(n), ..
                }
                | Item::Reply {
                    forget: Some(n), ..
                } => {
                    self.names.remove(&n);
                }
                _ => {}
            }
        }
        self.reset_queue();
    }

    pub fn reset_queue(&mut self) {
        self.queue.clear();
        self.skipping = false;
        self.drop_to_sync = false;
    }

    /// Statements the client has prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// DEALLOCATE ALL / DISCARD ALL: the client's names are gone.
    pub fn forget_all(&mut self) {
        self.names.clear();
        self.names_have_effects = false;
        self.names_commit = false;
        self.sql_names.clear();
    }

    /// Queries pgkeel added (a PREPARE ahead of an EXECUTE) since the last
    /// call: each owes a ReadyForQuery.
    pub fn take_injected(&mut self) -> u32 {
        std::mem::take(&mut self.injected)
    }

    /// SQL-level PREPARE / EXECUTE / DEALLOCATE in a simple Query: the
    /// same sharing as the protocol's, by rewriting the statement name.
    fn sql_statement(
        &mut self,
        frame: &[u8],
        conn: &mut ConnStatements,
        out: &mut BytesMut,
    ) -> Option<Verdict> {
        let text = protocol::query_text(F::QUERY, frame);
        let text = trim_end(text);
        let (first, rest) = word(text)?;
        if memchr::memchr(b';', text).is_some() {
            return None;
        }
        if first.eq_ignore_ascii_case(b"prepare") {
            let (name, body) = ident(rest)?;
            if name.eq_ignore_ascii_case(b"transaction") {
                return None;
            }
            let key = [b"\x01SQL ", body].concat();
            if self
                .sql_names
                .get(&name)
                .is_some_and(|s| s.body[..] != key[..])
            {
                let msg = format!(
                    "prepared statement \"{}\" already exists",
                    String::from_utf8_lossy(&name)
                );
                self.refuse_query("42P05", &msg);
                return Some(Verdict::Dropped);
            }
            let stmt = self.cache.intern(&key);
            self.sql_names.insert(name.clone(), stmt.clone());
            if conn.touch(stmt.id) {
                self.counters.hits += 1;
                self.reply_query("PREPARE");
                return Some(Verdict::Dropped);
            }
            self.send_sql_prepare(&stmt, conn, out, false, Some(name));
            return Some(Verdict::Replaced);
        }
        if first.eq_ignore_ascii_case(b"execute") {
            let (name, args) = ident(rest)?;
            let stmt = self.sql_names.get(&name)?.clone();
            if conn.touch(stmt.id) {
                self.counters.hits += 1;
            } else {
                self.send_sql_prepare(&stmt, conn, out, true, None);
                self.injected += 1;
            }
            let server_name = &stmt.server_name[..stmt.server_name.len() - 1];
            let sql = [b"EXECUTE ", server_name, args].concat();
            frame_start(out, F::QUERY, sql.len() + 1);
            out.put_slice(&sql);
            out.put_u8(0);
            self.sent(F::QUERY);
            return Some(Verdict::Replaced);
        }
        if first.eq_ignore_ascii_case(b"deallocate") {
            let (mut name, mut rest) = ident(rest)?;
            if &name[..] == b"prepare" {
                (name, rest) = ident(rest)?;
            }
            if &name[..] == b"all" || !trim_end(rest).is_empty() {
                return None;
            }
            if self.sql_names.remove(&name).is_none() {
                let msg = format!(
                    "prepared statement \"{}\" does not exist",
                    String::from_utf8_lossy(&name)
                );
                self.refuse_query("26000", &msg);
            } else {
                self.reply_query("DEALLOCATE");
            }
            return Some(Verdict::Dropped);
        }
        None
    }

    fn send_sql_prepare(
        &mut self,
        stmt: &Statement,
        conn: &mut ConnStatements,
        out: &mut BytesMut,
        swallow: bool,
        forget: Option<Box<[u8]>>,
    ) {
        if self.add_to(stmt, conn, out) {
            // The Close (by protocol: it works for SQL-prepared statements
            // too) needs a Sync of its own ahead of the simple Query.
            frame_start(out, F::SYNC, 0);
            self.queue.push_back(Item::Sent {
                typ: F::SYNC,
                undo: 0,
                forget: None,
                swallow: true,
            });
            self.injected += 1;
        }
        let server_name = &stmt.server_name[..stmt.server_name.len() - 1];
        let body = &stmt.body[5..];
        let sql = [b"PREPARE ", server_name, body].concat();
        frame_start(out, F::QUERY, sql.len() + 1);
        out.put_slice(&sql);
        out.put_u8(0);
        self.queue.push_back(Item::Sent {
            typ: F::QUERY,
            undo: stmt.id,
            forget,
            swallow,
        });
        self.counters.prepares += 1;
    }

    /// A simple Query answered here: CommandComplete `tag`, then
    /// ReadyForQuery with the server's current status.
    fn reply_query(&mut self, tag: &str) {
        let mut out = BytesMut::new();
        protocol::put_command_complete(&mut out, tag);
        self.answer_query(out);
    }

    /// A simple Query refused here, in its turn.
    fn refuse_query(&mut self, code: &str, message: &str) {
        let mut out = BytesMut::new();
        protocol::put_error(&mut out, protocol::Severity::Error, code, message);
        self.answer_query(out);
    }

    fn answer_query(&mut self, answer: BytesMut) {
        self.queue.push_back(Item::Reply {
            bytes: answer.freeze(),
            forget: None,
            ready: true,
        });
    }

    /// The session effects of the statement a Bind runs (none if unnamed
    /// or unknown: an unnamed statement's Parse was scanned itself).
    pub fn bind_effects(&self, frame: &[u8]) -> crate::classify::effects::Effects {
        if !self.names_have_effects {
            // Spares the usual Bind a second name lookup.
            return Default::default();
        }
        protocol::bind_statement_name(frame)
            .and_then(|name| self.names.get(name))
            .map_or_else(Default::default, |s| s.effects)
    }

    /// The statement text a lone SQL-level `EXECUTE name` in `sql` runs
    /// (what its PREPARE gave), if the client prepared `name`: what it does
    /// to the session counts like its own text.
    pub fn executed_text(&self, sql: &[u8]) -> Option<&[u8]> {
        let (first, rest) = word(trim_end(sql))?;
        if !first.eq_ignore_ascii_case(b"execute") {
            return None;
        }
        let (name, _) = ident(rest)?;
        self.sql_names.get(&name).map(|s| &s.body[..])
    }

    /// The Bind `frame` runs a named statement of the client's that commits.
    pub fn bind_commits(&self, frame: &[u8]) -> bool {
        // The flag spares the usual Bind a name lookup.
        self.names_commit
            && protocol::bind_statement_name(frame)
                .and_then(|name| self.names.get(name))
                .is_some_and(|s| s.commits)
    }

    /// The text of the client's statement `name`, for routing.
    pub fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
        let s = self.names.get(name)?;
        cstr(&s.body).map(|(q, _)| q)
    }

    /// A client message goes to the server as it is (or replaced by one of
    /// the same type): its answer is the client's.
    pub fn sent(&mut self, typ: u8) {
        self.queue.push_back(Item::Sent {
            typ,
            undo: 0,
            forget: None,
            swallow: false,
        });
    }

    fn reply(&mut self, bytes: &'static [u8], forget: Option<Box<[u8]>>) {
        self.queue.push_back(Item::Reply {
            bytes: Bytes::from_static(bytes),
            forget,
            ready: false,
        });
    }

    /// Answers the current batch with an error of pgkeel's own, in its
    /// turn, and drops the client's messages up to its Sync.
    pub fn refuse(&mut self, code: &str, message: &str, hint: &str) {
        let mut out = BytesMut::new();
        protocol::put_error_fields(
            &mut out,
            vec![
                (field::SEVERITY, "ERROR".into()),
                (field::SEVERITY_RAW, "ERROR".into()),
                (field::CODE, code.into()),
                (field::MESSAGE, message.into()),
                (field::HINT, hint.into()),
            ],
        );
        self.queue.push_back(Item::Reply {
            bytes: out.freeze(),
            forget: None,
            ready: false,
        });
        self.drop_to_sync = true;
    }

    /// Handles one whole client message (`frame`, header included) bound
    /// for `conn`, writing any replacement to `out`.
    pub fn client_message(
        &mut self,
        typ: u8,
        frame: &[u8],
        conn: &mut ConnStatements,
        out: &mut BytesMut,
    ) -> Verdict {
        if self.drop_to_sync {
            if typ != F::SYNC {
                return Verdict::Dropped;
            }
            self.drop_to_sync = false;
        }
        let body = &frame[HEADER_LEN..];
        match typ {
            F::PARSE if self.enabled => {
                let Some((name, rest)) = cstr(body) else {
                    self.sent(typ);
                    return Verdict::Forward;
                };
                if name.is_empty() {
                    self.sent(typ);
                    return Verdict::Forward;
                }
                // As in PostgreSQL, a name in use is an error even for the
                // same text (names a lost server never confirmed were
                // forgotten with it: `server_lost`).
                if self.names.contains_key(name) {
                    let msg = format!(
                        "prepared statement \"{}\" already exists",
                        String::from_utf8_lossy(name)
                    );
                    self.refuse("42P05", &msg, "Close it first, or use another name.");
                    return Verdict::Dropped;
                }
                let stmt = self.cache.intern(rest);
                let forget = Some(Box::<[u8]>::from(name));
                self.names.insert(name.into(), stmt.clone());
                self.names_have_effects |= !stmt.effects.is_empty();
                self.names_commit |= stmt.commits;
                if conn.touch(stmt.id) {
                    self.counters.hits += 1;
                    self.reply(PARSE_COMPLETE, forget);
                    return Verdict::Dropped;
                }
                self.send_parse(&stmt, conn, out, false, forget);
                Verdict::Replaced
            }
            F::BIND if self.enabled => {
                let stmt = cstr(body).and_then(|(portal, rest)| {
                    let (name, rest) = cstr(rest)?;
                    let s = self.names.get(name)?.clone();
                    Some((portal, s, rest))
                });
                let Some((portal, stmt, rest)) = stmt else {
                    self.sent(typ);
                    return Verdict::Forward;
                };
                self.ensure(&stmt, conn, out);
                frame_start(
                    out,
                    F::BIND,
                    portal.len() + 1 + stmt.server_name.len() + rest.len(),
                );
                out.put_slice(portal);
                out.put_u8(0);
                out.put_slice(&stmt.server_name);
                out.put_slice(rest);
                self.sent(typ);
                Verdict::Replaced
            }
            F::DESCRIBE | F::CLOSE if self.enabled && body.first() == Some(&STATEMENT) => {
                let name = cstr(&body[1..]).map(|(n, _)| n).unwrap_or_default();
                if name.is_empty() {
                    self.sent(typ);
                    return Verdict::Forward;
                }
                if typ == F::CLOSE {
                    // Closing a name that does not exist is not an error.
                    let forgotten = self.names.remove(name);
                    let _ = forgotten;
                    self.reply(CLOSE_COMPLETE, None);
                    return Verdict::Dropped;
                }
                let Some(stmt) = self.names.get(name).cloned() else {
                    self.sent(typ);
                    return Verdict::Forward;
                };
                self.ensure(&stmt, conn, out);
                frame_start(out, F::DESCRIBE, 1 + stmt.server_name.len());
                out.put_u8(STATEMENT);
                out.put_slice(&stmt.server_name);
                self.sent(typ);
                Verdict::Replaced
            }
            F::QUERY if self.enabled => match self.sql_statement(frame, conn, out) {
                Some(v) => v,
                None => {
                    self.sent(typ);
                    Verdict::Forward
                }
            },
            F::PARSE
            | F::BIND
            | F::DESCRIBE
            | F::CLOSE
            | F::EXECUTE
            | F::SYNC
            | F::QUERY
            | F::FUNCTION_CALL => {
                self.sent(typ);
                Verdict::Forward
            }
            _ => Verdict::Forward,
        }
    }

    /// Makes sure `stmt` is prepared on `conn` before the message that uses it.
    fn ensure(&mut self, stmt: &Statement, conn: &mut ConnStatements, out: &mut BytesMut) {
        if conn.touch(stmt.id) {
            self.counters.hits += 1;
        } else {
            self.send_parse(stmt, conn, out, true, None);
        }
    }

    /// Records `stmt` on `conn`; if that evicts another statement, writes
    /// its Close (answer hidden) to `out` and returns true.
    fn add_to(&mut self, stmt: &Statement, conn: &mut ConnStatements, out: &mut BytesMut) -> bool {
        let Some(old) = conn.add(stmt.id, self.cap) else {
            return false;
        };
        let name = format!("{}{old}\0", self.cache.prefix());
        frame_start(out, F::CLOSE, 1 + name.len());
        out.put_u8(STATEMENT);
        out.put_slice(name.as_bytes());
        self.queue.push_back(Item::Sent {
            typ: F::CLOSE,
            undo: 0,
            forget: None,
            swallow: true,
        });
        self.counters.evictions += 1;
        true
    }

    fn send_parse(
        &mut self,
        stmt: &Statement,
        conn: &mut ConnStatements,
        out: &mut BytesMut,
        swallow: bool,
        forget: Option<Box<[u8]>>,
    ) {
        self.add_to(stmt, conn, out);
        frame_start(out, F::PARSE, stmt.server_name.len() + stmt.body.len());
        out.put_slice(&stmt.server_name);
        out.put_slice(&stmt.body);
        self.queue.push_back(Item::Sent {
            typ: F::PARSE,
            undo: stmt.id,
            forget,
            swallow,
        });
        self.counters.prepares += 1;
    }

    /// The client's Syncs sent into COPY FROM STDIN mode, which the server
    /// ignores: they earn no ReadyForQuery.
    pub fn forget_syncs(&mut self, mut n: u32) {
        let mut i = self.queue.len();
        while n > 0 && i > 0 {
            i -= 1;
            if matches!(self.queue[i], Item::Sent { typ: F::SYNC, .. }) {
                self.queue.remove(i);
                n -= 1;
            }
        }
    }

    /// A server message of type `typ` arrived: whether the client gets it.
    /// Call `due` after it.
    pub fn server_message(&mut self, typ: u8, conn: &mut ConnStatements) -> bool {
        if matches!(
            typ,
            Bk::NOTICE_RESPONSE | Bk::PARAMETER_STATUS | Bk::NOTIFICATION_RESPONSE
        ) {
            return true;
        }
        let Some(Item::Sent {
            typ: sent, swallow, ..
        }) = self.queue.front()
        else {
            return true;
        };
        let (sent, swallow) = (*sent, *swallow);
        if typ == Bk::ERROR_RESPONSE && sent == F::QUERY {
            // A PREPARE pgkeel sent failed: nothing was prepared.
            if let Some(Item::Sent { undo, forget, .. }) = self.queue.front_mut() {
                if *undo != 0 {
                    conn.remove(*undo);
                    *undo = 0;
                }
                if let Some(n) = forget.take() {
                    self.sql_names.remove(&n);
                }
            }
            return !swallow;
        }
        if typ == Bk::ERROR_RESPONSE && extended(sent) {
            self.undo_front(conn);
            self.skipping = true;
            // Even for pgkeel's own Parse: the client's Bind fails with it.
            return true;
        }
        let done = match (sent, typ) {
            (F::PARSE, Bk::PARSE_COMPLETE)
            | (F::BIND, Bk::BIND_COMPLETE)
            | (F::CLOSE, Bk::CLOSE_COMPLETE) => true,
            (F::DESCRIBE, Bk::ROW_DESCRIPTION | Bk::NO_DATA)
            | (
                F::EXECUTE,
                Bk::COMMAND_COMPLETE | Bk::EMPTY_QUERY_RESPONSE | Bk::PORTAL_SUSPENDED,
            ) => true,
            (F::SYNC | F::QUERY | F::FUNCTION_CALL, Bk::READY_FOR_QUERY) => {
                self.skipping = false;
                true
            }
            (_, Bk::READY_FOR_QUERY) => {
                // Out of step (should not happen): resynchronise at the Sync.
                while let Some(item) = self.queue.pop_front() {
                    if matches!(
                        item,
                        Item::Sent {
                            typ: F::SYNC | F::QUERY | F::FUNCTION_CALL,
                            ..
                        }
                    ) {
                        break;
                    }
                }
                self.skipping = false;
                return true;
            }
            _ => false,
        };
        if done {
            self.queue.pop_front();
        }
        !swallow
    }

    /// Pops the head item, undoing what it recorded.
    fn undo_front(&mut self, conn: &mut ConnStatements) {
        match self.queue.pop_front() {
            Some(Item::Sent { undo, forget, .. }) => {
                if undo != 0 {
                    conn.remove(undo);
                }
                if let Some(n) = forget {
                    self.names.remove(&n);
                }
            }
            Some(Item::Reply {
                forget: Some(n), ..
            }) => {
                self.names.remove(&n);
            }
            Some(Item::Reply { .. }) | None => {}
        }
    }

    /// Whether `due` has something to do.
    pub fn has_due(&self) -> bool {
        match self.queue.front() {
            Some(Item::Reply { .. }) => true,
            Some(Item::Sent { typ, .. }) => self.skipping && *typ != F::SYNC,
            None => false,
        }
    }

    /// Writes pgkeel's replies that reached the head of the queue to `out`,
    /// and drops what the server skips after an error.
    pub fn due(&mut self, conn: &mut ConnStatements, out: &mut BytesMut, st: &mut State) {
        loop {
            match self.queue.front() {
                Some(Item::Sent { typ, .. }) if self.skipping && *typ != F::SYNC => {
                    if matches!(*typ, F::QUERY | F::FUNCTION_CALL) {
                        // Skipped too: no ReadyForQuery for it.
                        st.pending = st.pending.saturating_sub(1);
                    }
                    self.undo_front(conn);
                }
                Some(Item::Reply { .. }) if self.skipping => self.undo_front(conn),
                Some(Item::Reply {
                    bytes, ready: true, ..
                }) => {
                    out.extend_from_slice(bytes);
                    protocol::put_ready(out, st.status);
                    st.responded = true;
                    self.queue.pop_front();
                }
                Some(Item::Reply { bytes, .. }) => {
                    if bytes[0] == Bk::PARSE_COMPLETE && st.drop_preamble > 0 {
                        // A re-run request: the client has this one.
                        st.drop_preamble -= 1;
                        st.preamble += 1;
                    } else {
                        if bytes[0] == Bk::PARSE_COMPLETE && !st.responded {
                            st.preamble += 1;
                        } else {
                            st.responded = true;
                        }
                        out.extend_from_slice(bytes);
                    }
                    self.queue.pop_front();
                }
                _ => return,
            }
        }
    }

    /// Some client name recorded by a Parse is not confirmed yet: its
    /// ParseComplete (the server's, or pgkeel's own in its turn) has not
    /// reached the client, so an earlier error could still undo it.
    pub fn names_unconfirmed(&self) -> bool {
        self.queue.iter().any(|item| match item {
            Item::Sent { forget, .. } | Item::Reply { forget, .. } => forget.is_some(),
        })
    }

    /// Nothing is waiting in the queue.
    pub fn settled(&self) -> bool {
        self.queue.is_empty()
    }
}

impl crate::router::NamedStatements for Prepared {
    fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
        Prepared::query_of(self, name)
    }
}

fn trim_end(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .rposition(|c| !(c.is_ascii_whitespace() || *c == b';'))
        .map_or(0, |p| p + 1);
    &s[..n]
}

/// The first word of `s` (after white space) and what follows it.
fn word(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = s.iter().position(|c| !c.is_ascii_whitespace())?;
    let s = &s[start..];
    let n = s
        .iter()
        .position(|c| !c.is_ascii_alphabetic())
        .unwrap_or(s.len());
    (n > 0).then(|| (&s[..n], &s[n..]))
}

/// An SQL identifier at the start of `s` (after white space), folded to
/// lower case unless quoted, and what follows it.
fn ident(s: &[u8]) -> Option<(Box<[u8]>, &[u8])> {
    let start = s.iter().position(|c| !c.is_ascii_whitespace())?;
    let s = &s[start..];
    if s.first() == Some(&b'"') {
        let mut name = Vec::new();
        let mut i = 1;
        while i < s.len() {
            if s[i] == b'"' {
                if s.get(i + 1) == Some(&b'"') {
                    name.push(b'"');
                    i += 2;
                    continue;
                }
                return Some((name.into(), &s[i + 1..]));
            }
            name.push(s[i]);
            i += 1;
        }
        return None;
    }
    let n = s
        .iter()
        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_' || *c == b'$'))
        .unwrap_or(s.len());
    (n > 0).then(|| (s[..n].to_ascii_lowercase().into(), &s[n..]))
}

/// A statement that raises `code` with `message` and `hint` when run: how
/// a refused simple Query fails on the server itself, in its turn, with
/// the transaction aborted as PostgreSQL would.
pub fn raising_query(code: &str, message: &str, hint: &str) -> String {
    let q = |s: &str| s.replace('\'', "''");
    format!(
        "DO $pgkeel$BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}', HINT = '{}'; END$pgkeel$",
        q(code),
        q(message),
        q(hint)
    )
}

#[cfg(test)]
#[path = "prepared_tests.rs"]
mod tests;
