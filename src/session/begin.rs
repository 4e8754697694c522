//! Transactions begun and ended without a server: a bare BEGIN answered at
//! once and sent later ahead of the next statement (deferred), its COMMIT
//! or ROLLBACK answered here, a deferred transaction that failed before
//! reaching a server, and COMMIT/ROLLBACK outside any transaction.

use crate::classify::words::{self, LoneEnd};
use crate::classify::Kind;
use crate::config::Route;
use crate::protocol::{self, field, frontend, TxStatus};
use crate::router::{Decision, SessionView, Why};

use super::hold::Unavailable;
use super::Session;

impl Session {
    /// Answers the client's statement with the error `u` (no server could
    /// be had), keeping the session in step. False when the client is gone.
    pub(super) async fn refuse(&mut self, typ: u8, u: Unavailable) -> bool {
        let code = protocol::error_field(&u.fields, field::CODE)
            .unwrap_or("XX000")
            .to_owned();
        self.shared
            .metrics
            .errors_total
            .with_label_values(&[&code])
            .inc();
        tracing::warn!(peer = %self.peer, sqlstate = %code, reason = protocol::error_field(&u.fields, field::MESSAGE).unwrap_or(""), "no server connection for client");
        let simple = matches!(typ, frontend::QUERY | frontend::FUNCTION_CALL);
        if simple {
            let _ = self.att.bufs.from_client.split_to(self.first_frame_len());
        } else {
            self.skip_until_sync = true;
        }
        if self.deferred_begin.is_some() {
            // The client believes it is in a transaction: now a failed one.
            self.deferred_aborted = true;
        }
        let status = self.idle_status();
        self.reply(|out| {
            protocol::put_error_fields(out, u.fields);
            if simple {
                protocol::put_ready(out, status);
            }
        })
        .await
    }

    /// ReadyForQuery status while no server is attached.
    pub(super) fn idle_status(&self) -> TxStatus {
        match (&self.deferred_begin, self.deferred_aborted) {
            (Some(_), true) => TxStatus::Failed,
            (Some(_), false) => TxStatus::InTransaction,
            (None, _) => TxStatus::Idle,
        }
    }

    /// Routes the request at the head of the client's buffer, or answers
    /// it here: a deferred BEGIN, its COMMIT or ROLLBACK, an aborted
    /// deferred transaction, a COMMIT or ROLLBACK outside any transaction.
    pub(super) async fn route(&mut self) -> Routed {
        let len = self.first_frame_len();
        let frame = &self.att.bufs.from_client[..len];
        let simple = frame.first() == Some(&frontend::QUERY);
        let text = protocol::query_text(frontend::QUERY, frame);
        let end = if simple { words::lone_end(text) } else { None };
        let (commit, rollback) = (end == Some(LoneEnd::Commit), end == Some(LoneEnd::Rollback));
        if self.deferred_aborted {
            if commit || rollback {
                // PostgreSQL answers a COMMIT of a failed transaction ROLLBACK.
                self.deferred_begin = None;
                self.deferred_aborted = false;
                return self.answer(len, None, "ROLLBACK", TxStatus::Idle).await;
            }
            let typ = frame[0];
            let u = Unavailable::new(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into(),
            );
            return self.refused(typ, u).await;
        }
        if self.deferred_begin.is_none() && (commit || rollback) {
            // No transaction anywhere: no server needed to say so.
            let tag = if commit { "COMMIT" } else { "ROLLBACK" };
            return self
                .answer(len, Some(NO_TRANSACTION), tag, TxStatus::Idle)
                .await;
        }
        let decision = {
            let router = self.shared.router.load();
            let view = SessionView {
                peer: self.peer,
                user: &self.user.name,
                database: &self.database,
                application_name: self.want.get("application_name").unwrap_or(""),
                listener: self.listener,
                pool_mode: self.user.pool_mode,
                default_read_only: self.default_read_only,
                deferred_begin: self.deferred_begin.is_some(),
                statements: Some(&self.prepared)
                    .filter(|p| p.enabled)
                    .map(|p| p as &dyn crate::router::NamedStatements),
            };
            router.decide(
                &view,
                &self.att.bufs.from_client,
                &mut self.scratch,
                &self.shared.metrics,
            )
        };
        match decision {
            Decision::Route { route, why, kind } => {
                self.shared.metrics.routed(route, why).inc();
                if let Kind::SetDefaultReadOnly(on) = kind {
                    self.default_read_only = on;
                }
                self.may_write = self.deferred_begin.is_some()
                    || !matches!(
                        kind,
                        Kind::Read
                            | Kind::Begin {
                                read_only: true,
                                ..
                            }
                            | Kind::SetTransactionReadOnly
                    );
                Routed::To(route)
            }
            Decision::DeferBegin => {
                self.deferred_begin = Some(self.att.bufs.from_client.split_to(len));
                if self
                    .reply(|out| {
                        protocol::put_command_complete(out, "BEGIN");
                        protocol::put_ready(out, TxStatus::InTransaction);
                    })
                    .await
                {
                    Routed::Answered
                } else {
                    Routed::ClientGone
                }
            }
            Decision::LocalEnd if commit || rollback => {
                self.deferred_begin = None;
                let tag = if rollback { "ROLLBACK" } else { "COMMIT" };
                self.answer(len, None, tag, TxStatus::Idle).await
            }
            Decision::LocalEnd => {
                // COMMIT AND CHAIN, ROLLBACK TO SAVEPOINT...: the server
                // answers, after the deferred BEGIN.
                self.shared
                    .metrics
                    .routed(Route::Primary, Why::Transaction)
                    .inc();
                self.may_write = true;
                Routed::To(Route::Primary)
            }
        }
    }

    /// Answers the `len`-byte Query at the head of the client's buffer with
    /// `notice` (a WARNING), CommandComplete `tag` and ReadyForQuery `status`.
    async fn answer(
        &mut self,
        len: usize,
        notice: Option<(&str, &str)>,
        tag: &str,
        status: TxStatus,
    ) -> Routed {
        let _ = self.att.bufs.from_client.split_to(len);
        let ok = self
            .reply(|out| {
                if let Some((code, message)) = notice {
                    protocol::put_notice(out, code, message);
                }
                protocol::put_command_complete(out, tag);
                protocol::put_ready(out, status);
            })
            .await;
        if ok {
            Routed::Answered
        } else {
            Routed::ClientGone
        }
    }

    async fn refused(&mut self, typ: u8, u: Unavailable) -> Routed {
        if self.refuse(typ, u).await {
            Routed::Answered
        } else {
            Routed::ClientGone
        }
    }
}

/// What `route` did with the request at the head of the client's buffer.
pub(super) enum Routed {
    /// It goes to a server there.
    To(Route),
    /// It was answered here.
    Answered,
    /// Writing the answer failed.
    ClientGone,
}

/// PostgreSQL's WARNING for COMMIT or ROLLBACK outside a transaction.
const NO_TRANSACTION: (&str, &str) = ("25P01", "there is no transaction in progress");
