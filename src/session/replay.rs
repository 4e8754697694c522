//! Transaction replay, the session's side: a transaction whose server died
//! while it was open runs again on the new primary. The attachment core
//! kept its messages and a digest of everything the client received
//! (`attachment::journal`); here the session takes them over, waits for a
//! primary, sends them again (after the session's parameters and its
//! deferred BEGIN, as any attach), and lets the client go on only once
//! the new answer proved byte for byte the same as what it had. Otherwise
//! the client gets what it would have got without replay (`fallback`).

use std::time::Instant;

use bytes::BytesMut;

use crate::config::Route;
use crate::protocol::sqlstate;

use super::attachment::journal::{Received, Refusal};
use super::commit_outcome::Resolved;
use super::recovery::{recover, Facts, Recovery};
use super::{Session, KILLED};

/// A transaction being replayed.
pub(super) struct Replay {
    /// The client's messages since the lost attach, as it sent them.
    pub(super) journal: BytesMut,
    /// The deferred BEGIN that attach sent ahead of them.
    pub(super) begin: Option<BytesMut>,
    /// What the client received of the lost attachment.
    pub(super) had: Received,
    /// What the client is told if the replay cannot complete.
    pub(super) fallback: Recovery,
    /// Its errors count as a failover's.
    pub(super) failover_error: bool,
    pub(super) attempts: u32,
    pub(super) since: Instant,
    /// First find out whether its COMMIT committed (`commit_outcome.rs`).
    pub(super) resolve: Option<super::commit_outcome::Resolve>,
}

impl Session {
    /// `server_lost` decided to replay: take the lost attachment's record.
    pub(super) fn start_replay(&mut self, facts: &Facts, failover: bool) {
        let mut st = std::mem::take(&mut self.att.st);
        let fallback = recover(
            &st,
            &Facts {
                replay_transaction: Err(Refusal::Disabled),
                ..*facts
            },
        );
        self.att.bufs.to_server.clear();
        self.att.bufs.from_server.clear();
        self.replay = Some(Box::new(Replay {
            journal: std::mem::take(&mut self.att.bufs.replay),
            begin: st.journal.begin.take(),
            had: st.journal.received(),
            fallback,
            failover_error: failover || st.server_fatal.is_none(),
            attempts: 1,
            since: Instant::now(),
            resolve: None,
        }));
        self.replay_result("attempted");
        tracing::info!(peer = %self.peer, user = %self.user.name, "replaying an open transaction on the new primary");
    }

    /// Between attachments, with a replay under way: waits for a primary
    /// (as any transaction is held), attaches, and puts the journal ahead
    /// of whatever the client sent since. Err(why) when the session ends.
    pub(super) async fn resume_replay(&mut self) -> Result<(), &'static str> {
        match self.acquire(Route::Primary).await {
            Ok((mut conn, on_primary)) => {
                if self.replay.as_ref().is_some_and(|r| r.resolve.is_some()) {
                    // A COMMIT in flight: did it commit? Only if not, and
                    // that is known, does the transaction run again.
                    match self.resolve_commit(&mut conn).await {
                        Resolved::Replay => {}
                        Resolved::Done(result) => return result,
                    }
                }
                self.check_tokens(&mut conn).await;
                self.may_write = true;
                let r = self.replay.as_deref().expect("replaying");
                self.deferred_begin = r.begin.clone();
                self.attach(conn, on_primary, false);
                let r = self.replay.as_deref().expect("replaying");
                let mut again =
                    BytesMut::with_capacity(r.journal.len() + self.att.bufs.from_client.len());
                again.extend_from_slice(&r.journal);
                again.extend_from_slice(&self.att.bufs.from_client);
                self.att.bufs.from_client = again;
                self.prepared.forget_parsed_in(&r.journal);
                self.att.st.journal.replaying(r.had, r.journal.len());
                Ok(())
            }
            Err(_) if self.registered.is_killed() => {
                self.send_fatal(sqlstate::ADMIN_SHUTDOWN, KILLED).await;
                Err("killed from the admin console")
            }
            Err(_) => self.replay_failed(Refusal::NoPrimary).await,
        }
    }

    /// After a pump: a replay whose answer matched is done.
    pub(super) fn replay_checked(&mut self) {
        if self.replay.is_some() && self.att.st.journal.verified() {
            let r = self.replay.take().expect("checked");
            self.shared
                .metrics
                .transaction_replay_seconds
                .observe(r.since.elapsed().as_secs_f64());
            self.replay_result("succeeded");
            tracing::info!(peer = %self.peer, user = %self.user.name, attempts = r.attempts, "replayed transaction matched: the client goes on");
        }
    }

    /// The replayed answer differed from the client's: the new server's
    /// transaction is dropped with its connection (never pooled), and the
    /// client gets the fallback.
    pub(super) async fn replay_diverged(&mut self) -> Result<(), &'static str> {
        self.server.take();
        self.login.cancel.slot.detach();
        self.prepared.server_lost();
        self.drop_journal_left();
        self.replay_failed(Refusal::ResultsDiffer).await
    }

    /// The server of a replay in progress failed too: again, or give up.
    pub(super) async fn lost_while_replaying(
        &mut self,
        mut r: Box<Replay>,
    ) -> Result<(), &'static str> {
        self.drop_journal_left();
        let attempts = self.shared.config.load().failover.replay_attempts;
        if r.attempts < attempts {
            r.attempts += 1;
            self.replay = Some(r);
            self.replay_result("attempted");
            return Ok(());
        }
        self.replay = Some(r);
        self.replay_failed(Refusal::Attempts).await
    }

    /// Journal bytes not yet sent again are not the client's input: gone.
    fn drop_journal_left(&mut self) {
        let st = std::mem::take(&mut self.att.st);
        let left = st
            .journal
            .replay_left()
            .min(self.att.bufs.from_client.len());
        let _ = self.att.bufs.from_client.split_to(left);
        let b = &mut self.att.bufs;
        b.to_server.clear();
        b.from_server.clear();
        b.to_client.clear();
        b.replay.clear();
    }

    pub(super) async fn replay_failed(&mut self, why: Refusal) -> Result<(), &'static str> {
        let r = self.replay.take().expect("replaying");
        self.replay_result("failed");
        self.shared
            .metrics
            .transaction_replay_refusals_total
            .with_label_values(&[why.label()])
            .inc();
        tracing::info!(peer = %self.peer, user = %self.user.name, reason = why.label(), "transaction replay failed: the client gets the error");
        self.carry_out(r.fallback, r.failover_error).await
    }

    fn replay_result(&self, result: &str) {
        self.shared
            .metrics
            .transaction_replays_total
            .with_label_values(&[result])
            .inc();
    }
}
