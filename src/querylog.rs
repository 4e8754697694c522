//! Query logging: `[log] log_queries` (every Query and Parse a client sends)
//! and `[[query_rules]] log` (the first statement of each transaction a rule
//! routes). One `info` line per statement, under the target
//! `pgkeel::querylog`. Parameter values (Bind) are never logged, and a
//! statement that mentions a password is logged with its literals replaced
//! by `?`.

use std::borrow::Cow;
use std::net::SocketAddr;

use crate::protocol::{self, HEADER_LEN};

/// Who sends the statements of one attach: the fields of each line.
#[derive(Debug, Clone)]
pub struct QueryLog {
    pub peer: SocketAddr,
    pub user: String,
    pub database: String,
    /// `primary` or `replica`: the role of the server the statements go to.
    pub route: &'static str,
    /// The member, as the topology names it.
    pub member: String,
}

impl QueryLog {
    /// Logs a client's Query ('Q') or Parse ('P') frame (header included).
    pub fn client_message(&self, typ: u8, frame: &[u8]) {
        let sql = loggable(protocol::query_text(typ, frame));
        let sql = sql.as_ref();
        if typ == b'P' {
            let name = frame
                .get(HEADER_LEN..)
                .and_then(|b| b.split(|&c| c == 0).next())
                .map_or(Cow::Borrowed(""), String::from_utf8_lossy);
            tracing::info!(target: "pgkeel::querylog", peer = %self.peer, user = self.user.as_str(), database = self.database.as_str(), route = self.route, member = self.member.as_str(), statement = name.as_ref(), query = sql, "parse");
        } else {
            tracing::info!(target: "pgkeel::querylog", peer = %self.peer, user = self.user.as_str(), database = self.database.as_str(), route = self.route, member = self.member.as_str(), query = sql, "query");
        }
    }
}

/// The text of a statement as it may be logged. SQL that mentions a
/// password (`ALTER ROLE ... PASSWORD '...'`, a `dblink` connection
/// string, `CREATE USER MAPPING ... OPTIONS (password '...')`) is logged
/// with its literals replaced by `?`, as the routing key has them; other
/// SQL as sent (lossily, if it is not UTF-8).
pub fn loggable(sql: &[u8]) -> Cow<'_, str> {
    let mentions_password = sql.windows(8).any(|w| w.eq_ignore_ascii_case(b"password"));
    if !mentions_password {
        return String::from_utf8_lossy(sql);
    }
    let mut out = Vec::with_capacity(sql.len());
    crate::classify::normalize(sql, &mut out);
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_logged_as_sent() {
        assert_eq!(
            loggable(b"SELECT * FROM t WHERE id = 42"),
            "SELECT * FROM t WHERE id = 42"
        );
        assert_eq!(loggable(b"SELECT '\xff'"), "SELECT '\u{fffd}'");
    }

    #[test]
    fn passwords_never_reach_the_log() {
        for (sql, secret) in [
            ("ALTER ROLE app PASSWORD 'hunter2'", "hunter2"),
            (
                "create user bob with encrypted password 'SCRAM-SHA-256$4096:abc'",
                "abc",
            ),
            ("alter user x password $$dollar$$", "dollar"),
            ("alter user x password E'it\\'s'", "it"),
            (
                "SELECT dblink_connect('host=h user=u Password=sekrit')",
                "sekrit",
            ),
            (
                "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'u', password 'pw1')",
                "pw1",
            ),
        ] {
            let logged = loggable(sql.as_bytes());
            assert!(!logged.contains(secret), "{sql} logged as {logged}");
            assert!(logged.contains('?'), "{logged}");
        }
        assert_eq!(
            loggable(b"ALTER ROLE app PASSWORD 'hunter2'"),
            "alter role app password ?"
        );
    }
}
