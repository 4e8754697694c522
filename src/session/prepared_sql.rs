//! SQL-level PREPARE / EXECUTE / DEALLOCATE in a simple Query: the same
//! sharing as the protocol's, by rewriting the statement name. A child of
//! `prepared`: it works on the same `Prepared` state.

use bytes::{BufMut, BytesMut};

use std::sync::Arc;

use super::{frame_start, Item, Named, Prepared, Verdict};
use crate::protocol::{self, frontend as F};
use crate::statements::{ConnStatements, Here, Statement};

impl Prepared {
    /// SQL-level PREPARE / EXECUTE / DEALLOCATE in a simple Query: the
    /// same sharing as the protocol's, by rewriting the statement name.
    pub(super) fn sql_statement(
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
            // One namespace with the protocol's names, and a name in use is
            // an error even for the same text, as in PostgreSQL.
            if self.names.contains_key(&name) {
                let msg = format!(
                    "prepared statement \"{}\" already exists",
                    String::from_utf8_lossy(&name)
                );
                return Some(self.raise("42P05", &msg, out));
            }
            let key = [b"\x01SQL ", body].concat();
            let stmt = self.cache.intern(&key);
            let named = Named::new(stmt.clone(), Some(text.into()));
            self.names.insert(name.clone(), named);
            let here = self.is_here(&stmt, conn, out);
            if here == Here::Fresh {
                self.reply_query("PREPARE", Some(name));
                return Some(Verdict::Dropped);
            }
            self.send_sql_prepare(&stmt, conn, out, false, Some(name), here == Here::Stale);
            return Some(Verdict::Replaced);
        }
        if first.eq_ignore_ascii_case(b"execute") {
            let (name, args) = ident(rest)?;
            let stmt = self.sql_name(&name)?.clone();
            let here = self.is_here(&stmt, conn, out);
            if here != Here::Fresh {
                self.send_sql_prepare(&stmt, conn, out, true, None, here == Here::Stale);
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
            // Either kind: a driver's LRU deallocates what it Parsed.
            if self.names.remove(&name).is_none() {
                let msg = format!(
                    "prepared statement \"{}\" does not exist",
                    String::from_utf8_lossy(&name)
                );
                return Some(self.raise("26000", &msg, out));
            }
            self.reply_query("DEALLOCATE", None);
            return Some(Verdict::Dropped);
        }
        None
    }

    /// The client's SQL-level statement `name` (EXECUTE of a Parsed one
    /// is the server's to refuse).
    fn sql_name(&self, name: &[u8]) -> Option<&Arc<Statement>> {
        self.names
            .get(name)
            .filter(|n| n.sql_text.is_some())
            .map(|n| &n.stmt)
    }

    /// The Query fails on the server with `code`, in its turn, aborting the
    /// transaction as PostgreSQL would.
    fn raise(&mut self, code: &str, message: &str, out: &mut BytesMut) -> Verdict {
        protocol::put_query(out, &raising_query(code, message, ""));
        self.sent(F::QUERY);
        Verdict::Replaced
    }

    fn send_sql_prepare(
        &mut self,
        stmt: &Statement,
        conn: &mut ConnStatements,
        out: &mut BytesMut,
        swallow: bool,
        forget: Option<Box<[u8]>>,
        closed: bool,
    ) {
        if self.add_to(stmt, conn, out) || closed {
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
    fn reply_query(&mut self, tag: &str, forget: Option<Box<[u8]>>) {
        // `forget`: the name a PREPARE recorded, dropped if the server
        // skips this Query after an earlier error.
        let mut out = BytesMut::new();
        protocol::put_command_complete(&mut out, tag);
        self.queue.push_back(Item::Reply {
            bytes: out.freeze(),
            forget,
            ready: true,
        });
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
        self.sql_name(&name).map(|s| &s.body[..])
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
    // A dollar-quote tag none of the texts contains (a client's statement
    // name is part of some messages).
    let mut tag = "$pgkeel$".to_owned();
    let mut n = 0;
    while [code, message, hint].iter().any(|s| s.contains(&tag)) {
        n += 1;
        tag = format!("$pgkeel{n}$");
    }
    // No hint at all rather than an empty one.
    let hint = match hint {
        "" => String::new(),
        h => format!(", HINT = '{}'", q(h)),
    };
    format!(
        "DO {tag}BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = '{}'{hint}; END{tag}",
        q(code),
        q(message),
    )
}
