//! What a statement does to its session beyond its transaction, read off
//! its text: settings it changes, and the features that tie a client to one
//! server connection (LISTEN, session advisory locks, WITH HOLD cursors,
//! temporary tables).
//!
//! This runs on every Query and Parse in transaction mode, so it does not
//! parse: it looks at the first words of each statement (the start of the
//! text and after every `;`, which over-approximates statement starts when a
//! `;` sits inside a literal: a false alarm costs one settings check, never
//! a missed change) and at `_`-joined function names.

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

    pub fn contains(self, other: Effects) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
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
        ]
        .into_iter()
        .find(|(e, _)| self.contains(*e))
        .map(|(_, f)| f)
    }
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
    let mut e = Effects::NONE;
    let mut at = 0;
    loop {
        let rest = &sql[at..];
        let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
        e |= statement(&rest[..end]);
        if end == rest.len() {
            break;
        }
        at += end + 1;
    }
    for p in memchr::memchr_iter(b'_', sql) {
        if ends_with_ci(&sql[..p], b"set")
            && starts_with_ci(&sql[p + 1..], b"config")
            && !(p >= 4 && (sql[p - 4].is_ascii_alphanumeric() || sql[p - 4] == b'_'))
        {
            e |= Effects::SETTINGS;
        }
        // pg_advisory_lock[_shared], pg_try_advisory_lock[_shared]; the
        // transaction-scoped ones are pg_advisory_xact_lock...: no match.
        if ends_with_ci(&sql[..p], b"advisory") && starts_with_ci(&sql[p + 1..], b"lock") {
            e |= Effects::ADVISORY_LOCK;
        }
    }
    e
}

/// Effects of one statement, from its first words.
fn statement(s: &[u8]) -> Effects {
    let mut words = Words { s };
    let Some(first) = words.next() else {
        return Effects::NONE;
    };
    let is = |w: &[u8], k: &[u8]| w.eq_ignore_ascii_case(k);
    if is(first, b"set") {
        // SET LOCAL and SET TRANSACTION/CONSTRAINTS end with the transaction.
        return match words.next() {
            Some(w) if is(w, b"local") || is(w, b"transaction") || is(w, b"constraints") => {
                Effects::NONE
            }
            _ => Effects::SETTINGS,
        };
    }
    if is(first, b"reset") {
        return Effects::SETTINGS;
    }
    if is(first, b"discard") {
        return match words.next() {
            Some(w) if is(w, b"all") => {
                Effects::SETTINGS | Effects::DROPS_STATEMENTS | Effects::DISCARD_ALL
            }
            _ => Effects::NONE,
        };
    }
    if is(first, b"deallocate") {
        let mut w = words.next();
        if w.is_some_and(|w| is(w, b"prepare")) {
            w = words.next();
        }
        return if w.is_some_and(|w| is(w, b"all")) {
            Effects::DROPS_STATEMENTS
        } else {
            Effects::NONE
        };
    }
    if is(first, b"listen") {
        return Effects::LISTEN;
    }
    if is(first, b"declare") {
        // DECLARE c [BINARY] [INSENSITIVE] [[NO] SCROLL] CURSOR WITH HOLD FOR ...
        let mut prev: &[u8] = b"";
        for w in words {
            if is(w, b"for") {
                break;
            }
            if is(w, b"hold") && is(prev, b"with") {
                return Effects::HOLD_CURSOR;
            }
            prev = w;
        }
        return Effects::NONE;
    }
    if is(first, b"create") {
        let mut w = words.next();
        if w.is_some_and(|w| is(w, b"local") || is(w, b"global")) {
            w = words.next();
        }
        if w.is_some_and(|w| is(w, b"temp") || is(w, b"temporary")) {
            // ON COMMIT DROP: gone with the transaction.
            return if contains_ci(s, b"drop") && contains_ci(s, b"commit") {
                Effects::NONE
            } else {
                Effects::TEMP_TABLE
            };
        }
        return Effects::NONE;
    }
    Effects::NONE
}

/// Words of a statement: identifiers and keywords, skipping white space,
/// comments and punctuation. Quoted text ends the walk (the words that
/// matter come before any).
struct Words<'a> {
    s: &'a [u8],
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let s = self.s;
            match s.first()? {
                b'-' if s.get(1) == Some(&b'-') => {
                    let nl = memchr::memchr(b'\n', s).unwrap_or(s.len());
                    self.s = &s[nl..];
                }
                b'/' if s.get(1) == Some(&b'*') => {
                    let end = memchr::memmem::find(&s[2..], b"*/").map_or(s.len(), |p| p + 4);
                    self.s = &s[end..];
                }
                b'\'' | b'"' | b'$' => return None,
                c if c.is_ascii_alphabetic() || *c == b'_' => {
                    let n = s
                        .iter()
                        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                        .unwrap_or(s.len());
                    self.s = &s[n..];
                    return Some(&s[..n]);
                }
                _ => self.s = &s[1..],
            }
        }
    }
}

fn ends_with_ci(s: &[u8], suffix: &[u8]) -> bool {
    s.len() >= suffix.len() && s[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

fn starts_with_ci(s: &[u8], prefix: &[u8]) -> bool {
    s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn contains_ci(s: &[u8], needle: &[u8]) -> bool {
    s.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
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
        assert_eq!(e("DEALLOCATE s1"), Effects::NONE);
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
}
