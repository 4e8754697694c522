//! Named prepared statements shared by all clients, by content.
//!
//! In transaction mode a client's next transaction may land on any server
//! connection, so a statement the client prepared as `S_1` must be findable
//! everywhere. pgkeel names each distinct statement (query text + parameter
//! types) once, `pgkeel_<random>_<id>`, prepares it on a server connection
//! the first time a client needs it there, and rewrites the client's names
//! into that one. Clients sending the same statement share the server's copy.
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

/// The statements prepared on one server connection, least recently used
/// evicted first.
#[derive(Debug, Default)]
pub struct ConnStatements {
    /// id → last use.
    ids: HashMap<u64, u64>,
    clock: u64,
}

impl ConnStatements {
    /// Whether the statement is prepared here (and marks it used).
    pub fn touch(&mut self, id: u64) -> bool {
        self.clock += 1;
        match self.ids.get_mut(&id) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records a Parse sent for `id`; returns the statement to close to
    /// stay within `cap`, if any.
    pub fn add(&mut self, id: u64, cap: usize) -> Option<u64> {
        self.clock += 1;
        self.ids.insert(id, self.clock);
        if self.ids.len() <= cap.max(1) {
            return None;
        }
        let (&old, _) = self
            .ids
            .iter()
            .filter(|(k, _)| **k != id)
            .min_by_key(|(_, t)| **t)?;
        self.ids.remove(&old);
        Some(old)
    }

    /// The Parse for `id` failed or was skipped by the server.
    pub fn remove(&mut self, id: u64) {
        self.ids.remove(&id);
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
        assert_eq!(s.add(1, 2), None);
        assert_eq!(s.add(2, 2), None);
        assert!(s.touch(1));
        assert_eq!(s.add(3, 2), Some(2), "2 is the least recently used");
        assert!(!s.touch(2));
        assert!(s.touch(1) && s.touch(3));
        s.remove(3);
        assert_eq!(s.len(), 1);
        s.clear();
        assert!(s.is_empty());
    }
}
