//! Named prepared statements shared by all clients, by content.
//!
//! In transaction mode a client's next transaction may land on any server
//! connection, so a statement the client prepared as `S_1` must be findable
//! everywhere. pgkeel names each distinct statement (query text + parameter
//! types) once, `pgkeel_<random>_<id>`, prepares it on a server connection
//! the first time a client needs it there, and rewrites the client's names
//! into that one. Clients sending the same statement share the server's copy.
//!
//! A shared statement outlives the client that prepared it, and its
//! parameter types were resolved (to type OIDs) when the server parsed it:
//! PostgreSQL re-plans a statement when tables change, but never revisits
//! those types, so once a type is dropped and created again (or its
//! creation rolled back) an old copy fails with `cache lookup failed for
//! type`. So the cache keeps a schema epoch, advanced whenever a client
//! sends SQL that creates, alters or drops types (`changes_types`) and again
//! when that client's transaction ends (when others see the change); a
//! server connection's copy prepared in an older epoch is closed and
//! prepared again at its next use. What a function or DO block does inside
//! is not seen.
//!
//! Clients cannot address these names: SQL that PREPAREs, EXECUTEs or
//! DEALLOCATEs a `pgkeel_` name is refused (`effects::Effects::refusal`),
//! and the random part, drawn from the OS per process, keeps the names
//! unguessable besides. What stays open: on its own connection a client can
//! read the names from `pg_prepared_statements` and reach them through
//! dynamic SQL inside a DO block or a function, which pgkeel does not see.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// One distinct statement.
#[derive(Debug)]
pub struct Statement {
    pub id: u64,
    /// `pgkeel_<random>_<id>` followed by its NUL, ready to splice into a
    /// message.
    pub server_name: Box<[u8]>,
    /// The Parse body after the statement name: query text, NUL, parameter
    /// count and types.
    pub body: Bytes,
    /// What running it does to the session (SET, LISTEN...), so a Bind of
    /// it counts like its text.
    pub effects: crate::classify::effects::Effects,
    /// Running it commits (COMMIT, END, PREPARE TRANSACTION...).
    pub commits: bool,
}

/// All statements known, by content. Touched only when a client sends a
/// named Parse (once per statement per client), never per execution.
pub struct StatementCache {
    by_body: Mutex<HashMap<Bytes, Arc<Statement>>>,
    next_id: AtomicU64,
    /// `pgkeel_<16 random hex digits>_`.
    prefix: String,
    /// Advanced by every statement that may change types (see above).
    epoch: AtomicU64,
}

impl Default for StatementCache {
    fn default() -> Self {
        use rand::TryRngCore;
        // From the OS; the thread-local generator (seeded from the OS too)
        // if that fails.
        let random = rand::rngs::OsRng
            .try_next_u64()
            .unwrap_or_else(|_| rand::random());
        StatementCache {
            by_body: Mutex::default(),
            next_id: AtomicU64::new(0),
            prefix: format!("pgkeel_{random:016x}_"),
            epoch: AtomicU64::new(1),
        }
    }
}

/// Beyond this many statements, the ones no client holds are forgotten.
const TRIM_AT: usize = 10_000;

impl StatementCache {
    /// The statement for a Parse body (after its name), created if new.
    pub fn intern(&self, body: &[u8]) -> Arc<Statement> {
        let mut map = self.by_body.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(body) {
            return s.clone();
        }
        if map.len() >= TRIM_AT {
            // Server connections may still have forgotten ones prepared:
            // they age out of their LRU.
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let text = &body[..memchr::memchr(0, body).unwrap_or(body.len())];
        let effects = crate::classify::effects::scan(text);
        let body = Bytes::copy_from_slice(body);
        let s = Arc::new(Statement {
            effects,
            commits: crate::classify::words::commits(text),
            id,
            server_name: format!("{}{id}\0", self.prefix)
                .into_bytes()
                .into_boxed_slice(),
            body: body.clone(),
        });
        map.insert(body, s.clone());
        s
    }

    /// The schema epoch now: copies prepared before it are stale.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Some client sent (or finished the transaction of) SQL that may
    /// change types: every copy prepared so far is stale.
    pub fn schema_changed(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// What every server-side name starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn len(&self) -> usize {
        self.by_body.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether SQL `text` may create, alter or drop a type that a statement's
/// parameters could name: CREATE/ALTER/DROP TYPE or DOMAIN, and DROP of a
/// table (its row type), schema, extension or owned objects.
pub fn changes_types(text: &[u8]) -> bool {
    use crate::classify::words::statements;
    // Every Query and Parse comes here: lex only text that has the words.
    if ![&b"type"[..], b"domain", b"drop"]
        .iter()
        .any(|w| contains_ignoring_case(text, w))
    {
        return false;
    }
    const TYPES: &[&[u8]] = &[b"type", b"domain"];
    const DROPPED: &[&[u8]] = &[b"table", b"schema", b"extension", b"owned"];
    statements(text).any(|st| {
        let mut w = st.words().filter(|t| !t.is(b"or") && !t.is(b"replace"));
        let (Some(verb), Some(object)) = (w.next(), w.next()) else {
            return false;
        };
        (verb.is_any(&[b"create", b"alter", b"drop"]) && object.is_any(TYPES))
            || (verb.is(b"drop") && object.is_any(DROPPED))
    })
}

/// Whether `text` contains `word` (lower case ASCII), ignoring ASCII case.
fn contains_ignoring_case(text: &[u8], word: &[u8]) -> bool {
    let (first, n) = (word[0], word.len());
    text.len() >= n
        && memchr::memchr2_iter(first, first.to_ascii_uppercase(), &text[..=text.len() - n])
            .any(|i| text[i..i + n].eq_ignore_ascii_case(word))
}

/// Whether SQL `text` rolls back (ROLLBACK, ROLLBACK TO SAVEPOINT, ABORT):
/// after types changed in the transaction, what it undoes changes them again.
pub fn rolls_back(text: &[u8]) -> bool {
    crate::classify::words::statements(text).any(|st| {
        st.first_word().is_some_and(|w| {
            w.eq_ignore_ascii_case(b"rollback") || w.eq_ignore_ascii_case(b"abort")
        })
    })
}

/// Where a statement stands on one server connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Here {
    /// Prepared, in the current schema epoch.
    Fresh,
    /// Prepared in an older epoch: no longer recorded; close it, then
    /// prepare it again.
    Stale,
    /// Not prepared.
    Absent,
}

/// The epoch of a copy whose Close the server skipped: older than any.
const RESTORED: u64 = 0;

/// One statement prepared on a connection.
#[derive(Debug, Clone, Copy)]
struct Entry {
    last_use: u64,
    epoch: u64,
}

/// The statements prepared on one server connection, least recently used
/// evicted first.
#[derive(Debug, Default)]
pub struct ConnStatements {
    /// foldhash: a lookup per Bind, where SipHash's cost showed.
    ids: HashMap<u64, Entry, foldhash::fast::RandomState>,
    clock: u64,
}

impl ConnStatements {
    /// Where statement `id` stands here, given the schema `epoch` (and
    /// marks it used). A stale one is forgotten.
    pub fn touch(&mut self, id: u64, epoch: u64) -> Here {
        self.clock += 1;
        match self.ids.get_mut(&id) {
            Some(e) if e.epoch >= epoch => {
                e.last_use = self.clock;
                Here::Fresh
            }
            Some(_) => {
                self.ids.remove(&id);
                Here::Stale
            }
            None => Here::Absent,
        }
    }

    /// Records a Parse sent for `id` in schema `epoch`; returns the
    /// statement to close to stay within `cap`, if any.
    pub fn add(&mut self, id: u64, epoch: u64, cap: usize) -> Option<u64> {
        self.clock += 1;
        let last_use = self.clock;
        self.ids.insert(id, Entry { last_use, epoch });
        if self.ids.len() <= cap.max(1) {
            return None;
        }
        let (&old, _) = self
            .ids
            .iter()
            .filter(|(k, _)| **k != id)
            .min_by_key(|(_, e)| e.last_use)?;
        self.ids.remove(&old);
        Some(old)
    }

    /// The Parse for `id` failed or was skipped by the server. A copy
    /// `restore` recorded (the Close ahead of that Parse was skipped too)
    /// is still there and stays.
    pub fn remove(&mut self, id: u64) {
        if self.ids.get(&id).is_some_and(|e| e.epoch != RESTORED) {
            self.ids.remove(&id);
        }
    }

    /// The Close for `id` was skipped by the server: it is still prepared
    /// here. Recorded as stale (its epoch unknown), so its next use
    /// closes it and prepares it again.
    pub fn restore(&mut self, id: u64) {
        self.clock += 1;
        let last_use = self.clock;
        self.ids.insert(
            id,
            Entry {
                last_use,
                epoch: RESTORED,
            },
        );
    }

    /// DISCARD ALL / DEALLOCATE ALL ran on the server.
    pub fn clear(&mut self) {
        self.ids.clear();
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_content_same_statement() {
        let c = StatementCache::default();
        let a = c.intern(b"select $1\0\0\x01\0\0\0\x17");
        let b = c.intern(b"select $1\0\0\x01\0\0\0\x17");
        let other = c.intern(b"select $1\0\0\0");
        assert!(Arc::ptr_eq(&a, &b));
        assert_ne!(a.id, other.id, "parameter types are part of a statement");
        assert_eq!(
            &a.server_name[..],
            format!("{}{}\0", c.prefix(), a.id).as_bytes()
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn server_names_are_unguessable_and_in_pgkeels_namespace() {
        let (a, b) = (StatementCache::default(), StatementCache::default());
        assert_ne!(a.prefix(), b.prefix(), "random per cache");
        let hex = a.prefix().strip_prefix("pgkeel_").unwrap();
        let hex = hex.strip_suffix('_').unwrap();
        assert_eq!(hex.len(), 16);
        assert!(hex.bytes().all(|c| c.is_ascii_hexdigit()));
        let s = a.intern(b"select 1\0\0\0");
        let name = &s.server_name[..s.server_name.len() - 1];
        let sql = [b"DEALLOCATE ", name].concat();
        assert!(crate::classify::effects::scan(&sql).refusal(true).is_some());
    }

    #[test]
    fn lru_evicts_the_least_recently_used() {
        let mut s = ConnStatements::default();
        assert_eq!(s.add(1, 1, 2), None);
        assert_eq!(s.add(2, 1, 2), None);
        assert_eq!(s.touch(1, 1), Here::Fresh);
        assert_eq!(s.add(3, 1, 2), Some(2), "2 is the least recently used");
        assert_eq!(s.touch(2, 1), Here::Absent);
        assert_eq!((s.touch(1, 1), s.touch(3, 1)), (Here::Fresh, Here::Fresh));
        s.remove(3);
        assert_eq!(s.len(), 1);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn a_copy_from_an_older_schema_epoch_is_stale_once() {
        let c = StatementCache::default();
        let mut s = ConnStatements::default();
        s.add(7, c.epoch(), 10);
        assert_eq!(s.touch(7, c.epoch()), Here::Fresh);
        c.schema_changed();
        assert_eq!(s.touch(7, c.epoch()), Here::Stale);
        assert_eq!(s.touch(7, c.epoch()), Here::Absent, "forgotten once stale");
        s.add(7, c.epoch(), 10);
        s.restore(7);
        s.remove(7);
        assert_eq!(
            s.touch(7, c.epoch()),
            Here::Stale,
            "a skipped Close and Parse leave the old copy, stale"
        );
    }

    #[test]
    fn statements_that_may_change_types() {
        for sql in [
            "CREATE TYPE e AS ENUM ('a')",
            "create domain d as int",
            "select 1; DROP TYPE e",
            "alter type e add value 'b'",
            "drop table if exists t",
            "DROP SCHEMA s CASCADE",
            "create or replace type x",
            "/* c */ drop owned by u",
            "CREATE TYPE",
            "Drop Domain d",
        ] {
            assert!(changes_types(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "select 'drop type e'",
            "create table t (a int)",
            "alter table t add b text",
            "insert into types values (1)",
            "select $1::prepenum[]",
            "",
        ] {
            assert!(!changes_types(sql.as_bytes()), "{sql}");
        }
        assert!(rolls_back(b"ROLLBACK TO SAVEPOINT s") && rolls_back(b"abort"));
        assert!(!rolls_back(b"select 'rollback'") && !rolls_back(b"commit"));
    }
}
