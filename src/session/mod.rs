//! A client session: from login to goodbye.
//!
//! Between transactions a transaction-mode session holds no server
//! connection; its first message asks the router for a target and the pool
//! for a connection, then the relay pumps until the server is idle again.
//! Session mode keeps the connection until the client leaves.

pub mod attachment;
mod clock;
pub mod effects;
pub mod params;
pub mod prepared;
pub mod relay;
pub mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::{self, BackendError};
use crate::classify::Kind;
use crate::clients::{ClientState, Registered};
use crate::config::{ListenerRoute, PinFeature, PoolMode, Route, User};
use crate::pool::{Pool, PoolError, PooledConn};
use crate::protocol::{self, frontend, sqlstate, Severity, TxStatus};
use crate::proxy::Shared;
use crate::querylog::QueryLog;
use crate::router::{Decision, Picked, SessionView};
use crate::topology::Member;
use attachment::{Attachment, Buffers, Copy, State, Track};
use effects::Effects;
use prepared::Prepared;
use relay::Outcome;
use startup::{Handshake, Login};

/// Time allowed for ROLLBACK / reset queries when a client leaves.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted client connection to the end.
pub async fn serve(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    listener: ListenerRoute,
) {
    let _ = stream.set_nodelay(true);
    let cfg = shared.config.load_full();
    let login = tokio::time::timeout(
        cfg.proxy.client_login_timeout.0,
        startup::handshake(&shared, &cfg, &mut stream),
    )
    .await;
    let login = match login {
        Ok(Ok(Handshake::Login(l))) => l,
        Ok(Ok(Handshake::Admin(a))) => {
            tracing::info!(%peer, user = %a.user.name, "admin console connected");
            crate::console::serve(shared, stream, peer, listener, *a).await;
            tracing::info!(%peer, "admin console disconnected");
            return;
        }
        Ok(Ok(Handshake::Done)) => return,
        Ok(Err(refusal)) => {
            shared
                .metrics
                .client_login_failures_total
                .with_label_values(&[refusal.sqlstate()])
                .inc();
            tracing::info!(%peer, sqlstate = refusal.sqlstate(), reason = refusal.message(), "login refused");
            let _ = stream.write_all(&refusal.encode()).await;
            return;
        }
        Err(_) => {
            shared
                .metrics
                .client_login_failures_total
                .with_label_values(&[sqlstate::PROTOCOL_VIOLATION])
                .inc();
            tracing::info!(%peer, "login timed out (client_login_timeout)");
            let mut out = BytesMut::new();
            protocol::put_error(
                &mut out,
                Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                "canceling authentication due to timeout (client_login_timeout)",
            );
            let _ = stream.write_all(&out).await;
            return;
        }
    };
    tracing::info!(%peer, user = %login.user.name, database = %login.database, "client connected");
    let mut session = Session::new(shared, stream, peer, *login, listener);
    let reason = session.run().await;
    if session.pinned.is_some() {
        session.shared.metrics.pinned_clients.dec();
    }
    tracing::info!(%peer, user = %session.user.name, reason, "client disconnected");
}

struct Session {
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    user: User,
    database: String,
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
    /// Preamble messages the client already got for the request being re-run.
    drop_preamble: u32,
    /// The session parameters this client wants its server to have.
    want: params::Params,
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
    shutdown: watch::Receiver<bool>,
    /// This client in `Shared::clients` (state for the admin console, KILL).
    registered: Registered,
}

#[derive(Debug, Clone, Copy)]
enum Lost {
    Transaction,
    SessionState,
}

/// The primary's WAL write position as a byte offset.
const CURRENT_LSN: &str = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8";

/// A request is re-run on a new server at most this often.
const MAX_RETRIES: u8 = 3;

/// Why a client of a paused database is held.
const PAUSED: &str = "its database is paused (PAUSE in the admin console)";

/// While held, the topology is re-checked at least this often.
const HOLD_RECHECK: Duration = Duration::from_millis(250);

const KILLED: &str =
    "terminating connection due to administrator command (KILL from pgkeel's admin console)";

const SESSION_STATE_LOST: &str = "session state on the server (SET parameters, temporary tables, prepared statements, advisory locks) was lost";

/// Why `acquire` failed: the error to send.
struct Unavailable {
    fields: Vec<(u8, String)>,
}

impl Unavailable {
    fn new(code: &str, message: String) -> Unavailable {
        Unavailable {
            fields: vec![
                (b'S', "ERROR".into()),
                (b'V', "ERROR".into()),
                (b'C', code.into()),
                (b'M', message),
            ],
        }
    }
}

/// Server errors at connect that mean "not now" (down, starting, stopping,
/// in recovery) rather than "never" (no such database, bad password).
fn transient(fields: &[(u8, String)]) -> bool {
    let code = protocol::error_field(fields, b'C').unwrap_or("");
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "25006")
}

/// Session pools remembered per session (one per member is typical).
const POOL_CACHE: usize = 8;

/// The first statement of a simple Query, if it is COMMIT or END.
fn is_commit(frame: &[u8]) -> bool {
    let body = frame.get(protocol::HEADER_LEN..).unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    let t = text.trim_matches(|c: char| c.is_whitespace() || c == ';' || c == '\0');
    t.eq_ignore_ascii_case("commit") || t.eq_ignore_ascii_case("end")
}

/// The first statement of a simple Query, if it is ROLLBACK or ABORT.
fn is_rollback(frame: &[u8]) -> bool {
    let body = frame.get(protocol::HEADER_LEN..).unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    let t = text.trim_matches(|c: char| c.is_whitespace() || c == ';' || c == '\0');
    t.eq_ignore_ascii_case("rollback") || t.eq_ignore_ascii_case("abort")
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        client: TcpStream,
        peer: SocketAddr,
        mut login: Login,
        listener: ListenerRoute,
    ) -> Session {
        let bufs = Buffers {
            from_client: std::mem::take(&mut login.pending),
            ..Buffers::default()
        };
        let shutdown = shared.shutdown.clone();
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
            drop_preamble: 0,
            want,
            restoring: Vec::new(),
            prepared,
            pinned: None,
            pin_on: Vec::new(),
            log_queries: false,
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
    }

    /// The fields of this session's query log lines on the attached server
    /// (only built while `log_queries` is on).
    fn query_log(&self) -> Option<Box<QueryLog>> {
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

    /// Session state lives on the server connection (session mode, or a
    /// pinned client): it is lost with it.
    fn keeps_server(&self) -> bool {
        self.user.pool_mode == PoolMode::Session || self.pinned.is_some()
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
            counters: relay::Counters::new(&self.shared.metrics),
        };
        self.adopt_config();
        loop {
            if self.server.is_none() {
                self.registered.info.set_state(ClientState::Idle);
                let typ = match self.next_message(opts.max_message_size).await {
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
                    Some(r) => r,
                    None => continue,
                };
                let route = match route {
                    Ok(r) => r,
                    Err(()) => return "client gone",
                };
                match self.acquire(route).await {
                    Ok((mut conn, on_primary)) => {
                        self.login.cancel.slot.attach(conn.server_key());
                        self.registered.info.attached(&mut conn);
                        self.server = Some(conn);
                        self.on_primary = on_primary;
                        let drop_preamble = std::mem::take(&mut self.drop_preamble);
                        // Elsewhere than the primary, the next request may be
                        // a write: forward one at a time.
                        self.att.st = State::attached(retry_reads, drop_preamble, !on_primary);
                        self.att.st.log = self.query_log();
                        self.att.bufs.replay.clear();
                        self.prepared.reset_queue();
                        self.restore_params();
                        if let Some(begin) = self.deferred_begin.take() {
                            // The BEGIN the client was already answered for.
                            if let Some(log) = &self.att.st.log {
                                log.client_message(b'Q', &begin);
                            }
                            self.att.bufs.to_server.extend_from_slice(&begin);
                            self.att.st.swallow += 1;
                            self.att.st.status = TxStatus::InTransaction;
                            self.att.st.replayable = false;
                        }
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
                    &mut self.shutdown,
                ) => o,
                // KILL: no waiting for the transaction to end. The server
                // goes back only if it is at rest (after a ROLLBACK).
                _ = self.registered.killed() => {
                    self.cleanup_server().await;
                    self.send_fatal(sqlstate::ADMIN_SHUTDOWN, KILLED).await;
                    return "killed from the admin console";
                }
            };
            let role = usize::from(!self.on_primary);
            self.shared.metrics.queries[role].inc_by(std::mem::take(&mut self.att.st.queries));
            self.note_params();
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
                    self.login.cancel.slot.detach();
                    let mut server = self.server.take().expect("attached");
                    self.retries = 0;
                    self.shared.metrics.transactions[role].inc();
                    self.shared.metrics.transaction_seconds[role]
                        .observe(server.lent_for().as_secs_f64());
                    // Not released when a follow-up query fails: the
                    // connection's state is unknown.
                    let mut clean = true;
                    if self.att.st.effects.contains(Effects::SETTINGS) {
                        clean = self.read_settings(server.conn()).await;
                    }
                    if clean
                        && self.on_primary
                        && self.may_write
                        && self.shared.router.load().settings().read_your_writes
                    {
                        // Read-your-writes: where the primary's WAL is now,
                        // after this client's commit.
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
                        server.release();
                    }
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
                    if !self.server_lost(&e.to_string()).await {
                        return "server lost mid-message";
                    }
                }
                Outcome::ServerProtocol(m) => {
                    if !self.server_lost(&m).await {
                        return "server protocol error mid-message";
                    }
                }
            }
        }
    }

    /// Makes the attached server's session parameters match the client's:
    /// a `SET` prelude goes ahead of the client's bytes; the relay swallows
    /// its answer.
    fn restore_params(&mut self) {
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

    /// After a transaction that changed settings (SET, RESET, set_config,
    /// DISCARD ALL): reads what the session has set now, which the client
    /// wants from every server from now on. False if that failed.
    async fn read_settings(&mut self, conn: &mut backend::ServerConn) -> bool {
        match conn
            .query_value(params::SESSION_SETTINGS, CLEANUP_TIMEOUT)
            .await
        {
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
    fn count_statements(&mut self) {
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
    fn note_params(&mut self) {
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

    /// Answers the client's statement with the error `u` (no server could
    /// be had), keeping the session in step. False when the client is gone.
    async fn refuse(&mut self, typ: u8, u: Unavailable) -> bool {
        let code = protocol::error_field(&u.fields, b'C')
            .unwrap_or("XX000")
            .to_owned();
        self.shared
            .metrics
            .errors_total
            .with_label_values(&[&code])
            .inc();
        tracing::warn!(peer = %self.peer, sqlstate = %code, reason = protocol::error_field(&u.fields, b'M').unwrap_or(""), "no server connection for client");
        let simple = matches!(typ, b'Q' | b'F');
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

    /// Tells the client, at its next statement, that its transaction (or
    /// session state) died with its server. A ROLLBACK is simply granted.
    async fn report_lost(&mut self, lost: Lost, typ: u8) -> bool {
        if typ == b'Q' && is_rollback(&self.att.bufs.from_client[..self.first_frame_len()]) {
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
                "40001",
                "the transaction was rolled back: its server failed over while it was open; retry the transaction".to_owned(),
            ),
            Lost::SessionState => (
                "session_state_lost",
                sqlstate::CONNECTION_FAILURE,
                format!("the server connection was lost (failover): {SESSION_STATE_LOST}; this statement did not run"),
            ),
        };
        self.failover_error(reason);
        self.refuse(typ, Unavailable::new(code, msg)).await
    }

    /// Waits until `from_client` holds a whole message; returns its type, or
    /// `None` when the client closed the connection.
    async fn next_message(&mut self, max: usize) -> Result<Option<u8>, Ended> {
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
                self.att
                    .bufs
                    .from_client
                    .reserve(len - self.att.bufs.from_client.len());
            } else if self.att.bufs.from_client.capacity() - self.att.bufs.from_client.len() < 1024
            {
                self.att.bufs.from_client.reserve(8192);
            }
            if *self.shutdown.borrow() {
                return Err(Ended::Shutdown);
            }
            if self.registered.is_killed() {
                return Err(Ended::Killed);
            }
            tokio::select! {
                r = self.client.read_buf(&mut self.att.bufs.from_client) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    // Between transactions the first message of the next one is read here, not in the relay.
                    Ok(n) => self.shared.metrics.client_bytes_received_total.inc_by(n as u64),
                },
                _ = self.shutdown.changed() => return Err(Ended::Shutdown),
                _ = self.registered.kill.changed() => return Err(Ended::Killed),
            }
        }
    }

    /// A server connection for the next transaction. When no primary is
    /// usable (none known, a switchover draining, the primary refusing
    /// connections), the client is held until one is, up to `hold_timeout`.
    async fn acquire(&mut self, route: Route) -> Result<(PooledConn, bool), Unavailable> {
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
                    match pool.checkout(wait).await {
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
                                if f.0 == b'S' || f.0 == b'V' {
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

    fn pool_for(&mut self, member: Arc<Member>) -> Arc<Pool> {
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

    /// ReadyForQuery status while no server is attached.
    fn idle_status(&self) -> TxStatus {
        match (&self.deferred_begin, self.deferred_aborted) {
            (Some(_), true) => TxStatus::Failed,
            (Some(_), false) => TxStatus::InTransaction,
            (None, _) => TxStatus::Idle,
        }
    }

    /// Routes the request at the head of the client's buffer. `None`: it was
    /// answered here (a deferred BEGIN, its COMMIT, or an aborted deferred
    /// transaction); `Some(Err)`: the client is gone.
    async fn route(&mut self) -> Option<Result<Route, ()>> {
        let simple = self.att.bufs.from_client.first() == Some(&b'Q');
        if self.deferred_aborted {
            let len = self.first_frame_len();
            let frame = &self.att.bufs.from_client[..len];
            if simple && (is_rollback(frame) || is_commit(frame)) {
                let _ = self.att.bufs.from_client.split_to(len);
                self.deferred_begin = None;
                self.deferred_aborted = false;
                let ok = self
                    .reply(|out| {
                        protocol::put_command_complete(out, "ROLLBACK");
                        protocol::put_ready(out, TxStatus::Idle);
                    })
                    .await;
                return if ok { None } else { Some(Err(())) };
            }
            let typ = self.att.bufs.from_client[0];
            let u = Unavailable::new(
                "25P02",
                "current transaction is aborted, commands ignored until end of transaction block"
                    .into(),
            );
            return if self.refuse(typ, u).await {
                None
            } else {
                Some(Err(()))
            };
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
                statements: Some(&self.prepared).filter(|p| p.enabled),
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
                Some(Ok(route))
            }
            Decision::DeferBegin => {
                let len = self.first_frame_len();
                self.deferred_begin = Some(self.att.bufs.from_client.split_to(len));
                let ok = self
                    .reply(|out| {
                        protocol::put_command_complete(out, "BEGIN");
                        protocol::put_ready(out, TxStatus::InTransaction);
                    })
                    .await;
                if ok {
                    None
                } else {
                    Some(Err(()))
                }
            }
            Decision::LocalEnd => {
                let len = self.first_frame_len();
                let frame = self.att.bufs.from_client.split_to(len);
                let tag = if is_rollback(&frame) {
                    "ROLLBACK"
                } else {
                    "COMMIT"
                };
                self.deferred_begin = None;
                let ok = self
                    .reply(|out| {
                        protocol::put_command_complete(out, tag);
                        protocol::put_ready(out, TxStatus::Idle);
                    })
                    .await;
                if ok {
                    None
                } else {
                    Some(Err(()))
                }
            }
        }
    }

    /// The attached server failed. A read-only request nothing was answered
    /// for goes again to another server; otherwise the client is told (now
    /// if it waits for an answer, else at its next statement) and the
    /// session goes on. False when the client had already seen part of a
    /// message, so its connection cannot continue.
    async fn server_lost(&mut self, why: &str) -> bool {
        let server = self.server.take().expect("attached");
        self.login.cancel.slot.detach();
        tracing::warn!(peer = %self.peer, server = %server.pool().key.host, port = server.pool().key.port, error = why, "server connection lost");
        drop(server);
        if self.att.st.server_skip > 0 {
            // Mid-message (a row over WHOLE_MESSAGE_LIMIT): the client's
            // stream cannot be put back in step.
            self.failover_error("mid_message");
            return false;
        }
        let st = std::mem::take(&mut self.att.st);
        self.att.bufs.to_server.clear();
        self.att.bufs.from_server.clear();
        if st.replayable
            && !st.responded
            && !self.att.bufs.replay.is_empty()
            && self.retries < MAX_RETRIES
            && attachment::replay_reads_only(
                &self.att.bufs.replay,
                Some(&self.prepared).filter(|p| p.enabled),
            )
        {
            // Nothing reached the client and the request only reads: put it
            // back in front of whatever the client sent since, and run it
            // again wherever acquire() finds a primary.
            self.retries += 1;
            self.drop_preamble = st.preamble + st.drop_preamble;
            self.shared.metrics.retried_statements_total.inc();
            tracing::info!(peer = %self.peer, "re-running a read-only statement on another server");
            let mut again = std::mem::take(&mut self.att.bufs.replay);
            again.extend_from_slice(&self.att.bufs.from_client);
            self.att.bufs.from_client = again;
            return true;
        }
        self.att.bufs.replay.clear();
        let session_mode = self.keeps_server();
        if self.pinned.take().is_some() {
            // What pinned it died with the connection.
            self.shared.metrics.pinned_clients.dec();
        }
        if st.pending == 0 && !st.unsynced && st.copy == Copy::None {
            // Nobody waits for an answer: tell the client at its next statement.
            if st.status != TxStatus::Idle {
                self.lost = Some(Lost::Transaction);
            } else if session_mode {
                self.lost = Some(Lost::SessionState);
            }
            return true;
        }
        self.failover_error("in_flight");
        self.shared
            .metrics
            .errors_total
            .with_label_values(&[sqlstate::CONNECTION_FAILURE])
            .inc();
        let (code, mut msg) = if st.status != TxStatus::Idle && !st.commit_in_flight {
            (
                "40001",
                "the transaction was rolled back: its server failed over; retry the transaction"
                    .to_owned(),
            )
        } else if st.commit_in_flight {
            (sqlstate::CONNECTION_FAILURE, "the server failed over while committing: the outcome of the transaction is unknown".to_owned())
        } else {
            (
                sqlstate::CONNECTION_FAILURE,
                "the server failed over while running this statement: its outcome is unknown"
                    .to_owned(),
            )
        };
        if session_mode {
            msg = format!("{msg}; {SESSION_STATE_LOST}");
        }
        let owed = st.pending;
        if st.unsynced {
            self.skip_until_sync = true;
        }
        self.reply(|out| {
            protocol::put_error(out, Severity::Error, code, &msg);
            for _ in 0..owed {
                protocol::put_ready(out, TxStatus::Idle);
            }
        })
        .await
    }

    /// The client left while holding a server connection: give the
    /// connection back clean, or close it.
    async fn cleanup_server(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        self.login.cancel.slot.detach();
        let clean = self.att.st.at_rest()
            && self.att.bufs.to_server.is_empty()
            && self.att.bufs.from_server.is_empty();
        if !clean {
            // Mid-query: stop the work on the server, then drop the connection.
            let key = server.conn().key.clone();
            tokio::spawn(async move {
                let _ = backend::send_cancel(&key).await;
            });
            return;
        }
        let cfg = self.shared.config.load_full();
        let conn = server.conn();
        if self.att.st.status != TxStatus::Idle
            && conn.run_simple("ROLLBACK", CLEANUP_TIMEOUT).await != Ok(TxStatus::Idle.to_byte())
        {
            return;
        }
        if self.keeps_server() && !cfg.proxy.server_reset_query.is_empty() {
            if conn
                .run_simple(&cfg.proxy.server_reset_query, CLEANUP_TIMEOUT)
                .await
                != Ok(TxStatus::Idle.to_byte())
            {
                return;
            }
            // DISCARD ALL (the usual reset) drops statements and settings.
            conn.statements.clear();
            conn.state.set_extra(Vec::new());
        }
        server.release();
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
}
