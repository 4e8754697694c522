//! A server lost mid-attachment: what the client is told. `recover` is a
//! pure function of the attachment's state and the session's facts; the
//! session carries its answer out.

use crate::classify::words;
use crate::protocol::{self, backend, field, frontend, sqlstate, Severity, TxStatus};
use crate::topology::{Member, Topology};

use super::attachment::journal::{self, Refusal};
use super::attachment::{self, Copy, ServerFatal, State};
use super::hold::Unavailable;
use super::Session;
use crate::commit_token::Token;

/// What a client learns at its next statement after its server was lost
/// while it sat idle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Lost {
    /// Its transaction, in a failover.
    Transaction,
    SessionState,
    /// Its transaction, ended by the server for a reason of its own (a
    /// terminated backend, `idle_in_transaction_session_timeout`): the
    /// server's error, as the client would have read it.
    Server(ServerFatal),
}

/// How long `server_went_down` waits for the server to take a connection.
const SERVER_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A request is re-run on a new server at most this often.
const MAX_RETRIES: u8 = 3;

const SESSION_STATE_LOST: &str = "session state on the server (SET parameters, temporary tables, prepared statements, advisory locks) was lost";

impl Session {
    /// Tells the client, at its next statement, that its transaction (or
    /// session state) died with its server. A ROLLBACK is simply granted.
    pub(super) async fn report_lost(&mut self, lost: Lost, typ: u8) -> bool {
        let frame = &self.att.bufs.from_client[..self.first_frame_len()];
        if typ == frontend::QUERY
            && words::lone_rollback(protocol::query_text(frontend::QUERY, frame))
        {
            let _ = self.att.bufs.from_client.split_to(self.first_frame_len());
            return self
                .reply(|out| {
                    protocol::put_command_complete(out, "ROLLBACK");
                    protocol::put_ready(out, TxStatus::Idle);
                })
                .await;
        }
        let (reason, code, msg) = match lost {
            Lost::Transaction => (
                "transaction_lost",
                sqlstate::SERIALIZATION_FAILURE,
                "the transaction was rolled back: its server failed over while it was open; retry the transaction".to_owned(),
            ),
            Lost::SessionState => (
                "session_state_lost",
                sqlstate::CONNECTION_FAILURE,
                format!("the server connection was lost (failover): {SESSION_STATE_LOST}; this statement did not run"),
            ),
            Lost::Server(f) => {
                return self.refuse(typ, Unavailable::new(&f.code, f.message)).await;
            }
        };
        self.failover_error(reason);
        self.refuse(typ, Unavailable::new(code, msg)).await
    }

    /// The attached server failed. A read-only request nothing was answered
    /// for goes again to another server; an open transaction runs again on
    /// the new primary (`replay.rs`); otherwise the client is told (now if
    /// it waits for an answer, else at its next statement) and the session
    /// goes on. `failover`: the topology showed a failover when the
    /// connection ended (else a server's FATAL is the server's own
    /// decision, passed on as it is). Err(why) when the client's
    /// connection ends too.
    pub(super) async fn server_lost(
        &mut self,
        why: &str,
        failover: bool,
    ) -> Result<(), &'static str> {
        let server = self.server.take().expect("attached");
        self.login.cancel.slot.detach();
        let key = &server.pool().key;
        tracing::warn!(peer = %self.peer, server = %key.host, port = key.port, error = why, "server connection lost");
        let lost_at = (key.host.clone(), key.port);
        drop(server);
        // What was scanned for the client is the client's: it goes out
        // before anything pgkeel says.
        if !self.att.bufs.to_client.is_empty() {
            let out = std::mem::take(&mut self.att.bufs.to_client);
            if !self.reply(|b| b.extend_from_slice(&out)).await {
                return Err("client gone");
            }
        }
        self.prepared.server_lost();
        if let Some(replay) = self.replay.take() {
            return self.lost_while_replaying(replay).await;
        }
        let st = &self.att.st;
        let facts = Facts {
            // (Classifying the kept request costs a parse: only if it could run again.)
            replay_reads_only: st.replayable
                && !st.responded
                && self.retries < MAX_RETRIES
                && !self.att.bufs.replay.is_empty()
                && attachment::replay_reads_only(
                    &self.att.bufs.replay,
                    Some(&self.prepared).filter(|p| p.enabled),
                ),
            session_mode: self.keeps_server(),
            failover,
            replay_transaction: journal::replayable(
                &st.journal,
                st.status,
                st.commit_in_flight,
                st.server_skip > 0,
            ),
            commit_token: st.commit_token(),
            // (An autocommit write with a token is a whole transaction too.)
            replay_uncommitted: journal::replayable(
                &st.journal,
                TxStatus::InTransaction,
                false,
                st.server_skip > 0,
            )
            .is_ok(),
        };
        let recovery = recover(st, &facts);
        if let Recovery::ResolveCommit {
            token,
            replay_if_not,
        } = recovery
        {
            self.start_resolve(&facts, failover, token, replay_if_not, lost_at);
            return Ok(());
        }
        if recovery == Recovery::ReplayTransaction {
            self.start_replay(&facts, failover);
            return Ok(());
        }
        // Settings the server reported are the client's (it saw them).
        self.note_params();
        let st = std::mem::take(&mut self.att.st);
        self.att.bufs.to_server.clear();
        self.att.bufs.from_server.clear();
        if !matches!(recovery, Recovery::Replay { .. }) {
            self.att.bufs.replay.clear();
            if self.pinned.take().is_some() {
                // What pinned it died with the connection.
                self.shared.metrics.pinned_clients.dec();
            }
        }
        if let (Err(r), true) = (facts.replay_transaction, recovery.tells_an_error()) {
            self.shared
                .metrics
                .transaction_replay_refusals_total
                .with_label_values(&[r.label()])
                .inc();
        }
        self.carry_out(recovery, failover || st.server_fatal.is_none())
            .await
    }

    /// The attached server ended an open transaction, a request in flight
    /// (or, in session mode, the session) with 57P01, as `pg_terminate_backend` does (an
    /// administrator's decision, passed on as it is), but takes no new
    /// sessions: its postmaster died, or it is shutting down (a leader
    /// killed, or stopped to be demoted), which is a failover.
    pub(super) async fn server_went_down(&mut self) -> bool {
        let st = &self.att.st;
        let terminated = st
            .server_fatal
            .as_ref()
            .is_some_and(|f| f.code == sqlstate::ADMIN_SHUTDOWN);
        // (Idle with nothing in flight, outside session mode, nothing was lost.)
        if !terminated || (st.status == TxStatus::Idle && st.pending == 0 && !self.keeps_server()) {
            return false;
        }
        let Some(key) = self.server.as_ref().map(|s| &s.pool().key) else {
            return false;
        };
        let (host, port) = (key.host.clone(), key.port);
        let probe = takes_sessions(&host, port, &self.user.name, &self.database);
        !tokio::time::timeout(SERVER_PROBE_TIMEOUT, probe)
            .await
            .unwrap_or(false)
    }

    /// Does what `recover` decided (but a transaction replay, which
    /// `server_lost` starts). `failover_error`: count an error it tells as
    /// a failover's.
    pub(super) async fn carry_out(
        &mut self,
        recovery: Recovery,
        failover_error: bool,
    ) -> Result<(), &'static str> {
        match recovery {
            Recovery::Close => {
                // Mid-message (a row over WHOLE_MESSAGE_LIMIT): the client's
                // stream cannot be put back in step.
                self.failover_error("mid_message");
                Err("server lost mid-message")
            }
            Recovery::End { code, message } => {
                // Session state lived there: the client's connection ends
                // with the server's, as it would without pgkeel.
                self.send_fatal(&code, &message).await;
                Err("the server ended the session's connection")
            }
            Recovery::Replay { drop_preamble } => {
                // Put the request back in front of whatever the client sent
                // since, and run it again wherever acquire() finds a primary.
                self.retries += 1;
                self.drop_preamble = drop_preamble;
                self.shared.metrics.retried_statements_total.inc();
                tracing::info!(peer = %self.peer, "re-running a read-only statement on another server");
                let mut again = std::mem::take(&mut self.att.bufs.replay);
                self.prepared.forget_parsed_in(&again);
                again.extend_from_slice(&self.att.bufs.from_client);
                self.att.bufs.from_client = again;
                Ok(())
            }
            // Started by `server_lost` itself.
            Recovery::ReplayTransaction | Recovery::ResolveCommit { .. } => Ok(()),
            Recovery::TellLater(lost) => {
                self.lost = lost;
                Ok(())
            }
            Recovery::TellNow {
                code,
                message,
                owed,
                skip_to_sync,
            } => {
                if failover_error {
                    self.failover_error("in_flight");
                }
                self.shared
                    .metrics
                    .errors_total
                    .with_label_values(&[&code])
                    .inc();
                self.skip_until_sync |= skip_to_sync;
                let sent = self
                    .reply(|out| {
                        protocol::put_error(out, Severity::Error, &code, &message);
                        for _ in 0..owed {
                            protocol::put_ready(out, TxStatus::Idle);
                        }
                    })
                    .await;
                if sent {
                    Ok(())
                } else {
                    Err("client gone")
                }
            }
        }
    }
}

/// Whether the server at `host:port` takes new sessions: a StartupMessage
/// is answered (an authentication request, or a login error), not refused
/// and not with 57P0x (shutting down, starting up, in recovery).
async fn takes_sessions(host: &str, port: u16, user: &str, database: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect((host, port)).await else {
        return false;
    };
    let mut startup = pgwire::messages::startup::Startup::new();
    startup.parameters.insert("user".into(), user.to_owned());
    startup
        .parameters
        .insert("database".into(), database.to_owned());
    let mut out = bytes::BytesMut::new();
    if pgwire::messages::Message::encode(&startup, &mut out).is_err()
        || s.write_all(&out).await.is_err()
    {
        return false;
    }
    let mut first = bytes::BytesMut::with_capacity(512);
    loop {
        match protocol::header(&first) {
            Some(Ok((backend::ERROR_RESPONSE, len))) if first.len() >= len => {
                let fields = protocol::parse_error_fields(&first[protocol::HEADER_LEN..len]);
                let code = protocol::error_field(&fields, field::CODE).unwrap_or("");
                return !code.starts_with("57P");
            }
            Some(Ok((backend::ERROR_RESPONSE, len))) if len <= 8192 => {}
            Some(Ok(_)) => return true,
            Some(Err(_)) => return false,
            None => {}
        }
        match s.read_buf(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if first.len() > 8192 {
            return true;
        }
    }
}

/// Whether topology `t` shows a failover of the member at `host:port`: a
/// switchover announced, the member down, or (for a connection to the
/// primary) another primary or none. Read when the connection ended,
/// before this session's own suspicion of it.
pub(super) fn failover_seen(t: &Topology, host: &str, port: u16, on_primary: bool) -> bool {
    let is_it = |m: &Member| m.host == host && m.port == port;
    if t.switchover.is_some() {
        return true;
    }
    if t.members.iter().any(|m| is_it(&m.member) && !m.healthy) {
        return true;
    }
    on_primary && !t.primary.as_deref().is_some_and(is_it)
}

/// What the session knows of a lost attachment beyond its stream state.
#[derive(Debug, Clone, Copy)]
pub(super) struct Facts {
    /// The kept request only reads and may run again (retries left).
    pub replay_reads_only: bool,
    /// Session state lived on the lost connection (session mode, pinned).
    pub session_mode: bool,
    /// The topology showed a failover (a switchover announced, the member
    /// down or no longer the primary) when the connection ended.
    pub failover: bool,
    /// The open transaction may run again on a new primary, or why not.
    pub replay_transaction: Result<(), Refusal>,
    /// The COMMIT in flight recorded this token: the new primary can say
    /// whether it committed.
    pub commit_token: Option<Token>,
    /// Were it found not to have committed, the transaction could run again.
    pub replay_uncommitted: bool,
}

/// What to do after losing the attached server.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Run the kept request again elsewhere; the client already has
    /// `drop_preamble` messages of its answer.
    Replay { drop_preamble: u32 },
    /// Run the open transaction again on the new primary, verifying every
    /// answer the client already had (`replay.rs`).
    ReplayTransaction,
    /// Ask the new primary whether the COMMIT in flight committed
    /// (`commit_outcome.rs`); if it did not, replay the transaction when
    /// `replay_if_not`.
    ResolveCommit { token: Token, replay_if_not: bool },
    /// The client waits: one ErrorResponse `code`, then the `owed`
    /// ReadyForQuery messages; `skip_to_sync`: its messages are dropped up
    /// to its Sync, as after any error mid-batch.
    TellNow {
        code: String,
        message: String,
        owed: u32,
        skip_to_sync: bool,
    },
    /// Nobody waits: tell the client at its next statement (if anything
    /// was lost).
    TellLater(Option<Lost>),
    /// The client saw part of a message: its connection cannot go on.
    Close,
    /// The server ended a connection that carried the client's session
    /// (session mode, pinned) for a reason of its own: the client gets
    /// its FATAL, and its connection ends, as without pgkeel.
    End { code: String, message: String },
}

impl Recovery {
    /// The client learns of an error (now, later, or by its connection's end).
    pub(super) fn tells_an_error(&self) -> bool {
        match self {
            Recovery::TellLater(lost) => lost.is_some(),
            Recovery::TellNow { .. } | Recovery::End { .. } | Recovery::Close => true,
            Recovery::Replay { .. }
            | Recovery::ReplayTransaction
            | Recovery::ResolveCommit { .. } => false,
        }
    }
}

/// The recovery for an attachment lost in state `st`.
pub(super) fn recover(st: &State, facts: &Facts) -> Recovery {
    if st.server_skip > 0 {
        return Recovery::Close;
    }
    if st.replayable && !st.responded && facts.replay_reads_only {
        return Recovery::Replay {
            drop_preamble: st.preamble + st.drop_preamble,
        };
    }
    // The server said why, and no failover explains it: its own words.
    let said = st.server_fatal.as_ref().filter(|_| !facts.failover);
    // A crash of another server process is no decision about this one.
    let decided = said.filter(|f| f.code != sqlstate::CRASH_SHUTDOWN);
    if let Some(token) = facts.commit_token {
        // Whatever ended the connection, the new primary knows the truth.
        return Recovery::ResolveCommit {
            token,
            replay_if_not: facts.replay_uncommitted && decided.is_none(),
        };
    }
    if facts.replay_transaction.is_ok() && decided.is_none() {
        // A failover (or a connection that ended without a word) took an
        // open transaction: it runs again. A server's own reason
        // (idle_in_transaction_session_timeout, a terminated backend) is
        // not undone.
        return Recovery::ReplayTransaction;
    }
    if let Some(f) = said.filter(|_| facts.session_mode) {
        return Recovery::End {
            code: f.code.clone(),
            message: f.message.clone(),
        };
    }
    if st.pending == 0 && !st.unsynced && st.copy == Copy::None {
        if let Some(f) = said.filter(|_| st.status != TxStatus::Idle) {
            return Recovery::TellLater(Some(Lost::Server(f.clone())));
        }
        return Recovery::TellLater(if st.status != TxStatus::Idle {
            Some(Lost::Transaction)
        } else if facts.session_mode {
            Some(Lost::SessionState)
        } else {
            None
        });
    }
    // A commit in flight may or may not have happened: never "retry".
    let (code, mut message) = if st.commit_in_flight {
        (
            sqlstate::CONNECTION_FAILURE.to_owned(),
            "the server failed over while committing: the outcome of the transaction is unknown"
                .to_owned(),
        )
    } else if let Some(f) = said.filter(|_| st.status != TxStatus::Idle) {
        // The transaction ended with the connection: the server's reason.
        (f.code.clone(), f.message.clone())
    } else if st.status != TxStatus::Idle {
        (
            sqlstate::SERIALIZATION_FAILURE.to_owned(),
            "the transaction was rolled back: its server failed over; retry the transaction"
                .to_owned(),
        )
    } else {
        (
            sqlstate::CONNECTION_FAILURE.to_owned(),
            "the server failed over while running this statement: its outcome is unknown"
                .to_owned(),
        )
    };
    if facts.session_mode {
        message = format!("{message}; {SESSION_STATE_LOST}");
    }
    Recovery::TellNow {
        code,
        message,
        owed: st.pending,
        skip_to_sync: st.unsynced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(f: impl FnOnce(&mut State)) -> State {
        let mut st = State::default();
        f(&mut st);
        st
    }

    const TRANSACTION_MODE: Facts = Facts {
        replay_reads_only: false,
        session_mode: false,
        failover: false,
        replay_transaction: Err(Refusal::Disabled),
        commit_token: None,
        replay_uncommitted: false,
    };

    fn told(r: Recovery) -> (String, String, u32, bool) {
        match r {
            Recovery::TellNow {
                code,
                message,
                owed,
                skip_to_sync,
            } => (code, message, owed, skip_to_sync),
            other => panic!("expected TellNow, got {other:?}"),
        }
    }

    #[test]
    fn mid_message_closes() {
        let st = state(|s| {
            s.server_skip = 10;
            s.pending = 1;
        });
        assert_eq!(recover(&st, &TRANSACTION_MODE), Recovery::Close);
    }

    #[test]
    fn an_unanswered_read_is_replayed() {
        let st = state(|s| {
            s.replayable = true;
            s.pending = 1;
            s.preamble = 2;
            s.drop_preamble = 1;
        });
        let reads = Facts {
            replay_reads_only: true,
            ..TRANSACTION_MODE
        };
        assert_eq!(recover(&st, &reads), Recovery::Replay { drop_preamble: 3 });
        // Answered already, or not a read: told instead.
        let answered = state(|s| {
            s.replayable = true;
            s.responded = true;
            s.pending = 1;
        });
        assert!(matches!(
            recover(&answered, &reads),
            Recovery::TellNow { .. }
        ));
        assert!(matches!(
            recover(&st, &TRANSACTION_MODE),
            Recovery::TellNow { .. }
        ));
    }

    #[test]
    fn an_open_transaction_replays_unless_the_server_said_why() {
        let replay = Facts {
            replay_transaction: Ok(()),
            ..TRANSACTION_MODE
        };
        for pending in [0, 1] {
            let st = state(|s| {
                s.status = TxStatus::InTransaction;
                s.pending = pending;
            });
            assert_eq!(recover(&st, &replay), Recovery::ReplayTransaction);
        }
        // The server's own reason (a terminated backend, a timeout) stands.
        let said = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 1;
            s.server_fatal = fatal("57P01");
        });
        assert!(matches!(recover(&said, &replay), Recovery::TellNow { .. }));
        // A crash of another process decided nothing about this one.
        let crashed = state(|s| {
            s.status = TxStatus::InTransaction;
            s.server_fatal = fatal(sqlstate::CRASH_SHUTDOWN);
        });
        assert_eq!(recover(&crashed, &replay), Recovery::ReplayTransaction);
        // In a failover it does not: the transaction runs again.
        let failover = Facts {
            failover: true,
            ..replay
        };
        assert_eq!(recover(&said, &failover), Recovery::ReplayTransaction);
        // Mid-message, the client's stream is broken first.
        let partial = state(|s| {
            s.status = TxStatus::InTransaction;
            s.server_skip = 3;
        });
        assert_eq!(recover(&partial, &replay), Recovery::Close);
        assert!(!Recovery::ReplayTransaction.tells_an_error());
        assert!(Recovery::TellLater(Some(Lost::Transaction)).tells_an_error());
        assert!(!Recovery::TellLater(None).tells_an_error());
    }

    #[test]
    fn a_commit_with_a_token_is_resolved_whatever_ended_it() {
        let st = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 1;
            s.commit_in_flight = true;
        });
        let token = Facts {
            commit_token: Some(Token(7)),
            replay_uncommitted: true,
            ..TRANSACTION_MODE
        };
        assert_eq!(
            recover(&st, &token),
            Recovery::ResolveCommit {
                token: Token(7),
                replay_if_not: true
            }
        );
        // The server's own decision: found out, but not run again.
        let said = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 1;
            s.commit_in_flight = true;
            s.server_fatal = fatal("57P01");
        });
        assert_eq!(
            recover(&said, &token),
            Recovery::ResolveCommit {
                token: Token(7),
                replay_if_not: false
            }
        );
        // Without a token: unknown, never retryable.
        let (code, _, _, _) = told(recover(&st, &TRANSACTION_MODE));
        assert_eq!(code, sqlstate::CONNECTION_FAILURE);
    }

    #[test]
    fn nobody_waiting_is_told_later() {
        let idle = State::default();
        assert_eq!(recover(&idle, &TRANSACTION_MODE), Recovery::TellLater(None));
        let open = state(|s| s.status = TxStatus::InTransaction);
        assert_eq!(
            recover(&open, &TRANSACTION_MODE),
            Recovery::TellLater(Some(Lost::Transaction))
        );
        let session = Facts {
            session_mode: true,
            ..TRANSACTION_MODE
        };
        assert_eq!(
            recover(&idle, &session),
            Recovery::TellLater(Some(Lost::SessionState))
        );
    }

    #[test]
    fn a_statement_in_an_open_transaction_is_retryable() {
        let st = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 2;
        });
        let (code, _, owed, skip) = told(recover(&st, &TRANSACTION_MODE));
        assert_eq!(
            (code.as_str(), owed, skip),
            (sqlstate::SERIALIZATION_FAILURE, 2, false)
        );
    }

    #[test]
    fn a_commit_in_flight_is_in_doubt_never_retryable() {
        for status in [TxStatus::InTransaction, TxStatus::Failed, TxStatus::Idle] {
            let st = state(|s| {
                s.status = status;
                s.pending = 1;
                s.commit_in_flight = true;
            });
            let (code, message, owed, _) = told(recover(&st, &TRANSACTION_MODE));
            assert_eq!(code, sqlstate::CONNECTION_FAILURE, "{status:?}");
            assert!(message.contains("outcome of the transaction is unknown"));
            assert_eq!(owed, 1);
        }
    }

    #[test]
    fn an_autocommit_statement_has_an_unknown_outcome() {
        let st = state(|s| s.pending = 1);
        let (code, message, _, _) = told(recover(&st, &TRANSACTION_MODE));
        assert_eq!(code, sqlstate::CONNECTION_FAILURE);
        assert!(message.contains("its outcome is unknown"));
    }

    #[test]
    fn an_unsynced_batch_or_copy_skips_to_the_sync() {
        let unsynced = state(|s| s.unsynced = true);
        let (_, _, owed, skip) = told(recover(&unsynced, &TRANSACTION_MODE));
        assert_eq!((owed, skip), (0, true));
        // An extended-protocol COPY FROM STDIN: its Sync was read as data.
        let copying = state(|s| {
            s.copy = Copy::In;
            s.unsynced = true;
        });
        let (_, _, owed, skip) = told(recover(&copying, &TRANSACTION_MODE));
        assert_eq!((owed, skip), (0, true));
        // A simple-protocol COPY owes its Query's ReadyForQuery.
        let simple = state(|s| {
            s.copy = Copy::In;
            s.pending = 1;
        });
        let (_, _, owed, skip) = told(recover(&simple, &TRANSACTION_MODE));
        assert_eq!((owed, skip), (1, false));
    }

    #[test]
    fn session_mode_says_the_session_state_is_gone() {
        let st = state(|s| s.pending = 1);
        let session = Facts {
            session_mode: true,
            ..TRANSACTION_MODE
        };
        let (_, message, _, _) = told(recover(&st, &session));
        assert!(message.ends_with(SESSION_STATE_LOST));
    }

    fn fatal(code: &str) -> Option<ServerFatal> {
        Some(ServerFatal {
            code: code.into(),
            message: "terminating connection due to administrator command".into(),
        })
    }

    #[test]
    fn a_server_fatal_without_a_failover_is_the_servers_own_error() {
        // In a transaction, waiting: the server's code, not 40001.
        let st = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 1;
            s.server_fatal = fatal("57P01");
        });
        let (code, message, owed, _) = told(recover(&st, &TRANSACTION_MODE));
        assert_eq!((code.as_str(), owed), ("57P01", 1));
        assert!(message.contains("administrator command"), "{message}");
        // Idle in a transaction (idle_in_transaction_session_timeout): told
        // at the next statement, with the server's words.
        let idle = state(|s| {
            s.status = TxStatus::InTransaction;
            s.server_fatal = fatal("25P03");
        });
        assert_eq!(
            recover(&idle, &TRANSACTION_MODE),
            Recovery::TellLater(Some(Lost::Server(fatal("25P03").unwrap())))
        );
        // Outside a transaction nothing was lost.
        let outside = state(|s| s.server_fatal = fatal("57P05"));
        assert_eq!(
            recover(&outside, &TRANSACTION_MODE),
            Recovery::TellLater(None)
        );
        // A commit in flight stays in doubt; an autocommit statement's
        // outcome is unknown.
        for commit in [true, false] {
            let st = state(|s| {
                s.pending = 1;
                s.commit_in_flight = commit;
                s.server_fatal = fatal("57P01");
            });
            let (code, _, _, _) = told(recover(&st, &TRANSACTION_MODE));
            assert_eq!(code, sqlstate::CONNECTION_FAILURE);
        }
    }

    #[test]
    fn a_server_fatal_ends_a_session_mode_client_as_postgresql_would() {
        let session = Facts {
            session_mode: true,
            ..TRANSACTION_MODE
        };
        for pending in [0, 1] {
            let st = state(|s| {
                s.pending = pending;
                s.server_fatal = fatal("57P05");
            });
            assert_eq!(
                recover(&st, &session),
                Recovery::End {
                    code: "57P05".into(),
                    message: "terminating connection due to administrator command".into()
                }
            );
        }
        // A read nothing was answered for is still re-run first.
        let read = state(|s| {
            s.replayable = true;
            s.pending = 1;
            s.server_fatal = fatal("57P01");
        });
        let reads = Facts {
            replay_reads_only: true,
            ..TRANSACTION_MODE
        };
        assert_eq!(
            recover(&read, &reads),
            Recovery::Replay { drop_preamble: 0 }
        );
    }

    #[test]
    fn in_a_failover_a_server_fatal_is_a_failover() {
        let failover = Facts {
            failover: true,
            ..TRANSACTION_MODE
        };
        let st = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 1;
            s.server_fatal = fatal("57P01");
        });
        let (code, _, _, _) = told(recover(&st, &failover));
        assert_eq!(code, sqlstate::SERIALIZATION_FAILURE);
        let session = Facts {
            session_mode: true,
            ..failover
        };
        assert!(matches!(recover(&st, &session), Recovery::TellNow { .. }));
        // A connection that ended without a word is treated as a failover
        // (a crash, a kill): unchanged.
        let silent = state(|s| {
            s.status = TxStatus::InTransaction;
            s.pending = 1;
        });
        let (code, _, _, _) = told(recover(&silent, &TRANSACTION_MODE));
        assert_eq!(code, sqlstate::SERIALIZATION_FAILURE);
    }

    #[test]
    fn a_failover_is_what_the_topology_shows() {
        use crate::topology::{MemberState, Role};
        use std::sync::Arc;
        let a = Arc::new(Member {
            name: "a".into(),
            host: "h".into(),
            port: 1,
        });
        let b = Arc::new(Member {
            name: "b".into(),
            host: "h".into(),
            port: 2,
        });
        let member = |m: &Arc<Member>, healthy| MemberState {
            member: m.clone(),
            role: Role::Primary,
            healthy,
            last_error: None,
            patroni: None,
            lag_bytes: None,
            lsn: None,
            streaming: false,
            replay_lag: None,
        };
        let t = Topology {
            members: vec![member(&a, true), member(&b, true)],
            primary: Some(a.clone()),
            ..Topology::default()
        };
        assert!(!failover_seen(&t, "h", 1, true));
        assert!(!failover_seen(&t, "h", 2, false));
        assert!(failover_seen(&t, "h", 2, true), "b is not the primary");
        let down = Topology {
            members: vec![member(&a, false), member(&b, true)],
            primary: None,
            ..Topology::default()
        };
        assert!(failover_seen(&down, "h", 1, true));
        assert!(failover_seen(&down, "h", 1, false));
    }
}
