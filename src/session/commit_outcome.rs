//! Known commit outcomes (`[failover] commit_outcome = "token"`), the
//! session's side. A write transaction records a token just before its
//! COMMIT (the attachment core sends it and reads its answer); if the
//! server dies while committing, the session asks the new primary whether
//! the token is there: found, the client gets its COMMIT; not found where
//! that proves the transaction never committed (Patroni's synchronous mode,
//! or the same server back after a crash), the transaction is replayed
//! (`replay.rs`), or the client learns it was rolled back (40001); anything
//! else, 08006 as without tokens: its outcome is unknown.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::commit_token::{Token, EXPIRE_QUERY, READY_QUERY};
use crate::config::{CommitOutcome, PoolMode};
use crate::pool::PooledConn;
use crate::protocol::{self, sqlstate, TxStatus};

use super::attachment::journal::Refusal;
use super::attachment::TokenState;
use super::recovery::{Facts, Recovery};
use super::Session;

/// How long the new primary may take to say whether a token is there.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Old tokens are forgotten at most this often per database.
const EXPIRE_EVERY: Duration = Duration::from_secs(60);

/// A COMMIT in flight to resolve before anything else.
pub(super) struct Resolve {
    token: Token,
    /// Not committed (and known to be): run the transaction again.
    replay_if_not: bool,
    /// The COMMIT's CommandComplete already reached the client (for an
    /// autocommit write, the write's own).
    tag_sent: bool,
    /// The token trailed an autocommit write (no COMMIT of the client's).
    autocommit: bool,
    /// That write's whole answer, held back when its server died.
    held: Option<bytes::BytesMut>,
    /// The server that died, (host, port).
    lost: (String, u16),
}

/// What `resolve_commit` left to do.
pub(super) enum Resolved {
    /// Not committed: replay the transaction on this connection.
    Replay,
    /// The client was answered (or the session ends).
    Done(Result<(), &'static str>),
}

impl Session {
    /// `commit_outcome = "token"` is on for this session.
    fn tokens_on(&self) -> bool {
        self.user.pool_mode == PoolMode::Transaction
            && self.shared.config.load().failover.commit_outcome == CommitOutcome::Token
    }

    /// Learns, once per server connection, whether its database has the
    /// token functions (`pgkeel commit-outcome-sql`) for this user.
    pub(super) async fn check_tokens(&mut self, conn: &mut PooledConn) {
        if !self.tokens_on() || conn.conn().commit_tokens.is_some() {
            return;
        }
        let ready = conn.conn().query_value(READY_QUERY, LOOKUP_TIMEOUT).await;
        let ready = matches!(ready.as_ref().map(|v| v.as_deref()), Ok(Some("t")));
        if !ready {
            tracing::warn!(database = %self.database, user = %self.user.name, "commit_outcome = \"token\", but this database lacks pgkeel's commit token functions (run `pgkeel commit-outcome-sql | psql -d DATABASE`): its COMMITs in flight at a failover stay of unknown outcome");
        }
        conn.conn().commit_tokens = Some(ready);
    }

    /// At attach: the token this transaction records before its COMMIT, if
    /// it may write and its connection can record one.
    pub(super) fn offer_token(&mut self) {
        let ready = self
            .server
            .as_mut()
            .is_some_and(|s| s.conn().commit_tokens == Some(true));
        if ready && self.may_write && self.pinned.is_none() && self.tokens_on() {
            self.att.st.token_offer = Some(Token(rand::random()));
        }
    }

    /// After a transaction: counts its token, and now and then forgets old
    /// ones on the connection going back. False if that failed (the
    /// connection is then closed, not pooled).
    pub(super) async fn tokens_after(&mut self, conn: &mut PooledConn) -> bool {
        let m = &self.shared.metrics;
        match std::mem::take(&mut self.att.st.token) {
            TokenState::Recorded(_) => m.commit_tokens_total.with_label_values(&["recorded"]).inc(),
            TokenState::Refused | TokenState::Trailing { .. } => {
                m.commit_tokens_total.with_label_values(&["refused"]).inc()
            }
            TokenState::Sent(_) | TokenState::None => return true,
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = &self.db.tokens_expired_at;
        let prev = last.load(Ordering::Relaxed);
        if prev + EXPIRE_EVERY.as_secs() > now
            || last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            // Not due, or another session does it.
            return true;
        }
        conn.conn()
            .query_value(EXPIRE_QUERY, LOOKUP_TIMEOUT)
            .await
            .is_ok()
    }

    /// `server_lost` decided to resolve the COMMIT in flight: like a replay,
    /// with the lookup first.
    pub(super) fn start_resolve(
        &mut self,
        facts: &Facts,
        failover: bool,
        token: Token,
        replay_if_not: bool,
        lost: (String, u16),
    ) {
        let tag_sent = self.att.st.commit_tag_sent;
        let autocommit = self.att.st.status == TxStatus::Idle;
        let held = std::mem::take(&mut self.att.bufs.held);
        let held = matches!(
            self.att.st.token,
            TokenState::Trailing {
                statement_done: true,
                ..
            }
        )
        .then_some(held);
        self.shared
            .metrics
            .commit_tokens_total
            .with_label_values(&["recorded"])
            .inc();
        // Without the token, the fallback: 08006, outcome unknown.
        self.start_replay(
            &Facts {
                commit_token: None,
                ..*facts
            },
            failover,
        );
        if let Some(r) = self.replay.as_deref_mut() {
            r.resolve = Some(Resolve {
                token,
                replay_if_not,
                tag_sent,
                autocommit,
                held,
                lost,
            });
        }
    }

    /// Asks the new primary (on `conn`) whether the COMMIT in flight
    /// committed, and answers the client when that settles it.
    pub(super) async fn resolve_commit(&mut self, conn: &mut PooledConn) -> Resolved {
        let r = self.replay.as_deref_mut().expect("replaying");
        let res = r.resolve.take().expect("resolving");
        let found = conn
            .conn()
            .query_value(&res.token.lookup(), LOOKUP_TIMEOUT)
            .await;
        let key = &conn.pool().key;
        let same_server = (key.host.as_str(), key.port) == (res.lost.0.as_str(), res.lost.1);
        let proves_absence = self.shared.topology.load().synchronous || same_server;
        match found.as_ref().map(|v| v.as_deref()) {
            Ok(Some("t")) if res.autocommit && !res.tag_sent && res.held.is_none() => {
                // It committed, but its answer (rows it returned, its tag)
                // never arrived and cannot be made up: said as it is.
                self.outcome("committed");
                let r = self.replay.as_deref_mut().expect("replaying");
                r.fallback = commit_answer(sqlstate::CONNECTION_FAILURE, "the server failed over after this statement committed, before its answer arrived: it committed, and is not run again");
                Resolved::Done(self.replay_failed(Refusal::Commit).await)
            }
            Ok(Some("t")) => {
                self.outcome("committed");
                self.replay = None;
                tracing::info!(peer = %self.peer, user = %self.user.name, "a COMMIT in flight at a failover had committed: the client gets its COMMIT");
                let sent = self
                    .reply(|out| {
                        if let Some(answer) = &res.held {
                            // The write's own answer, held back: now it is true.
                            out.extend_from_slice(answer);
                        } else if !res.tag_sent {
                            protocol::put_command_complete(out, "COMMIT");
                        }
                        protocol::put_ready(out, TxStatus::Idle);
                    })
                    .await;
                Resolved::Done(if sent { Ok(()) } else { Err("client gone") })
            }
            Ok(Some("f")) if proves_absence => {
                self.outcome("not_committed");
                // Known not to have committed: it was rolled back, which is
                // worth retrying, if it cannot run again here.
                let r = self.replay.as_deref_mut().expect("replaying");
                r.fallback = commit_answer(sqlstate::SERIALIZATION_FAILURE, "the transaction was rolled back: its server failed over while committing, before the commit reached the new primary; retry the transaction");
                if res.replay_if_not {
                    tracing::info!(peer = %self.peer, user = %self.user.name, "a COMMIT in flight at a failover had not committed: replaying its transaction");
                    return Resolved::Replay;
                }
                Resolved::Done(self.replay_failed(Refusal::Commit).await)
            }
            _ => {
                self.outcome("unknown");
                Resolved::Done(self.replay_failed(Refusal::Commit).await)
            }
        }
    }

    fn outcome(&self, result: &str) {
        self.shared
            .metrics
            .commit_outcomes_total
            .with_label_values(&[result])
            .inc();
    }
}

/// What the client waiting on its COMMIT (or write) is told instead: one
/// error, then its ReadyForQuery.
fn commit_answer(code: &str, message: &str) -> Recovery {
    Recovery::TellNow {
        code: code.to_owned(),
        message: message.to_owned(),
        owed: 1,
        skip_to_sync: false,
    }
}
