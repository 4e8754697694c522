//! A client session: from login to goodbye.
//!
//! Between transactions a transaction-mode session holds no server
//! connection; its first message asks the router for a target and the pool
//! for a connection, then the relay pumps until the server is idle again.
//! Session mode keeps the connection until the client leaves.

pub mod relay;
pub mod startup;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::{self, BackendError};
use crate::config::{PoolMode, User};
use crate::pool::{Pool, PoolError, PooledConn};
use crate::protocol::{self, sqlstate, Severity};
use crate::proxy::Shared;
use crate::router;
use crate::topology::Member;
use relay::{Buffers, Outcome, TxState};
use startup::{Handshake, Login};

/// Time allowed for ROLLBACK / reset queries when a client leaves.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves one accepted client connection to the end.
pub async fn serve(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let cfg = shared.config.load_full();
    let login = tokio::time::timeout(
        cfg.proxy.client_login_timeout.0,
        startup::handshake(&shared, &cfg, &mut stream),
    )
    .await;
    let login = match login {
        Ok(Ok(Handshake::Login(l))) => l,
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
    let mut session = Session::new(shared, stream, peer, *login);
    let reason = session.run().await;
    tracing::info!(%peer, user = %session.user.name, reason, "client disconnected");
}

struct Session {
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    user: User,
    database: String,
    login: Login,
    bufs: Buffers,
    st: TxState,
    server: Option<PooledConn>,
    /// The pool last used, valid while the primary stays the same member.
    pool: Option<(Arc<Member>, Arc<Pool>)>,
    /// After an error pgkeel itself returned mid extended-protocol batch,
    /// the client's messages are dropped up to its Sync, as PostgreSQL does.
    skip_until_sync: bool,
    shutdown: watch::Receiver<bool>,
}

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

impl Session {
    fn new(shared: Arc<Shared>, client: TcpStream, peer: SocketAddr, mut login: Login) -> Session {
        let bufs = Buffers {
            from_client: std::mem::take(&mut login.pending),
            ..Buffers::default()
        };
        let shutdown = shared.shutdown.clone();
        Session {
            user: login.user.clone(),
            database: login.database.clone(),
            shared,
            client,
            peer,
            login,
            bufs,
            st: TxState::default(),
            server: None,
            pool: None,
            skip_until_sync: false,
            shutdown,
        }
    }

    async fn run(&mut self) -> &'static str {
        let cfg = self.shared.config.load_full();
        let mode = self.user.pool_mode;
        let opts = relay::Options {
            release_on_idle: mode == PoolMode::Transaction,
            max_message_size: cfg.proxy.max_message_size.0 as usize,
        };
        loop {
            if self.server.is_none() {
                let typ = match self.next_message(opts.max_message_size).await {
                    Ok(Some(t)) => t,
                    Ok(None) => return "client closed the connection",
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
                if self.skip_until_sync || matches!(typ, b'X' | b'S' | b'H') {
                    // Answered without a server: nothing to run.
                    let len = protocol::header(&self.bufs.from_client)
                        .and_then(Result::ok)
                        .map_or(0, |h| h.1);
                    let _ = self.bufs.from_client.split_to(len);
                    match typ {
                        b'X' => return "client terminated",
                        b'S' => {
                            self.skip_until_sync = false;
                            if !self.reply(|out| protocol::put_ready(out, b'I')).await {
                                return "client gone";
                            }
                        }
                        _ => {}
                    }
                    continue;
                }
                match self.acquire().await {
                    Ok(conn) => {
                        self.login.cancel.slot.attach(conn.server_key());
                        self.server = Some(conn);
                        self.st = TxState::default();
                    }
                    Err(u) => {
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
                            let len = protocol::header(&self.bufs.from_client)
                                .and_then(Result::ok)
                                .map_or(0, |h| h.1);
                            let _ = self.bufs.from_client.split_to(len);
                        } else {
                            self.skip_until_sync = true;
                        }
                        let ok = self
                            .reply(|out| {
                                protocol::put_error_fields(out, u.fields);
                                if simple {
                                    protocol::put_ready(out, b'I');
                                }
                            })
                            .await;
                        if !ok {
                            return "client gone";
                        }
                        continue;
                    }
                }
            }

            let server = self.server.as_mut().expect("attached above");
            let outcome = relay::pump(
                &mut self.client,
                &mut server.conn().stream,
                &mut self.bufs,
                &mut self.st,
                &opts,
                &mut self.shutdown,
            )
            .await;
            self.shared
                .metrics
                .queries_total
                .inc_by(std::mem::take(&mut self.st.queries));
            match outcome {
                Outcome::Released => {
                    self.login.cancel.slot.detach();
                    self.server.take().expect("attached").release();
                    self.shared.metrics.transactions_total.inc();
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

    /// Waits until `from_client` holds a whole message; returns its type, or
    /// `None` when the client closed the connection.
    async fn next_message(&mut self, max: usize) -> Result<Option<u8>, Ended> {
        loop {
            if let Some(h) = protocol::header(&self.bufs.from_client) {
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
                if self.bufs.from_client.len() >= len {
                    return Ok(Some(typ));
                }
                self.bufs
                    .from_client
                    .reserve(len - self.bufs.from_client.len());
            } else if self.bufs.from_client.capacity() - self.bufs.from_client.len() < 1024 {
                self.bufs.from_client.reserve(8192);
            }
            if *self.shutdown.borrow() {
                return Err(Ended::Shutdown);
            }
            tokio::select! {
                r = self.client.read_buf(&mut self.bufs.from_client) => match r {
                    Ok(0) | Err(_) => return Ok(None),
                    Ok(_) => {}
                },
                _ = self.shutdown.changed() => return Err(Ended::Shutdown),
            }
        }
    }

    /// A server connection for the next transaction.
    async fn acquire(&mut self) -> Result<PooledConn, Unavailable> {
        let wait = self.shared.config.load().proxy.query_wait_timeout.0;
        let target = router::route();
        let member = {
            let topo = self.shared.topology.load();
            router::pick(&topo, target)
        };
        let member = match member {
            Some(m) => m,
            None => self
                .shared
                .topology
                .wait_for_primary(wait)
                .await
                .ok_or_else(|| {
                    Unavailable::new(
                        sqlstate::CANNOT_CONNECT_NOW,
                        format!(
                            "cannot connect now: no primary server available for {}s",
                            wait.as_secs()
                        ),
                    )
                })?,
        };
        let pool = match &self.pool {
            Some((m, p)) if Arc::ptr_eq(m, &member) => p.clone(),
            _ => {
                let p = self.shared.pool_for(&member, &self.database, &self.user);
                self.pool = Some((member, p.clone()));
                p
            }
        };
        pool.checkout(wait).await.map_err(|e| match e {
            PoolError::Timeout(_) => Unavailable::new(
                sqlstate::TOO_MANY_CONNECTIONS,
                format!("{e}; query_wait_timeout is {}s", wait.as_secs()),
            ),
            PoolError::Connect(BackendError::Server(mut fields)) => {
                for f in fields.iter_mut() {
                    if f.0 == b'S' || f.0 == b'V' {
                        f.1 = "ERROR".into();
                    }
                }
                Unavailable { fields }
            }
            PoolError::Connect(e) => Unavailable::new(sqlstate::CONNECTION_FAILURE, e.to_string()),
        })
    }

    /// The attached server failed. Tells the client, if its protocol stream
    /// allows, and keeps the session. Returns false when the client had
    /// already seen part of a message, so its connection cannot continue.
    async fn server_lost(&mut self, why: &str) -> bool {
        let server = self.server.take().expect("attached");
        self.login.cancel.slot.detach();
        tracing::warn!(peer = %self.peer, server = %server.pool().key.host, port = server.pool().key.port, error = why, "server connection lost");
        drop(server);
        if self.st.server_skip > 0 {
            // Mid-message: no way to put the client's stream back in step.
            return false;
        }
        self.bufs.to_server.clear();
        self.bufs.from_server.clear();
        let st = std::mem::take(&mut self.st);
        if st.pending == 0 && !st.unsynced && st.status == b'I' {
            return true;
        }
        self.shared
            .metrics
            .errors_total
            .with_label_values(&[sqlstate::CONNECTION_FAILURE])
            .inc();
        let msg = if st.status == b'I' {
            "server connection lost while running the statement; its outcome is unknown"
        } else {
            "server connection lost; the transaction was rolled back (a COMMIT in flight may have completed)"
        };
        let owed = st.pending;
        if st.unsynced {
            self.skip_until_sync = true;
        }
        self.reply(|out| {
            protocol::put_error(out, Severity::Error, sqlstate::CONNECTION_FAILURE, msg);
            for _ in 0..owed {
                protocol::put_ready(out, b'I');
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
        let clean =
            self.st.at_rest() && self.bufs.to_server.is_empty() && self.bufs.from_server.is_empty();
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
        if self.st.status != b'I' && conn.run_simple("ROLLBACK", CLEANUP_TIMEOUT).await != Ok(b'I')
        {
            return;
        }
        if self.user.pool_mode == PoolMode::Session
            && !cfg.proxy.server_reset_query.is_empty()
            && conn
                .run_simple(&cfg.proxy.server_reset_query, CLEANUP_TIMEOUT)
                .await
                != Ok(b'I')
        {
            return;
        }
        server.release();
    }

    /// Writes what `build` puts in a buffer; false when the client is gone.
    async fn reply(&mut self, build: impl FnOnce(&mut BytesMut)) -> bool {
        let mut out = BytesMut::new();
        build(&mut out);
        self.client.write_all(&out).await.is_ok()
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
    Protocol(String),
}
