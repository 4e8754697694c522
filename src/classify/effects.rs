//! What a statement does to its session beyond its transaction, read off
//! its text: settings it changes, and the features that tie a client to one
//! server connection (LISTEN, session advisory locks, WITH HOLD cursors,
//! temporary tables, SET SESSION AUTHORIZATION), state pgkeel cannot
//! follow, and SQL-level prepared statements it must rewrite or refuse.
//!
//! This runs on every Query and Parse in transaction mode, so it does not
//! parse: it runs the lexer (`classify::words`) over the text and looks at
//! each statement's first words and at function calls anywhere in it. A
//! false alarm costs one settings check (or a connection), never a missed
//! change.
//!
//! Settings: PostgreSQL's `pg_settings` (read back after a transaction that
//! SETs) cannot show custom placeholder settings (`app.tenant`), `role` or
//! `session_authorization`. The first two are tracked by name
//! (`HIDDEN_SETTING`, names from `hidden_settings`), read back with
//! `current_setting(name, true)` and restored like any other setting.
//! SET SESSION AUTHORIZATION pins instead: restoring it would mean running
//! it again on every connection the client lands on (superuser-only, and it
//! silently resets `role`), and it is rare in pooled applications, so the
//! simple, certainly correct answer wins. What cannot be named at all
//! (`set_config` with a computed name, settings made in a DO block) is
//! `UNTRACKED_STATE`: the session closes that server connection instead of
//! lending it again. Closing rather than `DISCARD ALL`: after a reset the
//! reported parameters (application_name, TimeZone...) go back to values
//! pgkeel has not recorded for that connection, while a new connection
//! starts from known ones; the state is rare enough that one connect is
//! cheap.
//!
//! Still open: functions and procedures can change settings (or run
//! PREPARE through dynamic SQL) without any of it showing in the text.

use crate::classify::words::{self, Statement, Token, Tokens};
use crate::config::PinFeature;

/// Effects of one or more statements, as flags.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects(u16);

impl Effects {
    pub const NONE: Effects = Effects(0);
    /// Session settings may have changed: SET, RESET, set_config().
    pub const SETTINGS: Effects = Effects(1);
    /// DISCARD ALL or DEALLOCATE ALL: the server's prepared statements go.
    pub const DROPS_STATEMENTS: Effects = Effects(1 << 1);
    pub const LISTEN: Effects = Effects(1 << 2);
    pub const ADVISORY_LOCK: Effects = Effects(1 << 3);
    pub const HOLD_CURSOR: Effects = Effects(1 << 4);
    pub const TEMP_TABLE: Effects = Effects(1 << 5);
    /// DISCARD ALL: everything the client set is reset too.
    pub const DISCARD_ALL: Effects = Effects(1 << 6);
    /// Session state pgkeel cannot name or restore (`set_config` with a
    /// computed name, SET in a DO block): the connection must not be lent
    /// to anyone else.
    pub const UNTRACKED_STATE: Effects = Effects(1 << 7);
    /// SET SESSION AUTHORIZATION (or `set_config` of it): pins.
    pub const SESSION_AUTHORIZATION: Effects = Effects(1 << 8);
    /// A setting `pg_settings` does not show (a custom `x.y` one, `role`)
    /// was set or reset: `hidden_settings` names it.
    pub const HIDDEN_SETTING: Effects = Effects(1 << 9);
    /// PREPARE of a name in pgkeel's own namespace.
    pub const PGKEEL_NAMESPACE_PREPARE: Effects = Effects(1 << 10);
    /// EXECUTE or DEALLOCATE of a name in pgkeel's own namespace.
    pub const PGKEEL_NAMESPACE_USE: Effects = Effects(1 << 11);
    /// SQL-level PREPARE, EXECUTE or DEALLOCATE of a name (not ALL).
    pub const SQL_PREPARED: Effects = Effects(1 << 12);
    /// `SQL_PREPARED` in a text of several statements, where pgkeel does
    /// not rewrite the names.
    pub const SQL_PREPARED_IN_BATCH: Effects = Effects(1 << 13);

    pub fn contains(self, other: Effects) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn intersects(self, other: Effects) -> bool {
        self.0 & other.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The first feature here that needs a pinned server connection.
    pub fn pin_feature(self) -> Option<PinFeature> {
        [
            (Effects::LISTEN, PinFeature::Listen),
            (Effects::ADVISORY_LOCK, PinFeature::AdvisoryLocks),
            (Effects::HOLD_CURSOR, PinFeature::HoldCursors),
            (Effects::TEMP_TABLE, PinFeature::TempTables),
            (
                Effects::SESSION_AUTHORIZATION,
                PinFeature::SessionAuthorization,
            ),
        ]
        .into_iter()
        .find(|(e, _)| self.contains(*e))
        .map(|(_, f)| f)
    }

    /// Whether the session may differ from a fresh one afterwards in a way
    /// only a settings read-back, a pin or a close can deal with: a server
    /// connection left by a client with these is not returned as it is.
    pub fn dirties_session(self) -> bool {
        self.intersects(
            Effects::SETTINGS
                | Effects::LISTEN
                | Effects::ADVISORY_LOCK
                | Effects::HOLD_CURSOR
                | Effects::TEMP_TABLE
                | Effects::UNTRACKED_STATE
                | Effects::SESSION_AUTHORIZATION
                | Effects::HIDDEN_SETTING,
        )
    }

    /// Why the text must not reach the server at all, if it must not.
    /// `simple_query`: it came in a Query (not a Parse), where a lone
    /// PREPARE / EXECUTE / DEALLOCATE is rewritten into pgkeel's names.
    pub fn refusal(self, simple_query: bool) -> Option<Refusal> {
        if self.contains(Effects::PGKEEL_NAMESPACE_PREPARE) {
            return Some(Refusal {
                code: DUPLICATE_PREPARED_STATEMENT,
                message: "prepared statement names starting with \"pgkeel_\" are reserved for pgkeel's own statements",
                hint: "Use another name.",
            });
        }
        if self.contains(Effects::PGKEEL_NAMESPACE_USE) {
            return Some(Refusal {
                code: INVALID_SQL_STATEMENT_NAME,
                message: "prepared statements named \"pgkeel_...\" belong to pgkeel and cannot be executed or deallocated by clients",
                hint: "Use the names your own PREPARE statements gave.",
            });
        }
        if self.contains(Effects::SQL_PREPARED_IN_BATCH)
            || (!simple_query && self.contains(Effects::SQL_PREPARED))
        {
            return Some(Refusal {
                code: FEATURE_NOT_SUPPORTED,
                message: "PREPARE, EXECUTE and DEALLOCATE must each be sent as a simple query of its own in transaction pooling mode",
                hint: "Send them as separate queries (not in a batch of several statements, not through Parse), or use the protocol's named statements.",
            });
        }
        None
    }
}

/// SQLSTATEs of the refusals (PostgreSQL's own codes for the same errors).
const DUPLICATE_PREPARED_STATEMENT: &str = "42P05";
const INVALID_SQL_STATEMENT_NAME: &str = "26000";
const FEATURE_NOT_SUPPORTED: &str = "0A000";

/// pgkeel names its server-side statements with this prefix (see
/// `statements.rs`); clients may not address any name that starts so.
const NAMESPACE: &[u8] = b"pgkeel_";

/// An error pgkeel answers instead of running a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: &'static str,
    pub message: &'static str,
    pub hint: &'static str,
}

impl std::ops::BitOr for Effects {
    type Output = Effects;
    fn bitor(self, o: Effects) -> Effects {
        Effects(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Effects {
    fn bitor_assign(&mut self, o: Effects) {
        self.0 |= o.0;
    }
}

/// The session effects of `sql` (a Query's text, or a Parse's).
pub fn scan(sql: &[u8]) -> Effects {
    // The usual text is one statement, maybe with a `;` at the end: no
    // splitting needed (a `;` in quotes or a comment changes nothing then).
    let one = match memchr::memchr(b';', sql) {
        None => true,
        Some(p) => sql[p + 1..].iter().all(u8::is_ascii_whitespace),
    };
    if one {
        return statement(&Statement { text: sql }, &mut None);
    }
    let mut e = Effects::NONE;
    let mut n = 0;
    for st in words::statements(sql) {
        n += 1;
        e |= statement(&st, &mut None);
    }
    if n > 1 && e.contains(Effects::SQL_PREPARED) {
        e |= Effects::SQL_PREPARED_IN_BATCH;
    }
    e
}

/// The settings `sql` sets or resets that `pg_settings` cannot show
/// (custom `x.y` ones, `role`), lower-cased, added to `out` once each.
/// Called only when `scan` said `HIDDEN_SETTING`.
pub fn hidden_settings(sql: &[u8], out: &mut Vec<String>) {
    let mut names = Some(Vec::new());
    for st in words::statements(sql) {
        statement(&st, &mut names);
    }
    for n in names.into_iter().flatten() {
        if !out.contains(&n) {
            out.push(n);
        }
    }
}

/// Whether `name` (lower-cased) is a setting `pg_settings` hides.
fn hidden(name: &str) -> bool {
    name.contains('.') || name == "role"
}

/// Whether an identifier token names something in pgkeel's namespace.
fn in_namespace(t: Option<Token>) -> bool {
    t.and_then(|t| t.ident()).is_some_and(|n| {
        n.len() >= NAMESPACE.len() && n[..NAMESPACE.len()].eq_ignore_ascii_case(NAMESPACE)
    })
}

/// A setting's name after SET / RESET: `a`, `a.b`, `"a".b`..., lower-cased
/// (setting names are case-insensitive).
fn setting_name<'a>(first: Token<'a>, w: &mut std::iter::Peekable<Tokens<'a>>) -> Option<String> {
    let mut name = String::from_utf8_lossy(first.ident()?).to_ascii_lowercase();
    while w.peek() == Some(&Token::Other(b'.')) {
        w.next();
        let part = w.next().and_then(|t| t.ident())?;
        name.push('.');
        name.push_str(&String::from_utf8_lossy(part).to_ascii_lowercase());
    }
    Some(name)
}

/// Effects of a setting `name` changed at session level; with `names`,
/// a hidden one is added there.
fn setting(name: Option<String>, names: &mut Option<Vec<String>>) -> Effects {
    match name {
        Some(n) if n == "session_authorization" => {
            Effects::SETTINGS | Effects::SESSION_AUTHORIZATION
        }
        Some(n) if hidden(&n) => {
            if let Some(v) = names {
                v.push(n);
            }
            Effects::SETTINGS | Effects::HIDDEN_SETTING
        }
        _ => Effects::SETTINGS,
    }
}

/// Effects of one statement.
fn statement(st: &Statement, names: &mut Option<Vec<String>>) -> Effects {
    let mut e = if may_call(st.text) {
        calls(st, names)
    } else {
        Effects::NONE
    };
    let mut w = st.words().peekable();
    let Some(first) = w.next() else {
        return e;
    };
    let Token::Word(kw) = first else {
        return e;
    };
    let is = |k: &[u8]| kw.eq_ignore_ascii_case(k);
    // The common statements first, and out early.
    if is(b"select") {
        // SELECT ... INTO TEMP t: a temporary table too.
        if !contains_temp(st.text) {
            return e;
        }
        let mut prev = Token::Other(0);
        for t in w {
            if prev.is(b"into") && t.is_any(&[b"temp", b"temporary"]) {
                return e | Effects::TEMP_TABLE;
            }
            prev = t;
        }
        return e;
    }
    if !matches!(kw[0] | 0x20, b's' | b'r' | b'd' | b'p' | b'e' | b'l' | b'c') {
        return e;
    }
    if is(b"set") {
        let mut next = w.next();
        // SET LOCAL and SET TRANSACTION/CONSTRAINTS end with the transaction.
        if next.is_some_and(|t| t.is_any(&[b"local", b"transaction", b"constraints"])) {
            return e;
        }
        if next.is_some_and(|t| t.is(b"session")) {
            match w.peek() {
                // SET SESSION CHARACTERISTICS sets default_transaction_*:
                // session settings pg_settings shows.
                Some(t) if t.is(b"characteristics") => return e | Effects::SETTINGS,
                Some(t) if t.is(b"authorization") => {
                    return e | setting(Some("session_authorization".into()), names)
                }
                _ => next = w.next(),
            }
        }
        let name = match next {
            Some(t) if t.is(b"session") && w.peek().is_some_and(|t| t.is(b"authorization")) => {
                Some("session_authorization".to_owned())
            }
            // SET TIME ZONE, SET NAMES, SET SCHEMA, SET XML OPTION: shown.
            Some(t) => setting_name(t, &mut w),
            None => None,
        };
        return e | setting(name, names);
    }
    if is(b"reset") {
        let name = match w.next() {
            Some(t) if t.is(b"session") => None,
            Some(t) => setting_name(t, &mut w),
            None => None,
        };
        // RESET ALL resets custom settings too (not role): the names the
        // client set are read back, so their new values are seen.
        return e | setting(name, names);
    }
    if is(b"discard") {
        // DISCARD PLANS / SEQUENCES / TEMP leave nothing to follow.
        if w.next().is_some_and(|t| t.is(b"all")) {
            e |= Effects::SETTINGS | Effects::DROPS_STATEMENTS | Effects::DISCARD_ALL;
        }
        return e;
    }
    if is(b"deallocate") {
        let mut t = w.next();
        if t.is_some_and(|t| t.is(b"prepare")) {
            t = w.next();
        }
        return e | match t {
            Some(t) if t.is(b"all") => Effects::DROPS_STATEMENTS,
            t if in_namespace(t) => Effects::PGKEEL_NAMESPACE_USE,
            Some(_) => Effects::SQL_PREPARED,
            None => Effects::NONE,
        };
    }
    if is(b"prepare") {
        return e | match w.next() {
            Some(t) if t.is(b"transaction") => Effects::NONE,
            t if in_namespace(t) => Effects::PGKEEL_NAMESPACE_PREPARE,
            Some(_) => Effects::SQL_PREPARED,
            None => Effects::NONE,
        };
    }
    if is(b"execute") {
        // (A namespaced name was flagged by `calls`.)
        return e | Effects::SQL_PREPARED;
    }
    if is(b"listen") {
        return e | Effects::LISTEN;
    }
    if is(b"declare") {
        // DECLARE c [BINARY] [INSENSITIVE] [[NO] SCROLL] CURSOR WITH HOLD FOR ...
        let mut prev = Token::Other(0);
        for t in w {
            if t.is(b"for") {
                break;
            }
            if t.is(b"hold") && prev.is(b"with") {
                return e | Effects::HOLD_CURSOR;
            }
            prev = t;
        }
        return e;
    }
    if is(b"create") {
        let mut t = w.next();
        if t.is_some_and(|t| t.is(b"or")) {
            w.next(); // REPLACE
            t = w.next();
        }
        if t.is_some_and(|t| t.is_any(&[b"local", b"global"])) {
            t = w.next();
        }
        if t.is_some_and(|t| t.is_any(&[b"temp", b"temporary"])) && !on_commit_drop(st) {
            e |= Effects::TEMP_TABLE;
        }
        return e;
    }
    if is(b"do") {
        // A DO block may set anything; what it sets cannot be named.
        let body = st.words().find_map(|t| t.string()).unwrap_or_default();
        let sets = Tokens::new(body).any(|t| {
            t.is_any(&[
                b"set",
                b"reset",
                b"set_config",
                b"execute",
                b"authorization",
            ])
        });
        if sets {
            e |= Effects::SETTINGS | Effects::UNTRACKED_STATE;
        }
        e |= calls(&Statement { text: body }, &mut None);
        return e;
    }
    e
}

/// ON COMMIT DROP: a temporary table gone with its transaction.
fn on_commit_drop(st: &Statement) -> bool {
    let mut last = [Token::Other(0); 2];
    for t in st.words() {
        if t.is(b"drop") && last[0].is(b"on") && last[1].is(b"commit") {
            return true;
        }
        last = [last[1], t];
    }
    false
}

/// Whether `text` may hold a name `calls` looks for: each has an `_`
/// right after `set`, `advisory` or `pgkeel`. A byte search, so that the
/// usual statement is not lexed twice.
fn may_call(text: &[u8]) -> bool {
    memchr::memchr_iter(b'_', text).any(|p| {
        let before = &text[..p];
        [&b"set"[..], b"advisory", b"pgkeel"].iter().any(|k| {
            before.len() >= k.len() && before[before.len() - k.len()..].eq_ignore_ascii_case(k)
        })
    })
}

/// Whether `temp` occurs in `text`, ignoring case (found by its `p`,
/// rarer in SQL than its `t`).
fn contains_temp(text: &[u8]) -> bool {
    memchr::memchr2_iter(b'p', b'P', text)
        .any(|p| p >= 3 && text[p - 3..=p].eq_ignore_ascii_case(b"temp"))
}

/// Effects of the function calls anywhere in a statement (set_config,
/// session advisory locks), and EXECUTE of a namespaced name anywhere
/// (EXPLAIN EXECUTE, CREATE TABLE AS EXECUTE).
fn calls(st: &Statement, names: &mut Option<Vec<String>>) -> Effects {
    let mut e = Effects::NONE;
    let mut w = st.words().peekable();
    while let Some(t) = w.next() {
        let Some(f) = t.ident() else { continue };
        if f.eq_ignore_ascii_case(b"execute") && matches!(t, Token::Word(_)) {
            if in_namespace(w.peek().copied()) {
                e |= Effects::PGKEEL_NAMESPACE_USE;
            }
            continue;
        }
        // Cheap filter: the names below are all 10 bytes or longer.
        if f.len() < 10 || w.peek() != Some(&Token::Other(b'(')) {
            continue;
        }
        // pg_advisory_lock[_shared], pg_try_advisory_lock[_shared]; the
        // transaction-scoped ones are pg_advisory_xact_lock...: no match.
        if [
            &b"pg_advisory_lock"[..],
            b"pg_advisory_lock_shared",
            b"pg_try_advisory_lock",
            b"pg_try_advisory_lock_shared",
        ]
        .iter()
        .any(|n| f.eq_ignore_ascii_case(n))
        {
            e |= Effects::ADVISORY_LOCK;
        } else if f.eq_ignore_ascii_case(b"set_config") {
            w.next();
            e |= set_config(&mut w, names);
        }
    }
    e
}

/// The arguments of `set_config(` (after its parenthesis): a session-level
/// change of a literal name is a setting; of a computed name, untracked.
fn set_config<'a>(
    w: &mut std::iter::Peekable<Tokens<'a>>,
    names: &mut Option<Vec<String>>,
) -> Effects {
    // Up to the first three arguments' tokens: the first alone, and whether
    // the third is literally true.
    let mut arg = 0;
    let mut depth = 0usize;
    let mut name: Option<&[u8]> = None;
    let mut name_literal = true;
    let mut first_tokens = 0;
    let mut local = false;
    let mut third_tokens = 0;
    for t in w.by_ref() {
        match t {
            Token::Other(b'(') => depth += 1,
            Token::Other(b')') if depth == 0 => break,
            Token::Other(b')') => depth -= 1,
            Token::Other(b',') if depth == 0 => {
                arg += 1;
                continue;
            }
            _ => {}
        }
        match arg {
            0 => {
                first_tokens += 1;
                match (first_tokens, t) {
                    (1, Token::String(s) | Token::DollarString(s)) => name = Some(s),
                    // 'name'::text
                    (2 | 3, Token::Other(b':')) => {}
                    (4, Token::Word(_)) => {}
                    _ => name_literal = false,
                }
            }
            2 => {
                third_tokens += 1;
                local = third_tokens == 1
                    && (t.is(b"true")
                        || matches!(t, Token::String(s) if s.eq_ignore_ascii_case(b"true") || s.eq_ignore_ascii_case(b"t")));
            }
            _ => {}
        }
    }
    if local && third_tokens == 1 {
        return Effects::NONE;
    }
    match name.filter(|_| name_literal) {
        Some(n) => {
            let n = String::from_utf8_lossy(n)
                .replace("''", "'")
                .to_ascii_lowercase();
            setting(Some(n), names)
        }
        None => Effects::SETTINGS | Effects::UNTRACKED_STATE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(sql: &str) -> Effects {
        scan(sql.as_bytes())
    }

    #[test]
    fn settings() {
        for sql in [
            "SET search_path TO a, public",
            "set application_name = 'x'",
            "  /* c */ SET SESSION statement_timeout = 5",
            "-- hi\nRESET ALL",
            "BEGIN; SET work_mem = '8MB'; COMMIT",
            "SELECT pg_catalog.set_config('search_path', 'a', false)",
            "select SET_CONFIG('x.y', '1', false)",
            "SET ROLE other",
        ] {
            assert!(e(sql).contains(Effects::SETTINGS), "{sql}");
        }
        for sql in [
            "SET LOCAL search_path TO a",
            "set transaction isolation level serializable",
            "SET CONSTRAINTS ALL DEFERRED",
            "UPDATE t SET x = 1",
            "SELECT 'SET x'",
            "select offset_config from t",
        ] {
            assert_eq!(e(sql), Effects::NONE, "{sql}");
        }
    }

    #[test]
    fn statements_dropped() {
        assert!(e("DISCARD ALL").contains(Effects::DROPS_STATEMENTS | Effects::DISCARD_ALL));
        assert!(e("deallocate all").contains(Effects::DROPS_STATEMENTS));
        assert!(e("DEALLOCATE PREPARE ALL").contains(Effects::DROPS_STATEMENTS));
        assert_eq!(e("DEALLOCATE s1"), Effects::SQL_PREPARED);
        assert_eq!(e("DISCARD PLANS"), Effects::NONE);
    }

    #[test]
    fn pinning_features() {
        assert_eq!(e("LISTEN jobs").pin_feature(), Some(PinFeature::Listen));
        assert_eq!(
            e("SELECT pg_advisory_lock(1)").pin_feature(),
            Some(PinFeature::AdvisoryLocks)
        );
        assert_eq!(
            e("select PG_TRY_ADVISORY_LOCK_SHARED(1, 2)").pin_feature(),
            Some(PinFeature::AdvisoryLocks)
        );
        assert_eq!(e("SELECT pg_advisory_xact_lock(1)").pin_feature(), None);
        assert_eq!(
            e("DECLARE c CURSOR WITH HOLD FOR SELECT 1").pin_feature(),
            Some(PinFeature::HoldCursors)
        );
        assert_eq!(
            e("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1").pin_feature(),
            None
        );
        assert_eq!(
            e("DECLARE c CURSOR FOR SELECT 'with hold'").pin_feature(),
            None
        );
        assert_eq!(
            e("CREATE TEMP TABLE t (x int)").pin_feature(),
            Some(PinFeature::TempTables)
        );
        assert_eq!(
            e("create local temporary table t as select 1").pin_feature(),
            Some(PinFeature::TempTables)
        );
        assert_eq!(
            e("CREATE TEMP TABLE t (x int) ON COMMIT DROP").pin_feature(),
            None
        );
        assert_eq!(e("CREATE TABLE temp (x int)").pin_feature(), None);
        assert_eq!(
            e("SELECT 1; LISTEN x").pin_feature(),
            Some(PinFeature::Listen)
        );
        assert_eq!(e("SELECT 'a;b'").pin_feature(), None);
    }

    fn hidden_of(sql: &str) -> Vec<String> {
        let mut v = Vec::new();
        if e(sql).contains(Effects::HIDDEN_SETTING) {
            hidden_settings(sql.as_bytes(), &mut v);
        }
        v
    }

    #[test]
    fn settings_pg_settings_cannot_show_are_named() {
        assert_eq!(hidden_of("SET app.tenant = 'A'"), ["app.tenant"]);
        assert_eq!(
            hidden_of("set SESSION App.\"Tenant\" TO 'A'"),
            ["app.tenant"]
        );
        assert_eq!(hidden_of("SET ROLE other"), ["role"]);
        assert_eq!(
            hidden_of("/* x */ RESET role; RESET app.x"),
            ["role", "app.x"]
        );
        assert_eq!(
            hidden_of("SELECT set_config('app.tenant', 'A', false), pg_catalog.set_config('my.x'::text, $1, false)"),
            ["app.tenant", "my.x"]
        );
        assert_eq!(
            hidden_of("SELECT set_config('a.b', 'A', false); SET a.b = 1"),
            ["a.b"]
        );
        assert_eq!(hidden_of("SET search_path TO a"), Vec::<String>::new());
        assert_eq!(
            hidden_of("SET LOCAL app.tenant = 'A'"),
            Vec::<String>::new()
        );
        assert_eq!(e("SET LOCAL app.tenant = 'A'"), Effects::NONE);
        assert_eq!(
            e("SELECT set_config('app.tenant', 'A', true)"),
            Effects::NONE
        );
        assert_eq!(e("SELECT 'set_config(1)', \"app.x\" FROM t"), Effects::NONE);
        assert!(e("SELECT set_config('search_path', 'a', false)") == Effects::SETTINGS);
        assert!(
            e("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY").contains(Effects::SETTINGS)
        );
        assert!(e("RESET ALL").contains(Effects::SETTINGS));
    }

    #[test]
    fn untracked_and_session_authorization() {
        for sql in [
            "SELECT set_config($1, 'A', false)",
            "SELECT set_config(name, v, false) FROM t",
            "SELECT set_config('a' || 'b.c', 'A', false)",
            "DO $$BEGIN PERFORM set_config('app.x', '1', false); END$$",
            "do language plpgsql 'begin execute ''set app.x = 1''; end'",
        ] {
            assert!(e(sql).contains(Effects::UNTRACKED_STATE), "{sql}");
        }
        assert!(!e("DO $$BEGIN INSERT INTO t VALUES (1); END$$").contains(Effects::UNTRACKED_STATE));
        for sql in [
            "SET SESSION AUTHORIZATION alice",
            "set session session authorization default",
            "SELECT set_config('session_authorization', 'alice', false)",
        ] {
            assert_eq!(
                e(sql).pin_feature(),
                Some(PinFeature::SessionAuthorization),
                "{sql}"
            );
        }
        assert_eq!(e("RESET SESSION AUTHORIZATION"), Effects::SETTINGS);
        assert!(e("SET ROLE x").dirties_session());
        assert!(!e("SELECT 1").dirties_session());
        assert!(!e("DEALLOCATE ALL").dirties_session());
    }

    #[test]
    fn pgkeel_namespace_is_refused() {
        for sql in [
            "PREPARE pgkeel_2(text) AS SELECT 'HIJACKED:' || $1",
            "DEALLOCATE pgkeel_2; PREPARE pgkeel_2(text) AS SELECT 1",
            "prepare \"PGKEEL_abc_1\" as select 1",
        ] {
            let r = e(sql).refusal(true).expect(sql);
            assert_eq!(r.code, "42P05", "{sql}");
        }
        for sql in [
            "DEALLOCATE pgkeel_2",
            "deallocate prepare \"pgkeel_2\"",
            "EXECUTE PgKeel_2('x')",
            "EXPLAIN ANALYZE EXECUTE pgkeel_2",
            "CREATE TABLE t AS EXECUTE pgkeel_1",
            "SELECT 1; /* x */ EXECUTE pgkeel_1",
        ] {
            let r = e(sql).refusal(true).expect(sql);
            assert_eq!(r.code, "26000", "{sql}");
        }
        for sql in [
            "PREPARE mine AS SELECT 1",
            "EXECUTE mine",
            "DEALLOCATE mine",
            "DEALLOCATE ALL; SELECT 1",
            "SELECT 'PREPARE pgkeel_1'",
            "PREPARE TRANSACTION 'pgkeel_1'",
            "GRANT EXECUTE ON FUNCTION pgkeel_f() TO x",
        ] {
            assert_eq!(e(sql).refusal(true), None, "{sql}");
        }
    }

    #[test]
    fn sql_prepared_statements_only_alone_in_a_query() {
        for sql in [
            "PREPARE a AS SELECT 1; EXECUTE a",
            "SELECT 1; DEALLOCATE a",
            "EXECUTE a; EXECUTE a",
        ] {
            assert_eq!(e(sql).refusal(true).map(|r| r.code), Some("0A000"), "{sql}");
        }
        assert_eq!(e("EXECUTE a(1)").refusal(true), None);
        assert_eq!(e("EXECUTE a(1);").refusal(true), None);
        assert_eq!(
            e("EXECUTE a(1)").refusal(false).map(|r| r.code),
            Some("0A000"),
            "through Parse, names are not rewritten"
        );
        assert_eq!(e("DEALLOCATE ALL").refusal(false), None);
    }

    #[test]
    fn statement_kinds_through_the_lexer() {
        assert_eq!(e("DISCARD TEMP"), Effects::NONE);
        assert_eq!(e("DISCARD SEQUENCES"), Effects::NONE);
        assert_eq!(e("UNLISTEN *"), Effects::NONE);
        assert!(e("/* a */ -- b\n  LISTEN x").contains(Effects::LISTEN));
        assert!(e("SELECT * INTO TEMP t FROM x").contains(Effects::TEMP_TABLE));
        assert!(e("create or replace temp view v as select 1").contains(Effects::TEMP_TABLE));
        assert_eq!(e("INSERT INTO temp VALUES (1)"), Effects::NONE);
        assert_eq!(e("SELECT 'x; LISTEN y'"), Effects::NONE);
        assert_eq!(e("SELECT $$; SET x = 1$$"), Effects::NONE);
        assert_eq!(e("SELECT 1 -- ; SET x = 1"), Effects::NONE);
        assert!(e("SELECT \"pg_advisory_lock\"(1)").contains(Effects::ADVISORY_LOCK));
        assert!(!e("SELECT pg_advisory_lock_x(1)").contains(Effects::ADVISORY_LOCK));
    }

    /// Effects statement by statement, without the one-statement shortcut.
    fn split_scan(sql: &[u8]) -> Effects {
        let mut e = Effects::NONE;
        for st in words::statements(sql) {
            e |= statement(&st, &mut None);
        }
        e
    }

    proptest::proptest! {
        #[test]
        fn one_statement_shortcut_agrees(
            body in proptest::sample::select(vec![
                "SET app.x = 1", "select set_config('a.b', 'c', false)", "LISTEN x",
                "SELECT * INTO TEMP t FROM x", "EXECUTE pgkeel_1", "DEALLOCATE ALL",
                "SELECT 'a;b'", "create temp table t (x int)", "SELECT pg_advisory_lock(1)",
            ]),
            tail in proptest::sample::select(vec!["", ";", " ; ", ";\n", " -- c"]),
        ) {
            let sql = format!("{body}{tail}");
            proptest::prop_assert_eq!(scan(sql.as_bytes()), split_scan(sql.as_bytes()));
        }

        #[test]
        fn scan_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            let fx = scan(&bytes);
            let mut v = Vec::new();
            hidden_settings(&bytes, &mut v);
            let _ = fx.refusal(true);
        }
    }
}
