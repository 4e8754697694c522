//! Commit tokens (`[failover] commit_outcome = "token"`), as text: the SQL
//! that installs them, what pgkeel sends to record one inside a
//! transaction just before its COMMIT, and what it asks a new primary to
//! learn whether that transaction committed. A token is a random 128-bit
//! number, written as a UUID.

use crate::protocol;

/// The schema, table and functions, for `pgkeel commit-outcome-sql`.
pub const SQL: &str = include_str!("../sql/commit_outcome.sql");

/// Whether this connection's database has the functions and its user may
/// call them (one row: `t` or `f`; never an error).
pub const READY_QUERY: &str = "SELECT coalesce(has_function_privilege(to_regprocedure('pgkeel.commit_token(uuid)'), 'EXECUTE') AND has_function_privilege(to_regprocedure('pgkeel.commit_token_strict(uuid)'), 'EXECUTE') AND has_function_privilege(to_regprocedure('pgkeel.commit_token_known(uuid)'), 'EXECUTE'), false)";

/// Forgets old tokens (pgkeel runs it now and then, between transactions).
pub const EXPIRE_QUERY: &str = "SELECT pgkeel.commit_tokens_expire()";

/// One transaction's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token(pub u128);

impl Token {
    /// As a UUID (8-4-4-4-12 hex digits).
    pub fn uuid(self) -> String {
        let h = format!("{:032x}", self.0);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// The Query that records it (answered by one row, `t` when recorded).
    pub fn record(self, out: &mut bytes::BytesMut) {
        protocol::put_query(
            out,
            &format!("SELECT pgkeel.commit_token('{}')", self.uuid()),
        );
    }

    /// An autocommit write's text with the token recorded after it, in the
    /// same query (one implicit transaction). The newline ends a trailing
    /// `--` comment; an extra `;` is an empty statement.
    pub fn after(self, sql: &[u8]) -> String {
        format!(
            "{}\n;SELECT pgkeel.commit_token_strict('{}')",
            String::from_utf8_lossy(sql),
            self.uuid()
        )
    }

    /// The query that says whether it committed (`t` or `f`).
    pub fn lookup(self) -> String {
        format!("SELECT pgkeel.commit_token_known('{}')", self.uuid())
    }
}

/// The value of a one-column DataRow body that is exactly `t`.
pub fn data_row_true(body: &[u8]) -> bool {
    // i16 column count 1, i32 length 1, "t".
    body == [0, 1, 0, 0, 0, 1, b't']
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_uuids() {
        let t = Token(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        assert_eq!(t.uuid(), "01234567-89ab-cdef-0011-223344556677");
        assert_eq!(Token(1).uuid(), "00000000-0000-0000-0000-000000000001");
        assert!(t
            .lookup()
            .contains("'01234567-89ab-cdef-0011-223344556677'"));
    }

    #[test]
    fn a_write_carries_its_token_after_it() {
        assert_eq!(
            Token(2).after(b"INSERT INTO t VALUES (1) -- note"),
            "INSERT INTO t VALUES (1) -- note\n;SELECT pgkeel.commit_token_strict('00000000-0000-0000-0000-000000000002')"
        );
    }

    #[test]
    fn only_true_is_true() {
        assert!(data_row_true(&[0, 1, 0, 0, 0, 1, b't']));
        assert!(!data_row_true(&[0, 1, 0, 0, 0, 1, b'f']));
        assert!(!data_row_true(&[0, 1, 0xff, 0xff, 0xff, 0xff]));
        assert!(!data_row_true(&[]));
    }
}
