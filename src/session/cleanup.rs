//! Giving a server connection back: after a transaction (settings read
//! back, read-your-writes position), and when a client leaves holding one
//! (rolled back and reset, or closed). A connection goes back to the pool
//! only when the attachment core proves it clean and nothing the client
//! did to the session is left on it.

use std::time::Duration;

use crate::backend;
use crate::protocol::TxStatus;

use super::attachment::{NotYet, Release};
use super::Session;
use crate::classify::effects::Effects;
use crate::params;

/// Time allowed for ROLLBACK / reset queries when a client leaves.
pub(super) const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The primary's WAL write position as a byte offset.
const CURRENT_LSN: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8";

impl Session {
    /// After a transaction that changed settings (SET, RESET, set_config,
    /// DISCARD ALL): reads what the session has set now, which the client
    /// wants from every server from now on. False if that failed.
    pub(super) async fn read_settings(&mut self, conn: &mut backend::ServerConn) -> bool {
        let sql = self.want.settings_query();
        match conn.query_value(&sql, CLEANUP_TIMEOUT).await {
            Ok(Some(v)) => {
                let extra = params::parse_session_settings(&v);
                self.want.set_extra(extra.clone());
                conn.state.set_extra(extra);
                true
            }
            _ => false,
        }
    }

    /// Moves the prepared-statement counters of the last pump to metrics.
    pub(super) fn count_statements(&mut self) {
        let c = std::mem::take(&mut self.prepared.counters);
        let m = &self.shared.metrics;
        if c.prepares > 0 {
            m.prepared_statements_prepared_total.inc_by(c.prepares);
        }
        if c.hits > 0 {
            m.prepared_statements_hits_total.inc_by(c.hits);
        }
        if c.evictions > 0 {
            m.prepared_statements_evictions_total.inc_by(c.evictions);
        }
    }

    /// Takes in the ParameterStatus messages of the last pump: the server
    /// now has those values, and (set by the client, or restored for it) the
    /// client wants them.
    pub(super) fn note_params(&mut self) {
        let reported = std::mem::take(&mut self.att.st.reported);
        let restoring = std::mem::take(&mut self.restoring);
        let server = self.server.as_mut().map(|s| &mut s.conn().state);
        let Some(state) = server else {
            for (k, v) in &reported {
                self.want.set(k, v);
            }
            return;
        };
        for (k, v) in &reported {
            state.set(k, v);
            self.want.set(k, v);
        }
        // A restored value the server did not report was already equal in
        // its own spelling: adopt that spelling, so the next attach agrees.
        for n in restoring {
            if !reported.iter().any(|(k, _)| k.eq_ignore_ascii_case(n)) {
                if let Some(v) = state.get(n).map(str::to_owned) {
                    self.want.set(n, &v);
                }
            }
        }
    }

    /// The client left while holding a server connection: give the
    /// connection back only when the attachment core proves it at rest and
    /// nothing the client did to the session stays on it (rolled back, then
    /// `server_reset_query` if it left any session effect); else close it.
    pub(super) async fn cleanup_server(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.login.cancel.slot.detach();
        // The client is gone: what it was still owed goes nowhere.
        self.att.bufs.to_client.clear();
        let at_rest = matches!(
            self.att.release(None),
            Release::Clean | Release::Pinned(_) | Release::NotYet(NotYet::InTransaction(_))
        ) && self.prepared.settled();
        if !at_rest {
            // Mid-query: stop the work on the server, then drop the connection.
            let key = server.conn().key.clone();
            tokio::spawn(async move {
                let _ = backend::send_cancel(&key).await;
            });
            return;
        }
        let idle = Ok(TxStatus::Idle.to_byte());
        let conn = server.conn();
        if self.att.st.status != TxStatus::Idle
            && conn.run_simple("ROLLBACK", CLEANUP_TIMEOUT).await != idle
        {
            return;
        }
        if self.left_session_state() {
            let reset = self.shared.config.load().proxy.server_reset_query.clone();
            if reset.is_empty() || conn.run_simple(&reset, CLEANUP_TIMEOUT).await != idle {
                // Nothing can take the client's state off: close.
                return;
            }
            // DISCARD ALL (the usual reset) drops statements and settings;
            // what the connection has set is unknown now, so the next
            // client's prelude sets everything it wants.
            conn.statements.clear();
            conn.state = params::Params::default();
        }
        server.release();
    }

    /// The attached server may carry state of this client's beyond its
    /// transaction: session mode, a pinned client, or any session effect
    /// (SET, temporary tables, advisory locks, LISTEN, WITH HOLD cursors,
    /// DISCARD/DEALLOCATE) seen since attach.
    fn left_session_state(&self) -> bool {
        self.keeps_server() || self.att.st.pinned.is_some() || !self.att.st.effects.is_empty()
    }

    /// The pump released the connection after a transaction: reads back
    /// the settings it changed and, for read-your-writes, the primary's WAL
    /// position, then returns it to the pool (or closes it if either fails:
    /// its state is unknown).
    pub(super) async fn released(&mut self, role: usize) {
        self.login.cancel.slot.detach();
        let mut server = self.server.take().expect("attached");
        self.retries = 0;
        self.shared.metrics.transactions[role].inc();
        let took = server.lent_for();
        self.shared.metrics.transaction_seconds[role].observe(took.as_secs_f64());
        crate::dbstats::DbCounters::add(&self.db.xact_count, 1);
        crate::dbstats::DbCounters::add_time(&self.db.xact_us, took);
        let mut clean = true;
        self.want
            .remember_hidden(std::mem::take(&mut self.att.st.hidden_settings));
        if self.att.st.effects.contains(Effects::SETTINGS) {
            clean = self.read_settings(server.conn()).await;
        }
        if self.att.st.effects.contains(Effects::UNTRACKED_STATE) {
            // State nobody can restore or undo by name: closed, never lent
            // to anyone else (classify/effects.rs says why). What
            // `pg_settings` shows of it (a `set_config` whose name is a
            // parameter) was read back above and follows the client.
            clean = false;
        }
        if clean
            && self.on_primary
            && self.may_write
            && self.shared.router.load().settings().read_your_writes
        {
            // Read-your-writes: where the primary's WAL is now, after this
            // client's commit.
            match server
                .conn()
                .query_value(CURRENT_LSN, CLEANUP_TIMEOUT)
                .await
            {
                Ok(Some(v)) => self.min_lsn = v.parse().ok(),
                _ => {
                    self.min_lsn = Some(u64::MAX);
                    clean = false;
                }
            }
        }
        if clean {
            clean = self.tokens_after(&mut server).await;
        }
        if clean {
            server.release();
        }
    }
}
