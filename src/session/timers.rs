//! Which timeout a session is under right now: `query_timeout` while the
//! server owes an answer, `idle_transaction_timeout` while the client sits
//! in an open transaction, `client_idle_timeout` while it sits outside one.
//! Pure: the relay and the session loop arm one timer from the answer and
//! re-arm it only when the answer changes.

use std::time::Duration;

use crate::config::ProxyConfig;
use crate::limits::Limit;
use crate::protocol::TxStatus;

/// The timeouts as configured (`None`: off).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub client_idle: Option<Duration>,
    pub idle_transaction: Option<Duration>,
    pub query: Option<Duration>,
}

fn on(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

impl Timeouts {
    pub fn from_config(p: &ProxyConfig) -> Timeouts {
        Timeouts {
            client_idle: on(p.client_idle_timeout.0),
            idle_transaction: on(p.idle_transaction_timeout.0),
            query: on(p.query_timeout.0),
        }
    }

    /// How long `wait` may last, if it is bounded.
    pub fn of(&self, wait: Limit) -> Option<Duration> {
        match wait {
            Limit::ClientIdle => self.client_idle,
            Limit::IdleTransaction => self.idle_transaction,
            Limit::Query => self.query,
            _ => None,
        }
    }
}

/// What an attached session waits on: the server's answer (`Query`: it
/// owes `owed` ReadyForQuery messages), or the client (idle, inside a
/// transaction or not). `None` while bytes are still moving (a client that
/// does not read its result is not idle).
pub fn attached_wait(owed: u32, status: TxStatus, buffered: bool) -> Option<Limit> {
    if owed > 0 {
        return Some(Limit::Query);
    }
    if buffered {
        return None;
    }
    Some(match status {
        TxStatus::Idle => Limit::ClientIdle,
        TxStatus::InTransaction | TxStatus::Failed => Limit::IdleTransaction,
    })
}

/// What a session without a server connection waits on: the client, inside
/// a transaction pgkeel has answered BEGIN for, or outside any.
pub fn detached_wait(in_transaction: bool) -> Limit {
    if in_transaction {
        Limit::IdleTransaction
    } else {
        Limit::ClientIdle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owed_answers_are_the_query_timeout_else_the_client_is_idle() {
        assert_eq!(
            attached_wait(1, TxStatus::InTransaction, true),
            Some(Limit::Query)
        );
        assert_eq!(attached_wait(2, TxStatus::Idle, false), Some(Limit::Query));
        assert_eq!(
            attached_wait(0, TxStatus::InTransaction, false),
            Some(Limit::IdleTransaction)
        );
        assert_eq!(
            attached_wait(0, TxStatus::Failed, false),
            Some(Limit::IdleTransaction)
        );
        assert_eq!(
            attached_wait(0, TxStatus::Idle, false),
            Some(Limit::ClientIdle)
        );
        assert_eq!(attached_wait(0, TxStatus::InTransaction, true), None);
        assert_eq!(detached_wait(true), Limit::IdleTransaction);
        assert_eq!(detached_wait(false), Limit::ClientIdle);
    }

    #[test]
    fn zero_turns_a_timeout_off() {
        let mut p = ProxyConfig::default();
        assert_eq!(Timeouts::from_config(&p), Timeouts::default());
        p.query_timeout = crate::config::Dur(Duration::from_secs(2));
        let t = Timeouts::from_config(&p);
        assert_eq!(t.of(Limit::Query), Some(Duration::from_secs(2)));
        assert_eq!(t.of(Limit::ClientIdle), None);
        assert_eq!(t.of(Limit::Logins), None);
    }
}
