//! A client session: from login to goodbye.
//!
//! Between transactions a transaction-mode session holds no server
//! connection; its first message asks the router for a target and the pool
//! for a connection, then the relay pumps until the server is idle again.
//! Session mode keeps the connection until the client leaves.

pub mod attachment;
mod begin;
mod cleanup;
mod clock;
mod commit_outcome;
mod handoff;
mod hold;
mod idle;
mod negotiate;
pub mod prepared;
mod prepared_view;
mod recovery;
pub mod relay;
mod replay;
mod signal;
pub mod startup;
pub mod timers;

pub use handoff::{resume, Resumed};

use std::net::SocketAddr;
use std::sync::Arc;

use crate::tls::Stream;
use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::clients::{ClientState, Registered};
use crate::config::{ListenerRoute, PinFeature, PoolMode, User};
use crate::pool::{Pool, PooledConn};
use crate::protocol::{self, frontend, sqlstate, Severity};
use crate::shared::Shared;
use crate::topology::Member;
use attachment::{Attachment, Buffers, State, Track};
use begin::Routed;
use prepared::Prepared;
use recovery::Lost;
use relay::Outcome;
use signal::Signal;
use startup::Login;

/// Serves a logged-in client to the end (`startup::handshake` let it in;
/// the listener dispatches between sessions and the admin console).
pub async fn serve(
    shared: Arc<Shared>,
    stream: Stream,
    peer: SocketAddr,
    login: Login,
    listener: ListenerRoute,
) {
    tracing::info!(%peer, user = %login.user.name, database = %login.database, "client connected");
    let mut session = Session::new(shared, stream, peer, login, listener);
    let reason = session.run().await;
    if session.pinned.is_some() {
        session.shared.metrics.pinned_clients.dec();
    }
    tracing::info!(%peer, user = %session.user.name, reason, "client disconnected");
}

struct Session {
    shared: Arc<Shared>,
    client: Stream,
    peer: SocketAddr,
    user: User,
    database: String,
    /// This database's traffic counters (SHOW STATS).
    db: Arc<crate::dbstats::DbCounters>,
    login: Login,
    /// The server attachment's streams (kept between attachments, so
    /// their buffers are reused).
    att: Attachment,
    server: Option<PooledConn>,
    /// Pools this session used lately, by member (the `Arc` stays the same
    /// while a member keeps its address).
    pools: Vec<(Arc<Member>, Arc<Pool>)>,
    /// The listener's route for everything this client sends.
    listener: ListenerRoute,
    /// Reused buffer for routing keys.
    scratch: Vec<u8>,
    /// `default_transaction_read_only` is on (startup or SET).
    default_read_only: bool,
    /// A bare BEGIN already answered, sent ahead of the next statement.
    deferred_begin: Option<BytesMut>,
    /// The deferred transaction failed before reaching a server: statements
    /// get 25P02 until ROLLBACK, as in an aborted transaction.
    deferred_aborted: bool,
    /// Read-your-writes: the primary's WAL position after this client's last write.
    min_lsn: Option<u64>,
    /// The attached server is the primary.
    on_primary: bool,
    /// The attached transaction may write (it was routed as one).
    may_write: bool,
    /// The config version this session last checked its user against.
    config_version: u64,
    /// After an error pgkeel itself returned mid extended-protocol batch,
    /// the client's messages are dropped up to its Sync, as PostgreSQL does.
    skip_until_sync: bool,
    /// The server died while the client sat idle in a transaction (or, in
    /// session mode, between statements); its next statement learns of it.
    lost: Option<Lost>,
    /// Re-runs of the current request after server failures.
    retries: u8,
    /// A transaction being replayed on a new primary after its server died.
    replay: Option<Box<replay::Replay>>,
    /// `[failover] replay_max_size` while `replay_transactions` is on.
    replay_limit: Option<usize>,
    /// Preamble messages the client already got for the request being re-run.
    drop_preamble: u32,
    /// The session parameters this client wants its server to have.
    want: crate::params::Params,
    /// Parameters the last `SET` prelude restored.
    restoring: Vec<&'static str>,
    /// Named prepared statements (transaction mode).
    prepared: Prepared,
    /// A session feature (LISTEN...) tied this transaction-mode client to
    /// its server connection for the rest of its session.
    pinned: Option<PinFeature>,
    /// `[proxy] pin_on` as of the last config this session saw.
    pin_on: Vec<PinFeature>,
    /// `[log] log_queries` as of the last config this session saw.
    log_queries: bool,
    /// The idle and query timeouts as of the last config this session saw.
    timeouts: timers::Timeouts,
    shutdown: watch::Receiver<bool>,
    /// The same, and KILL, as futures made once (waited on every turn).
    on_shutdown: Signal,
    on_kill: Signal,
    /// An upgrade's handover began: an idle session moves to the new process.
    on_handoff: Signal,
    /// The handover (`Handoff::generation`) this session last offered
    /// itself to: not again in the same one.
    handoff_tried: u64,
    /// This client in `Shared::clients` (state for the admin console, KILL).
    registered: Registered,
}

pub(crate) const KILLED: &str =
    "terminating connection due to administrator command (KILL from pgkeel's admin console)";

impl Session {
    fn new(
        shared: Arc<Shared>,
        client: Stream,
        peer: SocketAddr,
        mut login: Login,
        listener: ListenerRoute,
    ) -> Session {
        let bufs = Buffers {
            from_client: std::mem::take(&mut login.pending),
            ..Buffers::default()
        };
        let shutdown = shared.shutdown.clone();
        let shared_handoff = shared.handoff.round();
        let registered = shared.clients.register(crate::clients::ClientSpec {
            peer,
            local: client.local_addr().ok(),
            user: login.user.name.clone(),
            database: login.database.clone(),
            application_name: login
                .params
                .iter()
                .find(|(k, _)| k == "application_name")
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
            listener,
            admin: false,
            cancel: login.cancel.slot.clone(),
        });
        let want = std::mem::take(&mut login.want);
        let prepared = Prepared::new(shared.statements.clone());
        let default_read_only = login.params.iter().any(|(k, v)| {
            k == "default_transaction_read_only"
                && matches!(v.to_ascii_lowercase().as_str(), "on" | "true" | "1" | "yes")
        });
        Session {
            user: login.user.clone(),
            database: login.database.clone(),
            db: shared.db_stats.get(&login.database),
            shared,
            client,
            peer,
            login,
            att: Attachment {
                bufs,
                st: State::default(),
            },
            server: None,
            pools: Vec::new(),
            listener,
            scratch: Vec::new(),
            default_read_only,
            deferred_begin: None,
            deferred_aborted: false,
            min_lsn: None,
            on_primary: true,
            may_write: true,
            config_version: 0,
            skip_until_sync: false,
            lost: None,
            retries: 0,
            replay: None,
            replay_limit: None,
            drop_preamble: 0,
            want,
            restoring: Vec::new(),
            prepared,
            pinned: None,
            pin_on: Vec::new(),
            log_queries: false,
            timeouts: timers::Timeouts::default(),
            on_shutdown: Signal::new(shutdown.clone()),
            on_kill: Signal::new(registered.kill.clone()),
            on_handoff: Signal::new(shared_handoff),
            handoff_tried: 0,
            shutdown,
            registered,
        }
    }

    /// Takes in the settings of the current config that sessions follow.
    fn adopt_config(&mut self) {
        let cfg = self.shared.config.load();
        self.prepared.enabled = cfg.proxy.prepared_statements;
        self.prepared.cap = cfg.proxy.prepared_statements_cache_size as usize;
        self.pin_on.clone_from(&cfg.proxy.pin_on);
        self.log_queries = cfg.log.log_queries;
        self.timeouts = timers::Timeouts::from_config(&cfg.proxy);
        let f = &cfg.failover;
        self.replay_limit = (f.replay_transactions && f.replay_attempts > 0)
            .then_some(f.replay_max_size.0 as usize);
    }

    /// Session state lives on the server connection (session mode, or a
    /// pinned client): it is lost with it.
    fn keeps_server(&self) -> bool {
        self.user.pool_mode == PoolMode::Session || self.pinned.is_some()
    }

    /// Whether the topology shows a failover of the attached member: a
    /// switchover announced, the member down, or (attached to the primary)
    /// another primary or none.
    fn failover_seen(&self) -> bool {
        let Some(key) = self.server.as_ref().map(|s| &s.pool().key) else {
            return false;
        };
        recovery::failover_seen(
            &self.shared.topology.load(),
            &key.host,
            key.port,
            self.on_primary,
        )
    }

    fn first_frame_len(&self) -> usize {
        protocol::header(&self.att.bufs.from_client)
            .and_then(Result::ok)
            .map_or(0, |h| h.1)
    }

    fn failover_error(&self, reason: &str) {
        self.shared
            .metrics
            .failover_errors_total
            .with_label_values(&[reason])
            .inc();
    }

    async fn run(&mut self) -> &'static str {
        let cfg = self.shared.config.load_full();
        let mode = self.user.pool_mode;
        let retry_reads = cfg.failover.retry_reads && mode == PoolMode::Transaction;
        let mut opts = relay::Options {
            release_on_idle: mode == PoolMode::Transaction,
            max_message_size: cfg.proxy.max_message_size.0 as usize,
            role: 0,
            counters: relay::Counters::new(&self.shared.metrics).for_database(self.db.clone()),
            timeouts: timers::Timeouts::default(),
            cancel_key: None,
        };
        self.adopt_config();
        if self.login.key_owed {
            // Boxed: once per session at most, and its state would be part
            // of every idle session's task.
            if let Err(why) = Box::pin(self.attach_at_login()).await {
                return why;
            }
        }
        loop {
            if self.server.is_none() && self.replay.is_some() {
                // Nothing new is read from the client meanwhile: its
                // transaction goes first.
                if let Err(why) = self.resume_replay().await {
                    return why;
                }
            }
            if self.server.is_none() {
                self.registered.info.set_state(ClientState::Idle);
                let idle =
                    timers::detached_wait(self.deferred_begin.is_some() || self.deferred_aborted);
                let idle = self.timeouts.of(idle).map(|d| (idle, d));
                let typ = match self.next_message(opts.max_message_size, idle).await {
                    Ok(Some(t)) => t,
                    Ok(None) => return "client closed the connection",
                    Err(Ended::Killed) => {
                        self.send_fatal(sqlstate::ADMIN_SHUTDOWN, KILLED).await;
                        return "killed from the admin console";
                    }
                    Err(Ended::Shutdown) => {
                        self.send_fatal(
                            sqlstate::ADMIN_SHUTDOWN,
                            "terminating connection because pgkeel is shutting down",
                        )
                        .await;
                        return "shutdown";
                    }
                    Err(Ended::Protocol(m)) => {
                        self.send_fatal(sqlstate::PROTOCOL_VIOLATION, &m).await;
                        return "protocol violation";
                    }
                    Err(Ended::Idle(limit)) => return self.timed_out(limit).await,
                    Err(Ended::Handover) => {
                        if self.hand_over().await {
                            return "handed over to the new pgkeel process";
                        }
                        continue;
                    }
                };
                if self.skip_until_sync
                    || matches!(
                        typ,
                        frontend::TERMINATE
                            | frontend::SYNC
                            | frontend::FLUSH
                            | frontend::COPY_DATA
                            | frontend::COPY_DONE
                            | frontend::COPY_FAIL
                    )
                {
                    // Answered without a server: nothing to run. (Copy
                    // messages outside COPY are ignored, as PostgreSQL does.)
                    let _ = self.att.bufs.from_client.split_to(self.first_frame_len());
                    match typ {
                        frontend::TERMINATE => return "client terminated",
                        frontend::SYNC => {
                            self.skip_until_sync = false;
                            let status = self.idle_status();
                            if !self.reply(|out| protocol::put_ready(out, status)).await {
                                return "client gone";
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                if let Some(reason) = self.removed_by_reload() {
                    self.send_fatal(sqlstate::INVALID_AUTHORIZATION, &reason)
                        .await;
                    return "user removed by a reload";
                }
                if let Some(lost) = self.lost.take() {
                    if !self.report_lost(lost, typ).await {
                        return "client gone";
                    }
                    continue;
                }
                let route = match self.route().await {
                    Routed::To(r) => r,
                    Routed::Answered => continue,
                    Routed::ClientGone => return "client gone",
                };
                match self.acquire(route).await {
                    Ok((mut conn, on_primary)) => {
                        self.check_tokens(&mut conn).await;
                        self.attach(conn, on_primary, retry_reads);
                    }
                    Err(_) if self.registered.is_killed() => {
                        self.send_fatal(sqlstate::ADMIN_SHUTDOWN, KILLED).await;
                        return "killed from the admin console";
                    }
                    Err(u) => {
                        if !self.refuse(typ, u).await {
                            return "client gone";
                        }
                        continue;
                    }
                }
            }

            let server = self.server.as_mut().expect("attached above").conn();
            opts.release_on_idle = mode == PoolMode::Transaction && self.pinned.is_none();
            opts.role = usize::from(!self.on_primary);
            opts.cancel_key = Some(server.key.clone());
            opts.timeouts = self.timeouts;
            let track = (mode == PoolMode::Transaction).then_some(Track {
                prepared: &mut self.prepared,
                conn: &mut server.statements,
                pin_on: &self.pin_on,
            });
            let outcome = tokio::select! {
                o = relay::pump(
                    &mut self.client,
                    &mut server.stream,
                    &mut self.att,
                    &opts,
                    track,
                    &mut self.on_shutdown,
                ) => o,
                // KILL: no waiting for the transaction to end. The server
                // goes back only if it is at rest (after a ROLLBACK).
                _ = &mut self.on_kill => {
                    self.cleanup_server().await;
                    self.send_fatal(sqlstate::ADMIN_SHUTDOWN, KILLED).await;
                    return "killed from the admin console";
                }
            };
            let role = usize::from(!self.on_primary);
            let queries = std::mem::take(&mut self.att.st.queries);
            self.shared.metrics.queries[role].inc_by(queries);
            crate::dbstats::DbCounters::add(&self.db.query_count, queries);
            self.replay_checked();
            if !matches!(outcome, Outcome::ServerLost(_) | Outcome::ServerProtocol(_)) {
                // (A lost attachment's settings: `server_lost` decides.)
                self.note_params();
            }
            self.count_statements();
            match outcome {
                Outcome::Pinned => {
                    let feature = self.att.st.pinned.expect("pinned");
                    self.pinned = Some(feature);
                    let m = &self.shared.metrics;
                    m.pinned_clients.inc();
                    m.client_pins_total
                        .with_label_values(&[feature.name()])
                        .inc();
                    tracing::info!(peer = %self.peer, user = %self.user.name, feature = feature.name(), "client pinned to its server connection (pin_on)");
                }
                Outcome::Released => {
                    self.released(role).await;
                    if *self.shutdown.borrow() {
                        self.send_fatal(
                            sqlstate::ADMIN_SHUTDOWN,
                            "terminating connection because pgkeel is shutting down",
                        )
                        .await;
                        return "shutdown";
                    }
                }
                Outcome::ClientGone => {
                    self.cleanup_server().await;
                    return "client gone";
                }
                Outcome::ClientTerminated => {
                    self.cleanup_server().await;
                    return "client terminated";
                }
                Outcome::ClientProtocol(m) => {
                    self.cleanup_server().await;
                    self.send_fatal(sqlstate::PROTOCOL_VIOLATION, &m).await;
                    return "protocol violation";
                }
                Outcome::ServerLost(e) => {
                    // Read before this session's own suspicion lands: did
                    // the topology already show a failover? (Or is the
                    // server gone, though it said "administrator command"?)
                    let failover = self.failover_seen() || self.server_went_down().await;
                    // Fast suspicion: the member is held out at once and
                    // probed; the publisher decides (never waited for here).
                    if let Some(k) = self.server.as_ref().map(|s| &s.pool().key) {
                        self.shared.topology.suspect(&k.host, k.port);
                    }
                    if let Err(why) = self.server_lost(&e.to_string(), failover).await {
                        return why;
                    }
                }
                Outcome::ServerProtocol(m) => {
                    let failover = self.failover_seen();
                    if let Err(why) = self.server_lost(&m, failover).await {
                        return why;
                    }
                }
                Outcome::ReplayDiverged => {
                    if let Err(why) = self.replay_diverged().await {
                        return why;
                    }
                }
                Outcome::Idle(limit) => return self.timed_out(limit).await,
            }
        }
    }

    /// Ends a client idle past `client_idle_timeout` or
    /// `idle_transaction_timeout`, as PostgreSQL does (FATAL 57P05 or
    /// 25P03). Its server connection goes back only rolled back with proof
    /// (`cleanup_server`), else it is closed.
    async fn timed_out(&mut self, limit: crate::limits::Limit) -> &'static str {
        self.cleanup_server().await;
        self.shared
            .metrics
            .limit_refusals_total
            .with_label_values(&[limit.setting()])
            .inc();
        tracing::info!(peer = %self.peer, user = %self.user.name, timeout = limit.setting(), "closing an idle client");
        let msg = limit.message(&self.user.name, &self.database);
        self.send_fatal(limit.sqlstate(), &msg).await;
        match limit {
            crate::limits::Limit::IdleTransaction => {
                "idle in transaction past idle_transaction_timeout"
            }
            _ => "idle past client_idle_timeout",
        }
    }

    /// Waits until `from_client` holds a whole message; returns its type, or
    /// `None` when the client closed the connection. `idle`: how long the
    /// client may stay silent, and which timeout that is.
    async fn next_message(
        &mut self,
        max: usize,
        idle: Option<(crate::limits::Limit, std::time::Duration)>,
    ) -> Result<Option<u8>, Ended> {
        let deadline = idle.map(|(l, d)| (l, tokio::time::Instant::now() + d));
        loop {
            if let Some(h) = protocol::header(&self.att.bufs.from_client) {
                let (typ, len) =
                    h.map_err(|l| Ended::Protocol(format!("invalid message length {l}")))?;
                if !protocol::is_frontend_type(typ) {
                    return Err(Ended::Protocol(format!(
                        "invalid frontend message type {typ}"
                    )));
                }
                if len > max {
                    return Err(Ended::Protocol(format!(
                        "message of {len} bytes exceeds max_message_size ({max} bytes)"
                    )));
                }
                if self.att.bufs.from_client.len() >= len {
                    return Ok(Some(typ));
                }
                // Room for what arrives, in steps: a declared length is
                // not memory to set aside.
                let missing = len - self.att.bufs.from_client.len();
                attachment::ensure_room(&mut self.att.bufs.from_client, missing.max(8192));
            }
            // Idle with nothing buffered: the buffers go until the client
            // speaks again (`idle`).
            let idle = idle::can_release(&self.att.bufs, &self.client);
            if idle {
                idle::release(&mut self.att.bufs);
            } else if protocol::header(&self.att.bufs.from_client).is_none() {
                self.att.bufs.shrink();
            }
            if *self.shutdown.borrow() {
                return Err(Ended::Shutdown);
            }
            if self.registered.is_killed() {
                return Err(Ended::Killed);
            }
            // Between transactions, nothing read of the next: the moment
            // an upgrade's handover can move this client.
            if self.shared.handoff.is_active() && self.can_move() {
                return Err(Ended::Handover);
            }
            // Woken by the next handover's start, if idle then.
            let could_move = self.could_move();
            tokio::select! {
                r = idle::read(&mut self.client, &mut self.att.bufs, idle) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    // Between transactions the first message of the next one is read here, not in the relay.
                    Ok(n) => {
                        self.shared.metrics.client_bytes_received_total.inc_by(n as u64);
                        crate::dbstats::DbCounters::add(&self.db.received, n as u64);
                    }
                },
                _ = &mut self.on_shutdown => return Err(Ended::Shutdown),
                _ = &mut self.on_kill => return Err(Ended::Killed),
                _ = &mut self.on_handoff, if could_move => return Err(Ended::Handover),
                _ = sleep_until(deadline.map(|(_, at)| at)), if deadline.is_some() => {
                    return Err(Ended::Idle(deadline.expect("checked").0));
                }
            }
        }
    }

    /// After a reload, between transactions: the reason to end the session
    /// if its user was removed from the configuration.
    fn removed_by_reload(&mut self) -> Option<String> {
        let v = self
            .shared
            .config_version
            .load(std::sync::atomic::Ordering::Acquire);
        if v == self.config_version {
            return None;
        }
        self.config_version = v;
        self.adopt_config();
        let cfg = self.shared.config.load();
        cfg.user(&self.user.name).is_none().then(|| {
            format!(
                "terminating connection: user \"{}\" was removed from pgkeel's configuration",
                self.user.name
            )
        })
    }

    /// Writes what `build` puts in a buffer; false when the client is gone.
    async fn reply(&mut self, build: impl FnOnce(&mut BytesMut)) -> bool {
        let mut out = BytesMut::new();
        build(&mut out);
        let ok = self.client.write_all(&out).await.is_ok();
        if ok {
            self.shared
                .metrics
                .client_bytes_sent_total
                .inc_by(out.len() as u64);
            crate::dbstats::DbCounters::add(&self.db.sent, out.len() as u64);
        }
        ok
    }

    async fn send_fatal(&mut self, code: &str, msg: &str) {
        self.shared
            .metrics
            .errors_total
            .with_label_values(&[code])
            .inc();
        let _ = self
            .reply(|out| protocol::put_error(out, Severity::Fatal, code, msg))
            .await;
    }
}

enum Ended {
    Shutdown,
    /// KILL from the admin console.
    Killed,
    Protocol(String),
    /// Silent past a timeout (`client_idle_timeout`, `idle_transaction_timeout`).
    Idle(crate::limits::Limit),
    /// An upgrade's handover is under way and this session can move.
    Handover,
}

/// Sleeps until `at`, or forever.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
