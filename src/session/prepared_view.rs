//! `pg_prepared_statements` as a client of pgkeel should see it.
//!
//! On a server connection the view lists pgkeel's shared statements
//! (`pgkeel_<random>_<id>`), other clients' included, and none of the
//! client's own names. So a query reading it is rewritten: each reference
//! to the relation becomes a subquery over a VALUES list of the client's
//! own statements, with the columns of PostgreSQL 15's view (16 added
//! `result_types`, not emulated):
//!
//! - `name`, `statement` (the Parse's text, or the whole text of the
//!   SQL-level PREPARE), `prepare_time` (when the client prepared it, by
//!   pgkeel's clock) and `from_sql`: the client's own;
//! - `parameter_types`, `generic_plans`, `custom_plans`: the server's, for
//!   the shared statement, when it is prepared on the connection the query
//!   runs on; otherwise the types the client declared (`-` for those it
//!   left to the server) and 0 plans. Plan counts are the shared
//!   statement's, all clients' executions together.
//!
//! A simple Query or an unnamed Parse reads the list as it is when it runs;
//! a named Parse (a statement kept for later) reads it as it was at the
//! Parse, itself included (with the types it declared). The rewrite is pure text: `rewrite` finds the relation with the SQL
//! lexer (`classify::words`), never inside strings or comments, and keeps
//! the query's own alias if it has one.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::classify::words::{Token, Tokens};

/// The view's name, as written (unquoted, any case) or quoted.
const VIEW: &[u8] = b"pg_prepared_statements";
const CATALOG: &[u8] = b"pg_catalog";

/// Words that may follow a relation in FROM without being its alias.
const NOT_ALIAS: &[&[u8]] = &[
    b"where",
    b"join",
    b"inner",
    b"left",
    b"right",
    b"full",
    b"cross",
    b"natural",
    b"on",
    b"using",
    b"order",
    b"group",
    b"having",
    b"limit",
    b"offset",
    b"union",
    b"except",
    b"intersect",
    b"window",
    b"fetch",
    b"for",
    b"returning",
    b"tablesample",
];

/// One of the client's statements, as the view shows it.
#[derive(Debug, Clone)]
pub struct Shown<'a> {
    pub name: &'a [u8],
    pub statement: &'a [u8],
    pub prepared_at: SystemTime,
    /// The shared statement's server-side name (no NUL).
    pub server_name: &'a [u8],
    /// Parameter type OIDs as the client declared them (0: unspecified).
    pub declared: Vec<u32>,
    pub from_sql: bool,
}

/// Whether `text` may read the view (a cheap test before `rewrite`).
pub fn mentions(text: &[u8]) -> bool {
    text.len() >= VIEW.len()
        && memchr::memchr2_iter(b'p', b'P', &text[..=text.len() - VIEW.len()])
            .any(|i| text[i..i + VIEW.len()].eq_ignore_ascii_case(VIEW))
}

/// Parameter type OIDs from a Parse body after the query text's NUL.
pub fn declared_types(after_text: &[u8]) -> Vec<u32> {
    let Some(n) = after_text.get(..2) else {
        return Vec::new();
    };
    let n = i16::from_be_bytes([n[0], n[1]]).max(0) as usize;
    after_text[2..]
        .chunks_exact(4)
        .take(n)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `text` with every reference to the relation `pg_prepared_statements`
/// (or `pg_catalog.pg_prepared_statements`) replaced by the client's own
/// statements; `None` if it has none (a string, a column qualifier).
pub fn rewrite(text: &[u8], rows: &[Shown]) -> Option<Vec<u8>> {
    let base = text.as_ptr() as usize;
    let at = |s: &[u8]| s.as_ptr() as usize - base;
    let mut out = Vec::with_capacity(text.len() + 256 * rows.len());
    let mut copied = 0;
    let mut tokens = Tokens::new(text);
    // The previous two tokens' starts, for a `pg_catalog.` prefix.
    let mut prev: [Option<(Token, usize)>; 2] = [None, None];
    while let Some(tok) = tokens.next() {
        let span = match tok {
            Token::Word(w) if w.eq_ignore_ascii_case(VIEW) => Some((at(w), at(w) + w.len())),
            Token::Quoted(w) if w == VIEW => Some((at(w) - 1, at(w) + w.len() + 1)),
            _ => None,
        };
        let Some((mut start, end)) = span else {
            prev = [prev[1], Some((tok, token_start(tok, at)))];
            continue;
        };
        let next = tokens.clone().next();
        if next == Some(Token::Other(b'.')) {
            // `pg_prepared_statements.name`: a column, not the relation.
            prev = [prev[1], Some((tok, start))];
            continue;
        }
        if let [Some((schema, s)), Some((Token::Other(b'.'), _))] = prev {
            match schema {
                Token::Word(w) if w.eq_ignore_ascii_case(CATALOG) => start = s,
                Token::Quoted(w) if w == CATALOG => start = s,
                // Another schema's relation of that name.
                _ => {
                    prev = [prev[1], Some((tok, start))];
                    continue;
                }
            }
        }
        out.extend_from_slice(&text[copied..start]);
        put_subquery(&mut out, rows);
        let aliased = match next {
            Some(Token::Word(w)) => !NOT_ALIAS.iter().any(|k| w.eq_ignore_ascii_case(k)),
            Some(Token::Quoted(_)) => true,
            _ => false,
        };
        if !aliased {
            out.extend_from_slice(b" AS pg_prepared_statements");
        }
        copied = end;
        prev = [prev[1], Some((tok, start))];
    }
    if copied == 0 {
        return None;
    }
    out.extend_from_slice(&text[copied..]);
    Some(out)
}

fn token_start(tok: Token, at: impl Fn(&[u8]) -> usize) -> usize {
    match tok {
        Token::Word(w) | Token::Number(w) | Token::Param(w) => at(w),
        Token::Quoted(w) | Token::String(w) => at(w).saturating_sub(1),
        _ => 0,
    }
}

/// The subquery standing for the view: a first all-NULL row gives the
/// VALUES columns their types (and an empty list its shape).
fn put_subquery(out: &mut Vec<u8>, rows: &[Shown]) {
    out.extend_from_slice(
        b"(SELECT c.name, c.statement, c.prepare_time, \
          COALESCE(s.parameter_types, c.declared) AS parameter_types, c.from_sql, \
          COALESCE(s.generic_plans, 0::int8) AS generic_plans, \
          COALESCE(s.custom_plans, 0::int8) AS custom_plans \
          FROM (VALUES (NULL::text, NULL::text, NULL::timestamptz, NULL::regtype[], NULL::bool, NULL::text)",
    );
    for r in rows {
        out.extend_from_slice(b", (");
        put_literal(out, r.name);
        out.extend_from_slice(b", ");
        put_literal(out, r.statement);
        let micros = r
            .prepared_at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let types: Vec<String> = r.declared.iter().map(u32::to_string).collect();
        out.extend_from_slice(
            format!(
                ", to_timestamp({}.{:06}), '{{{}}}'::oid[]::regtype[], {}, ",
                micros / 1_000_000,
                micros % 1_000_000,
                types.join(","),
                r.from_sql
            )
            .as_bytes(),
        );
        put_literal(out, r.server_name);
        out.push(b')');
    }
    out.extend_from_slice(
        b") AS c(name, statement, prepare_time, declared, from_sql, server_name) \
          LEFT JOIN pg_catalog.pg_prepared_statements s ON s.name = c.server_name \
          WHERE c.name IS NOT NULL)",
    );
}

/// `s` as a dollar-quoted literal, with a tag it does not contain (so no
/// setting, `standard_conforming_strings` included, changes its meaning).
fn put_literal(out: &mut Vec<u8>, s: &[u8]) {
    let mut tag = b"$k$".to_vec();
    let mut n = 0u32;
    // The first tag in `s` + tag must be the closing one (a value ending
    // in `$k` would otherwise close early).
    while memchr::memmem::find(&[s, &tag].concat(), &tag) != Some(s.len()) {
        n += 1;
        tag = format!("$k{n}$").into_bytes();
    }
    out.extend_from_slice(&tag);
    out.extend_from_slice(s);
    out.extend_from_slice(&tag);
}

#[cfg(test)]
#[path = "prepared_view_tests.rs"]
mod tests;
