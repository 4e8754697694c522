//! Holding: a server connection for the next transaction. Picks a member
//! (router), checks a connection out of its pool, and holds the client
//! while no primary is usable or its database is paused, up to
//! `hold_timeout`. Then attaches: a fresh attachment state, the session's
//! parameters restored by a prelude, a deferred BEGIN sent ahead.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::backend::BackendError;
use crate::clients::ClientState;
use crate::config::{ListenerRoute, PoolMode, Route, Why};
use crate::pool::{Pool, PoolError, PooledConn};
use crate::protocol::{self, field, frontend, sqlstate, TxStatus};
use crate::querylog::QueryLog;
use crate::router::Picked;
use crate::topology::Member;

use super::attachment::journal::Journal;
use super::attachment::State;
use super::{Session, KILLED};

/// Why a client of a paused database is held.
const PAUSED: &str = "its database is paused (PAUSE in the admin console)";

/// While held, the topology is re-checked at least this often.
const HOLD_RECHECK: Duration = Duration::from_millis(250);

/// Why `acquire` failed: the error to send.
pub(super) struct Unavailable {
    pub(super) fields: Vec<(u8, String)>,
}

impl Unavailable {
    pub(super) fn new(code: &str, message: String) -> Unavailable {
        Unavailable {
            fields: vec![
                (field::SEVERITY, "ERROR".into()),
                (field::SEVERITY_RAW, "ERROR".into()),
                (field::CODE, code.into()),
                (field::MESSAGE, message),
            ],
        }
    }
}

/// Server errors at connect that mean "not now" (down, starting, stopping,
/// in recovery) rather than "never" (no such database, bad password).
fn transient(fields: &[(u8, String)]) -> bool {
    let code = protocol::error_field(fields, field::CODE).unwrap_or("");
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
}

/// Session pools remembered per session (one per member is typical).
const POOL_CACHE: usize = 8;

impl Session {
    /// The fields of this session's query log lines on the attached server
    /// (only built while `log_queries` is on).
    pub(super) fn query_log(&self) -> Option<Box<QueryLog>> {
        if !self.log_queries {
            return None;
        }
        let pool = self.server.as_ref()?.pool();
        let member = self
            .pools
            .iter()
            .find(|(_, p)| Arc::ptr_eq(p, pool))
            .map_or_else(
                || format!("{}:{}", pool.key.host, pool.key.port),
                |(m, _)| m.name.clone(),
            );
        Some(Box::new(QueryLog {
            peer: self.peer,
            user: self.user.name.clone(),
            database: self.database.clone(),
            route: if self.on_primary {
                "primary"
            } else {
                "replica"
            },
            member,
        }))
    }

    /// A session-mode client's server connection, taken at login so that
    /// the BackendKeyData still owed names its server process (the
    /// client's `backend_pid` is `pg_backend_pid()`, and a notification it
    /// sends carries it, as without pgkeel). Err(why) ends the session:
    /// no server within `hold_timeout` is a refused login, as PostgreSQL
    /// refuses one it cannot serve.
    pub(super) async fn attach_at_login(&mut self) -> Result<(), &'static str> {
        let (route, why) = match self.listener {
            ListenerRoute::Replica => (Route::Replica, Why::Listener),
            ListenerRoute::Primary => (Route::Primary, Why::Listener),
            ListenerRoute::Auto => (Route::Primary, Why::SessionMode),
        };
        self.shared.metrics.routed(route, why).inc();
        match self.acquire(route).await {
            Ok((conn, on_primary)) => {
                let pid = conn.server_key().pid;
                self.shared.cancels.rekey(&mut self.login.cancel, pid);
                self.attach(conn, on_primary, false);
            }
            Err(u) => {
                let mut fields = u.fields;
                for f in fields
                    .iter_mut()
                    .filter(|f| f.0 == field::SEVERITY || f.0 == field::SEVERITY_RAW)
                {
                    f.1 = "FATAL".into();
                }
                let _ = self
                    .reply(|out| protocol::put_error_fields(out, fields))
                    .await;
                return Err("no server connection at login");
            }
        }
        self.login.key_owed = false;
        // The rest of the welcome: written as the login's was, not counted
        // as traffic.
        let mut out = bytes::BytesMut::new();
        protocol::put_backend_key(&mut out, self.login.cancel.pid, self.login.cancel.secret);
        protocol::put_ready(&mut out, TxStatus::Idle);
        tokio::io::AsyncWriteExt::write_all(&mut self.client, &out)
            .await
            .map_err(|_| "client gone")
    }

    /// Makes the attached server's session parameters match the client's:
    /// a `SET` prelude goes ahead of the client's bytes; the relay swallows
    /// its answer.
    pub(super) fn restore_params(&mut self) {
        let state = &mut self.server.as_mut().expect("attached").conn().state;
        let diff = self.want.differing(state);
        let extra = self.want.extra_statement(state);
        if diff.is_empty() && extra.is_empty() {
            return;
        }
        let mut sql = self.want.set_statement(&diff);
        sql.push_str(&extra);
        protocol::put_query(&mut self.att.bufs.to_server, &sql);
        state.set_extra(self.want.extra().clone());
        self.shared.metrics.session_restores_total.inc();
        self.att.st.swallow = 1;
        self.restoring = diff;
    }

    /// A server connection for the next transaction. When no primary is
    /// usable (none known, a switchover draining, the primary refusing
    /// connections), the client is held until one is, up to `hold_timeout`.
    pub(super) async fn acquire(
        &mut self,
        route: Route,
    ) -> Result<(PooledConn, bool), Unavailable> {
        let (wait, drain, hold, max_held) = {
            let c = self.shared.config.load();
            (
                c.proxy.query_wait_timeout.0,
                c.failover.drain_timeout.0,
                c.failover.hold_timeout.0,
                c.failover.max_held_clients as i64,
            )
        };
        let mut held: Option<(Instant, watch::Receiver<u64>)> = None;
        // Before the pause check: PAUSE either holds this client or waits for it.
        self.registered.info.set_state(ClientState::Waiting);
        let mut resumed = None;
        let result = loop {
            let (picked, on_primary) = {
                let topo = self.shared.topology.load();
                let router = self.shared.router.load();
                let min_lsn = self.min_lsn.filter(|_| router.settings().read_your_writes);
                let pools = &self.shared.pools;
                let picked = router.pick(&topo, route, drain, min_lsn, |m| {
                    pools.active_on(&m.host, m.port, &self.database, &self.user.name)
                });
                let on_primary = match &picked {
                    Picked::Member(m) => topo.primary.as_ref().is_some_and(|p| Arc::ptr_eq(p, m)),
                    Picked::Nothing(_) => false,
                };
                (picked, on_primary)
            };
            // A paused database holds its clients the way a failover does.
            let (picked, on_primary) = if self.shared.pause.is_paused(&self.database) {
                (Picked::Nothing(PAUSED), false)
            } else {
                (picked, on_primary)
            };
            let why = match picked {
                Picked::Member(member) => {
                    if on_primary && route == Route::Replica {
                        self.shared.metrics.replica_reads_on_primary_total.inc();
                    }
                    let name = member.name.clone();
                    let pool = self.pool_for(member);
                    self.registered.info.waiting_on(&pool);
                    let asked = std::time::Instant::now();
                    let lent = pool.checkout(wait).await;
                    crate::dbstats::DbCounters::add_time(&self.db.wait_us, asked.elapsed());
                    match lent {
                        Ok(conn) => break Ok((conn, on_primary)),
                        Err(e @ PoolError::Timeout(_)) => {
                            break Err(Unavailable::new(
                                sqlstate::TOO_MANY_CONNECTIONS,
                                format!("{e}; query_wait_timeout is {}s", wait.as_secs()),
                            ))
                        }
                        Err(PoolError::Connect(BackendError::Server(fields)))
                            if !transient(&fields) =>
                        {
                            let mut fields = fields;
                            for f in fields.iter_mut() {
                                if f.0 == field::SEVERITY || f.0 == field::SEVERITY_RAW {
                                    f.1 = "ERROR".into();
                                }
                            }
                            break Err(Unavailable { fields });
                        }
                        Err(e) => format!("{name} does not accept connections: {e}"),
                    }
                }
                Picked::Nothing(why) => why.to_owned(),
            };
            // Hold: wait for the topology to change, a re-check, or a cancel.
            let (since, changed) = match &mut held {
                Some(h) => h,
                None => {
                    let metrics = &self.shared.metrics;
                    metrics.held_clients.inc();
                    if metrics.held_clients.get() > max_held {
                        self.failover_error("held_limit");
                        break Err(Unavailable::new(sqlstate::TOO_MANY_CONNECTIONS, format!("too many clients are waiting for a primary (max_held_clients = {max_held})")));
                    }
                    tracing::debug!(peer = %self.peer, why, "holding client until a primary is available");
                    // Subscribe, then look again at once: no change slips between.
                    held = Some((Instant::now(), self.shared.topology.subscribe()));
                    resumed = Some(self.shared.pause.subscribe());
                    self.registered.info.set_state(ClientState::Held);
                    continue;
                }
            };
            let left = hold.saturating_sub(since.elapsed());
            if left.is_zero() {
                self.failover_error("hold_timeout");
                break Err(Unavailable::new(
                    sqlstate::CANNOT_CONNECT_NOW,
                    format!(
                        "cannot connect now: no server available for {}s ({why})",
                        hold.as_secs()
                    ),
                ));
            }
            let slot = self.login.cancel.slot.clone();
            let cancelled = slot.cancelled();
            let pause = resumed.as_mut().expect("subscribed with held");
            tokio::select! {
                _ = changed.changed() => {}
                _ = pause.changed() => {}
                _ = tokio::time::sleep(left.min(HOLD_RECHECK)) => {}
                _ = cancelled => break Err(Unavailable::new("57014", "canceling statement due to user request".into())),
                _ = self.shutdown.changed() => {
                    break Err(Unavailable::new(sqlstate::ADMIN_SHUTDOWN, "pgkeel is shutting down".into()))
                }
                _ = self.registered.killed() => {
                    break Err(Unavailable::new(sqlstate::ADMIN_SHUTDOWN, KILLED.into()))
                }
            }
        };
        if let Some((since, _)) = held {
            let metrics = &self.shared.metrics;
            metrics.held_clients.dec();
            metrics.hold_seconds.observe(since.elapsed().as_secs_f64());
        }
        result
    }

    pub(super) fn pool_for(&mut self, member: Arc<Member>) -> Arc<Pool> {
        if let Some((_, p)) = self.pools.iter().find(|(m, _)| Arc::ptr_eq(m, &member)) {
            return p.clone();
        }
        let p = self.shared.pool_for(&member, &self.database, &self.user);
        if self.pools.len() >= POOL_CACHE {
            self.pools.remove(0);
        }
        self.pools.push((member, p.clone()));
        p
    }

    /// Starts an attachment on `conn`: a fresh stream state (the buffers
    /// are kept), the session's parameters restored by a prelude, and a
    /// deferred BEGIN sent ahead of the client's request.
    pub(super) fn attach(&mut self, mut conn: PooledConn, on_primary: bool, retry_reads: bool) {
        self.login.cancel.slot.attach(conn.server_key());
        self.registered.info.attached(&mut conn);
        self.server = Some(conn);
        self.on_primary = on_primary;
        let drop_preamble = std::mem::take(&mut self.drop_preamble);
        // Elsewhere than the primary, the next request may be a write:
        // forward one at a time.
        // Transaction mode only: elsewhere session state lives on the
        // server connection, which no replay brings back.
        let journal = match self.replay_limit {
            Some(limit)
                if self.user.pool_mode == PoolMode::Transaction && self.pinned.is_none() =>
            {
                Journal::recording(limit)
            }
            _ => Journal::off(),
        };
        self.att.st = State::attached(retry_reads, drop_preamble, !on_primary, journal);
        let server_pid = self.server.as_ref().expect("attached").server_key().pid;
        self.att.st.own_pid = Some((server_pid, self.login.cancel.pid));
        self.att.st.log = self.query_log();
        self.att.bufs.replay.clear();
        self.att.bufs.held.clear();
        self.prepared.reset_queue();
        self.restore_params();
        if let Some(begin) = self.deferred_begin.take() {
            // The BEGIN the client was already answered for.
            if let Some(log) = &self.att.st.log {
                log.client_message(frontend::QUERY, &begin);
            }
            self.att.bufs.to_server.extend_from_slice(&begin);
            self.att.st.swallow += 1;
            self.att.st.status = TxStatus::InTransaction;
            self.att.st.replayable = false;
            // A replay sends it again, as the client's own.
            self.att.st.journal.begin = Some(begin);
        }
        self.offer_token();
    }
}
