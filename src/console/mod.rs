//! The admin console: `psql -h HOST -p 54320 -U admin pgkeel`.
//!
//! A login to `[admin] database` by a user in `[admin] users` (or, read
//! only, `[admin] stats_users`) lands here instead of in a pooled session.
//! It speaks the simple Query protocol only (as PgBouncer's console does)
//! and answers PgBouncer's SHOW commands with PgBouncer's columns, in its
//! order and types, then pgkeel's own, so exporters, dashboards and
//! runbooks written for PgBouncer work unchanged. `parse.rs` reads the
//! commands, `commands.rs` runs those that act, `show/` builds the result
//! sets, `result.rs` encodes them.

mod commands;
mod parse;
mod result;
mod show;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::tls::Stream;
use bytes::BytesMut;
use pgwire::messages::response::EmptyQueryResponse;
use pgwire::messages::startup::Authentication;
use pgwire::messages::Message;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

pub(crate) use result::{boolean, num, text, time, ResultSet, Type};
use result::{put_complete, put_notice, Reply};

use crate::clients::{ClientSpec, ClientState, Registered};
use crate::config::ListenerRoute;
use crate::protocol::{self, sqlstate, Severity};
use crate::session::startup::AdminLogin;
use crate::shared::Shared;

/// Console queries are short; anything longer is not one of its commands.
const MAX_MESSAGE: usize = 64 << 10;

const NOT_IN_PREREQUISITE_STATE: &str = "55000";

/// One admin console connection.
pub(crate) struct Console {
    shared: Arc<Shared>,
    stream: Stream,
    buf: BytesMut,
    registered: Registered,
    cancel: crate::cancel::Registration,
    shutdown: watch::Receiver<bool>,
    user: String,
    /// After an extended-protocol message, everything up to Sync is dropped.
    skip_until_sync: bool,
}

/// Serves an admin console login to the end.
pub async fn serve(
    shared: Arc<Shared>,
    stream: Stream,
    peer: SocketAddr,
    listener: ListenerRoute,
    login: AdminLogin,
) {
    let cancel = shared.cancels.register();
    let application_name = login
        .params
        .iter()
        .find(|(k, _)| k == "application_name")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let registered = shared.clients.register(ClientSpec {
        peer,
        local: stream.local_addr().ok(),
        user: login.user.name.clone(),
        database: shared.config.load().admin.database.clone(),
        application_name: application_name.clone(),
        listener,
        admin: true,
        cancel: cancel.slot.clone(),
    });
    let mut console = Console {
        shutdown: shared.shutdown.clone(),
        shared,
        stream,
        buf: login.pending,
        registered,
        cancel,
        user: login.user.name,
        skip_until_sync: false,
    };
    let mut out = BytesMut::new();
    Authentication::Ok
        .encode(&mut out)
        .expect("AuthenticationOk always encodes");
    let version = format!("{}/pgkeel", env!("CARGO_PKG_VERSION"));
    for (k, v) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("TimeZone", "UTC"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("is_superuser", "off"),
        ("session_authorization", console.user.as_str()),
        ("application_name", application_name.as_str()),
    ] {
        protocol::put_parameter_status(&mut out, k, v);
    }
    protocol::put_backend_key(&mut out, console.cancel.pid, console.cancel.secret);
    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
    if console.stream.write_all(&out).await.is_err() {
        return;
    }
    let reason = console.run().await;
    tracing::debug!(%peer, reason, "admin console session ended");
}

impl Console {
    async fn run(&mut self) -> &'static str {
        loop {
            let msg = tokio::select! {
                m = protocol::read_message(&mut self.stream, &mut self.buf, MAX_MESSAGE) => m,
                _ = self.registered.killed() => {
                    self.fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection due to administrator command (KILL from pgkeel's admin console)").await;
                    return "killed";
                }
                _ = self.shutdown.changed() => {
                    self.fatal(sqlstate::ADMIN_SHUTDOWN, "terminating connection because pgkeel is shutting down").await;
                    return "shutdown";
                }
            };
            let (typ, body) = match msg {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return "client closed the connection"
                }
                Err(e) => {
                    self.fatal(sqlstate::PROTOCOL_VIOLATION, &e.to_string())
                        .await;
                    return "protocol violation";
                }
            };
            let mut out = BytesMut::new();
            match typ {
                b'X' => return "client terminated",
                b'Q' if self.skip_until_sync => {}
                b'Q' => {
                    if let Some(why) = self.no_longer_admin() {
                        self.fatal(sqlstate::INSUFFICIENT_PRIVILEGE, &why).await;
                        return "no longer an admin";
                    }
                    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
                    let sql = String::from_utf8_lossy(&body[..end]).into_owned();
                    self.registered.info.set_state(ClientState::Active);
                    self.query(&sql, &mut out).await;
                    self.registered.info.set_state(ClientState::Idle);
                    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
                }
                b'P' | b'B' | b'D' | b'E' | b'C' => {
                    if !self.skip_until_sync {
                        self.skip_until_sync = true;
                        protocol::put_error(
                            &mut out,
                            Severity::Error,
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            "the admin console supports only simple queries (the simple Query protocol, as psql sends)",
                        );
                    }
                }
                b'S' => {
                    self.skip_until_sync = false;
                    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
                }
                b'F' => {
                    protocol::put_error(
                        &mut out,
                        Severity::Error,
                        sqlstate::FEATURE_NOT_SUPPORTED,
                        "the admin console supports only simple queries",
                    );
                    protocol::put_ready(&mut out, protocol::TxStatus::Idle);
                }
                // Flush has nothing to flush; stray COPY messages are ignored, as PostgreSQL does.
                b'H' | b'd' | b'c' | b'f' => {}
                t => {
                    self.fatal(
                        sqlstate::PROTOCOL_VIOLATION,
                        &format!("invalid frontend message type {t}"),
                    )
                    .await;
                    return "protocol violation";
                }
            }
            if !out.is_empty() && self.stream.write_all(&out).await.is_err() {
                return "client gone";
            }
        }
    }

    /// After a reload: the reason to end the session if this user is no
    /// longer allowed in the console.
    fn no_longer_admin(&self) -> Option<String> {
        let cfg = self.shared.config.load();
        let allowed =
            cfg.admin.users.contains(&self.user) || cfg.admin.stats_users.contains(&self.user);
        (!allowed).then(|| {
            format!(
                "terminating connection: user \"{}\" is no longer in [admin] users or stats_users",
                self.user
            )
        })
    }

    async fn fatal(&mut self, code: &str, msg: &str) {
        let mut out = BytesMut::new();
        protocol::put_error(&mut out, Severity::Fatal, code, msg);
        let _ = self.stream.write_all(&out).await;
    }

    /// Runs each statement of a simple Query; the first error ends it.
    async fn query(&mut self, sql: &str, out: &mut BytesMut) {
        let stmts = parse::statements(sql);
        if stmts.is_empty() {
            EmptyQueryResponse::new()
                .encode(out)
                .expect("an EmptyQueryResponse always encodes");
            return;
        }
        for stmt in stmts {
            let reply = match parse::parse(stmt) {
                Ok(cmd) => self.execute(cmd).await,
                Err(f) => Err(f),
            };
            match reply {
                Ok(Reply::Rows(rs)) => rs.encode(out),
                Ok(Reply::Done(tag, notices)) => {
                    for (severity, message) in notices {
                        put_notice(out, severity, message);
                    }
                    put_complete(out, tag);
                }
                Err(f) => {
                    self.shared
                        .metrics
                        .errors_total
                        .with_label_values(&[f.code])
                        .inc();
                    protocol::put_error(out, Severity::Error, f.code, &f.message);
                    return;
                }
            }
        }
    }
}
