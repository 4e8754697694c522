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
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{self, backend as Bk, field, frontend as F, TxStatus, HEADER_LEN};
use crate::statements::{ConnStatements, Here, Statement, StatementCache};

#[path = "prepared_sql.rs"]
mod sql;
use super::prepared_view as view;
pub use sql::raising_query;

/// One of the client's statement names: the shared statement it stands
/// for, and what `pg_prepared_statements` shows of it.
#[derive(Debug, Clone)]
pub(crate) struct Named {
    pub stmt: Arc<Statement>,
    /// When the client prepared it.
    pub prepared_at: SystemTime,
    /// The text of the SQL-level PREPARE that made it (`None`: a Parse).
    pub sql_text: Option<Box<[u8]>>,
    /// A Parse's own text, when pgkeel rewrote it (it read
    /// `pg_prepared_statements`).
    pub original: Option<Box<[u8]>>,
}

impl Named {
    fn new(stmt: Arc<Statement>, sql_text: Option<Box<[u8]>>) -> Named {
        Named {
            stmt,
            prepared_at: SystemTime::now(),
            sql_text,
            original: None,
        }
    }
}

/// What the answer queue needs of the attached stream's state. The
/// attachment core's `State` implements it; this module stays below the
/// core and knows nothing else of it.
pub trait Stream {
    /// The transaction status of the server's last ReadyForQuery.
    fn status(&self) -> TxStatus;
    /// The server skipped a Query or FunctionCall after an error: no
    /// ReadyForQuery comes for it.
    fn query_skipped(&mut self);
    /// pgkeel's own ParseComplete reached its turn: whether the client
    /// gets it (a re-run request's client already has it).
    fn own_parse_complete(&mut self) -> bool;
    /// Another of pgkeel's answers went to the client.
    fn answered(&mut self);
}

/// What pgkeel sent or will answer, in the order of the client's messages.
#[derive(Debug)]
enum Item {
    /// A message sent to the server. `undo`: the statement id a Parse
    /// recorded on the connection (or a Close forgot); `forget`: the client
    /// name it recorded; both are undone if the message fails or is skipped. `swallow`: the
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
    /// The client's statement names, protocol-level and SQL-level alike
    /// (one namespace, as in PostgreSQL).
    /// foldhash: SipHash cost ~200 instructions a lookup, two per Bind.
    names: HashMap<Box<[u8]>, Named, foldhash::fast::RandomState>,
    /// Some statement in `names` changes the session (SET...): a Bind must
    /// look its effects up.
    names_have_effects: bool,
    /// Some statement in `names` commits: a Bind must look it up.
    names_commit: bool,
    /// SQL that may change types was sent in the current transaction:
    /// the schema epoch advances again when it ends.
    types_changed: bool,
    /// `forget_all_after`: the names go after the current message.
    forget_after: bool,
    /// Queries pgkeel added, not yet counted by the relay.
    injected: u32,
    queue: VecDeque<Item>,
    /// The server reported an error: it skips to the next Sync.
    skipping: bool,
    /// pgkeel answered an error itself: the client's messages are dropped
    /// up to its Sync, as the server would.
    drop_to_sync: bool,
    /// The status of the server's last ReadyForQuery on this attach.
    last_status: TxStatus,
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
            names: HashMap::default(),
            names_have_effects: false,
            names_commit: false,
            types_changed: false,
            forget_after: false,
            injected: 0,
            queue: VecDeque::new(),
            skipping: false,
            drop_to_sync: false,
            last_status: TxStatus::Idle,
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

    /// A read-only request is about to run again on another server
    /// (`request`: its messages): the names its Parses recorded go, since
    /// its Parses record them anew (else they would fail with 42P05).
    pub fn forget_parsed_in(&mut self, request: &[u8]) {
        let mut rest = request;
        while let Some(Ok((typ, len))) = protocol::header(rest) {
            let Some(frame) = rest.get(..len) else {
                return;
            };
            if typ == F::PARSE {
                if let Some((name, _)) = cstr(&frame[HEADER_LEN..]) {
                    if !name.is_empty() {
                        self.names.remove(name);
                    }
                }
            }
            rest = &rest[len..];
        }
    }

    pub fn reset_queue(&mut self) {
        self.queue.clear();
        self.skipping = false;
        self.drop_to_sync = false;
        self.last_status = TxStatus::Idle;
    }

    /// Statements the client has prepared.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The client's statements, for a handover to a new process.
    pub fn export(&self) -> Vec<crate::handoff::NamedState> {
        self.names
            .iter()
            .map(|(name, n)| crate::handoff::NamedState {
                name: name.to_vec(),
                body: n.stmt.body.to_vec(),
                sql_text: n.sql_text.as_deref().map(<[u8]>::to_vec),
                original: n.original.as_deref().map(<[u8]>::to_vec),
            })
            .collect()
    }

    /// Takes in a statement another process exported; it is prepared on a
    /// server connection at its first use, as any other.
    pub fn import(&mut self, s: crate::handoff::NamedState) {
        let stmt = self.cache.intern(&s.body);
        self.names_have_effects |= !stmt.effects.is_empty();
        self.names_commit |= stmt.commits;
        let mut named = Named::new(stmt, s.sql_text.map(Vec::into_boxed_slice));
        named.original = s.original.map(Vec::into_boxed_slice);
        self.names.insert(s.name.into_boxed_slice(), named);
    }

    /// DEALLOCATE ALL / DISCARD ALL: the client's names are gone.
    pub fn forget_all(&mut self) {
        self.names.clear();
        self.names_have_effects = false;
        self.names_commit = false;
    }

    /// Queries pgkeel added (a PREPARE ahead of an EXECUTE) since the last
    /// call: each owes a ReadyForQuery.
    pub fn take_injected(&mut self) -> u32 {
        std::mem::take(&mut self.injected)
    }

    /// The session effects of the statement a Bind runs (none if unnamed
    /// or unknown: an unnamed statement's Parse was scanned itself).
    pub fn bind_effects(&self, frame: &[u8]) -> crate::classify::effects::Effects {
        if !self.names_have_effects {
            // Spares the usual Bind a second name lookup.
            return Default::default();
        }
        protocol::bind_statement_name(frame)
            .and_then(|name| self.protocol_name(name))
            .map_or_else(Default::default, |s| s.effects)
    }

    /// The Bind `frame` runs a named statement of the client's that commits.
    pub fn bind_commits(&self, frame: &[u8]) -> bool {
        // The flag spares the usual Bind a name lookup.
        self.names_commit
            && protocol::bind_statement_name(frame)
                .and_then(|name| self.protocol_name(name))
                .is_some_and(|s| s.commits)
    }

    /// The text of the client's statement `name`, for routing.
    pub fn query_of(&self, name: &[u8]) -> Option<&[u8]> {
        let s = self.protocol_name(name)?;
        cstr(&s.body).map(|(q, _)| q)
    }

    /// The client's statement `name` if a Parse made it (Bind and Describe
    /// of an SQL-level one are the server's to refuse).
    fn protocol_name(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names
            .get(name)
            .filter(|n| n.sql_text.is_none())
            .map(|n| &n.stmt)
    }

    /// Notes SQL the client sends that may change types: the schema epoch
    /// advances now (later copies on this connection see the change), at a
    /// rollback in the same transaction, and at its end (when others see it).
    fn note_types_changed(&mut self, text: &[u8]) {
        // A rollback (to a savepoint, too) undoes what changed them.
        if crate::statements::changes_types(text)
            || (self.types_changed && crate::statements::rolls_back(text))
        {
            self.cache.schema_changed();
            self.types_changed = true;
        }
    }

    /// A ReadyForQuery with `status` arrived.
    pub fn ready(&mut self, status: TxStatus) {
        self.last_status = status;
        if self.types_changed && status == TxStatus::Idle {
            self.types_changed = false;
            self.cache.schema_changed();
        }
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
        let verdict = self.rewrite_message(typ, frame, conn, out);
        if std::mem::take(&mut self.forget_after) {
            conn.clear();
            self.forget_all();
        }
        verdict
    }

    /// The message being handled runs a statement that drops every
    /// prepared statement (DISCARD ALL, DEALLOCATE ALL): the names go once
    /// it is rewritten (it may name one of them itself).
    pub fn forget_all_after(&mut self) {
        self.forget_after = true;
    }

    fn rewrite_message(
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
        if matches!(typ, F::PARSE | F::QUERY) {
            self.note_types_changed(protocol::query_text(typ, frame));
        }
        match typ {
            F::PARSE if self.enabled => {
                let Some((name, rest)) = cstr(body) else {
                    self.sent(typ);
                    return Verdict::Forward;
                };
                if name.is_empty() {
                    return self.unnamed_parse(frame, rest, out);
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
                // A named statement reading `pg_prepared_statements` lists
                // the client's statements as they are at its Parse, itself
                // included (it exists whenever it runs).
                let listed = self.view_body(frame, rest, Some(name));
                let stmt = self.cache.intern(listed.as_deref().unwrap_or(rest));
                let forget = Some(Box::<[u8]>::from(name));
                let mut named = Named::new(stmt.clone(), None);
                if listed.is_some() {
                    named.original = cstr(rest).map(|(text, _)| text.into());
                }
                self.names.insert(name.into(), named);
                self.names_have_effects |= !stmt.effects.is_empty();
                self.names_commit |= stmt.commits;
                if self.is_here(&stmt, conn, out) == Here::Fresh {
                    if self.may_be_aborted() {
                        // PostgreSQL refuses a Parse in a failed transaction
                        // (25P02) and skips to the Sync; whether it has failed
                        // is the server's to say: ask it with a copy.
                        self.probe_parse(&stmt, out, forget);
                        return Verdict::Replaced;
                    }
                    self.reply(PARSE_COMPLETE, forget);
                    return Verdict::Dropped;
                }
                self.send_parse(&stmt, conn, out, false, forget);
                Verdict::Replaced
            }
            F::BIND if self.enabled => {
                let stmt = cstr(body).and_then(|(portal, rest)| {
                    let (name, rest) = cstr(rest)?;
                    let s = self.protocol_name(name)?.clone();
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
                    // Closing a name that does not exist is not an error;
                    // as in PostgreSQL, it closes SQL-level ones too.
                    self.names.remove(name);
                    self.reply(CLOSE_COMPLETE, None);
                    return Verdict::Dropped;
                }
                let Some(stmt) = self.protocol_name(name).cloned() else {
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
            F::QUERY if self.enabled && self.view_query(frame, out) => {
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

    /// A simple Query reading `pg_prepared_statements`: rewritten over the
    /// client's own statements (`prepared_view`) into `out`.
    fn view_query(&mut self, frame: &[u8], out: &mut BytesMut) -> bool {
        let text = protocol::query_text(F::QUERY, frame);
        if !view::mentions(text) {
            return false;
        }
        let Some(sql) = view::rewrite(text, &self.shown()) else {
            return false;
        };
        frame_start(out, F::QUERY, sql.len() + 1);
        out.put_slice(&sql);
        out.put_u8(0);
        true
    }

    /// An unnamed Parse (`rest`: its body after the name), rewritten if
    /// it reads `pg_prepared_statements`.
    fn unnamed_parse(&mut self, frame: &[u8], rest: &[u8], out: &mut BytesMut) -> Verdict {
        self.sent(F::PARSE);
        let Some(body) = self.view_body(frame, rest, None) else {
            return Verdict::Forward;
        };
        frame_start(out, F::PARSE, 1 + body.len());
        out.put_u8(0);
        out.put_slice(&body);
        Verdict::Replaced
    }

    /// A Parse body (`rest`: after the name) whose text reads
    /// `pg_prepared_statements`, rewritten; `None` if it does not.
    /// `named`: the name the Parse defines, listed too.
    fn view_body(&self, frame: &[u8], rest: &[u8], named: Option<&[u8]>) -> Option<Vec<u8>> {
        let text = protocol::query_text(F::PARSE, frame);
        if !view::mentions(text) {
            return None;
        }
        let mut rows = self.shown();
        let types = cstr(rest).map_or(&[][..], |(_, types)| types);
        if let Some(name) = named {
            // Its server-side name depends on this very text: shown with
            // the types it declares.
            rows.push(view::Shown {
                name,
                statement: text,
                prepared_at: SystemTime::now(),
                server_name: b"",
                declared: view::declared_types(types),
                from_sql: false,
            });
        }
        let mut body = view::rewrite(text, &rows)?;
        body.push(0);
        body.extend_from_slice(types);
        Some(body)
    }

    /// The client's statements as `pg_prepared_statements` shows them.
    fn shown(&self) -> Vec<view::Shown<'_>> {
        self.names
            .iter()
            .map(|(name, n)| {
                let (text, types) = match &n.sql_text {
                    Some(sql) => (&sql[..], Vec::new()),
                    None => cstr(&n.stmt.body)
                        .map_or((&n.stmt.body[..], Vec::new()), |(t, rest)| {
                            (t, view::declared_types(rest))
                        }),
                };
                let text = n.original.as_deref().unwrap_or(text);
                view::Shown {
                    name,
                    statement: text,
                    prepared_at: n.prepared_at,
                    server_name: &n.stmt.server_name[..n.stmt.server_name.len() - 1],
                    declared: types,
                    from_sql: n.sql_text.is_some(),
                }
            })
            .collect()
    }

    /// Makes sure `stmt` is prepared on `conn` before the message that uses it.
    fn ensure(&mut self, stmt: &Statement, conn: &mut ConnStatements, out: &mut BytesMut) {
        if self.is_here(stmt, conn, out) != Here::Fresh {
            self.send_parse(stmt, conn, out, true, None);
        }
    }

    /// Where `stmt` stands on `conn` in the current schema epoch. A stale
    /// copy is closed first (its Close, answer hidden, written to `out`):
    /// the caller prepares it again.
    fn is_here(&mut self, stmt: &Statement, conn: &mut ConnStatements, out: &mut BytesMut) -> Here {
        let here = conn.touch(stmt.id, self.cache.epoch());
        match here {
            Here::Fresh => self.counters.hits += 1,
            Here::Stale => self.close_on_server(stmt.id, out),
            Here::Absent => {}
        }
        here
    }

    /// Records `stmt` on `conn`; if that evicts another statement, writes
    /// its Close (answer hidden) to `out` and returns true.
    fn add_to(&mut self, stmt: &Statement, conn: &mut ConnStatements, out: &mut BytesMut) -> bool {
        let Some(old) = conn.add(stmt.id, self.cache.epoch(), self.cap) else {
            return false;
        };
        self.close_on_server(old, out);
        self.counters.evictions += 1;
        true
    }

    /// Writes a Close of the server's statement `id` (answer hidden). If
    /// the server skips it (an earlier error), the statement is still
    /// there: `undo_front` records it back.
    fn close_on_server(&mut self, id: u64, out: &mut BytesMut) {
        let name = format!("{}{id}\0", self.cache.prefix());
        frame_start(out, F::CLOSE, 1 + name.len());
        out.put_u8(STATEMENT);
        out.put_slice(name.as_bytes());
        self.queue.push_back(Item::Sent {
            typ: F::CLOSE,
            undo: id,
            forget: None,
            swallow: true,
        });
    }

    /// The server may be in a failed transaction when this message reaches
    /// it: its last ReadyForQuery said so (or said "in a transaction", which
    /// may have failed since), or answers are still owed.
    fn may_be_aborted(&self) -> bool {
        self.last_status != TxStatus::Idle || !self.queue.is_empty()
    }

    /// A Parse the connection already has, asked of the server anyway, as a
    /// copy under a name of pgkeel's own that is closed right after: its
    /// ParseComplete (or its 25P02, and the skip to the Sync) is the
    /// client's; the Close's answer is hidden. If it fails, the client's
    /// name goes (`forget`), as a failed Parse creates none.
    fn probe_parse(&mut self, stmt: &Statement, out: &mut BytesMut, forget: Option<Box<[u8]>>) {
        let name = format!("{}probe\0", self.cache.prefix());
        frame_start(out, F::PARSE, name.len() + stmt.body.len());
        out.put_slice(name.as_bytes());
        out.put_slice(&stmt.body);
        self.queue.push_back(Item::Sent {
            typ: F::PARSE,
            undo: 0,
            forget,
            swallow: false,
        });
        frame_start(out, F::CLOSE, 1 + name.len());
        out.put_u8(STATEMENT);
        out.put_slice(name.as_bytes());
        self.queue.push_back(Item::Sent {
            typ: F::CLOSE,
            undo: 0,
            forget: None,
            swallow: true,
        });
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
    /// ignores: they earn no ReadyForQuery. They are the first ones after
    /// the command that started the COPY (the queue's front, all before it
    /// answered): not the last ones queued, which may close a later batch.
    pub fn forget_syncs(&mut self, mut n: u32) {
        let mut i = 0;
        while n > 0 && i < self.queue.len() {
            if matches!(self.queue[i], Item::Sent { typ: F::SYNC, .. }) {
                self.queue.remove(i);
                n -= 1;
            } else {
                i += 1;
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
                    self.names.remove(&n);
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
            Some(Item::Sent {
                typ, undo, forget, ..
            }) => {
                match typ {
                    _ if undo == 0 => {}
                    // Skipped: the statement is still on the server.
                    F::CLOSE => conn.restore(undo),
                    _ => conn.remove(undo),
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
    pub fn due(&mut self, conn: &mut ConnStatements, out: &mut BytesMut, st: &mut impl Stream) {
        loop {
            match self.queue.front() {
                Some(Item::Sent { typ, .. }) if self.skipping && *typ != F::SYNC => {
                    if matches!(*typ, F::QUERY | F::FUNCTION_CALL) {
                        // Skipped too: no ReadyForQuery for it.
                        st.query_skipped();
                    }
                    self.undo_front(conn);
                }
                Some(Item::Reply { .. }) if self.skipping => self.undo_front(conn),
                Some(Item::Reply {
                    bytes, ready: true, ..
                }) => {
                    out.extend_from_slice(bytes);
                    protocol::put_ready(out, st.status());
                    st.answered();
                    self.queue.pop_front();
                }
                Some(Item::Reply { bytes, .. }) => {
                    let forward = if bytes[0] == Bk::PARSE_COMPLETE {
                        st.own_parse_complete()
                    } else {
                        st.answered();
                        true
                    };
                    if forward {
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

#[cfg(test)]
#[path = "prepared_tests.rs"]
mod tests;
