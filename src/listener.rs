//! Accepts client connections and spawns a session for each; admits them
//! through the login budget (`max_login_connections`,
//! `max_logins_per_address`: `limits.rs`) before their handshake; on
//! shutdown stops accepting and lets sessions finish up to
//! `shutdown_timeout`, then aborts what is left. Each listener has a route:
//! the main one splits reads from writes, `[[listeners]]` may pin
//! everything to the primary or replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ListenerRoute;
use crate::console;
use crate::limits::{Limit, LoginCaps, LoginPermit};
use crate::protocol::{self, sqlstate, Severity};
use crate::session::{self, startup, startup::Handshake};
use crate::shared::Shared;
use crate::tls::Stream;

type Accepted = (TcpStream, SocketAddr, ListenerRoute);

/// How long a failed accept (EMFILE, ENFILE, ENOBUFS) waits before the next
/// try: the error repeats at once otherwise, and the loop would spin.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Writes what a peer not yet logged in is owed, but never past `deadline`:
/// a peer that does not read must not keep its slot. Past the deadline,
/// one attempt that does not wait (a FATAL fits in the socket buffer of
/// any peer that reads at all).
pub async fn write_before(stream: &mut Stream, bytes: &[u8], deadline: Instant) {
    if Instant::now() < deadline {
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        let _ = tokio::time::timeout_at(deadline, write).await;
    } else if !stream.is_tls() {
        // Past the deadline: one attempt that does not wait (a TLS peer gets
        // the close alone: a record cannot be written halfway).
        if let Some(tcp) = stream.tcp() {
            let _ = tcp.try_write(bytes);
        }
    }
}

/// One accepted connection: its handshake (bounded by
/// `client_login_timeout`, every write included), then a session, or the
/// admin console for an admin login. `login` is its place in the login
/// budget, given back once it is logged in or refused.
async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    route: ListenerRoute,
    login: InLogin,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::plain(tcp);
    let cfg = shared.config.load_full();
    crate::system::set_keepalive(
        stream.tcp().expect("a new connection has its socket"),
        crate::system::keepalive_settings(&cfg.proxy).as_ref(),
    );
    let mut deadline = Instant::now() + cfg.proxy.client_login_timeout.0;
    let handshake =
        tokio::time::timeout_at(deadline, startup::handshake(&shared, &cfg, &mut stream)).await;
    let refusal = match handshake {
        Ok(Ok(Handshake::Login(l))) => {
            drop(login);
            return session::serve(shared, stream, peer, *l, route).await;
        }
        Ok(Ok(Handshake::Admin(a))) => {
            drop(login);
            tracing::info!(%peer, user = %a.user.name, "admin console connected");
            console::serve(shared, stream, peer, route, *a).await;
            tracing::info!(%peer, "admin console disconnected");
            return;
        }
        Ok(Ok(Handshake::Done)) => {
            drop(login);
            return;
        }
        Ok(Err(refusal)) => {
            tracing::info!(%peer, sqlstate = refusal.sqlstate(), reason = refusal.message(), "login refused");
            let delay = cfg.proxy.auth_failure_delay.0;
            if refusal.sqlstate() == sqlstate::INVALID_PASSWORD && !delay.is_zero() {
                // auth_delay, as PostgreSQL's extension: this connection
                // waits, holding its place in the login budget (so one
                // address gets at most max_logins_per_address guesses per
                // delay), and no lock.
                shared.metrics.auth_failure_delayed.inc();
                tokio::time::sleep(delay).await;
                shared.metrics.auth_failure_delayed.dec();
                // Past the login deadline now: one write that does not wait.
                deadline = deadline.min(Instant::now());
            }
            (refusal.sqlstate().to_owned(), refusal.encode().to_vec())
        }
        Err(_) => {
            tracing::info!(%peer, "login timed out (client_login_timeout)");
            shared
                .metrics
                .limit_refusals_total
                .with_label_values(&[Limit::LoginTimeout.setting()])
                .inc();
            let mut out = BytesMut::new();
            protocol::put_error(
                &mut out,
                Severity::Fatal,
                Limit::LoginTimeout.sqlstate(),
                &Limit::LoginTimeout.message("", ""),
            );
            (Limit::LoginTimeout.sqlstate().to_owned(), out.to_vec())
        }
    };
    shared
        .metrics
        .client_login_failures_total
        .with_label_values(&[&refusal.0])
        .inc();
    write_before(&mut stream, &refusal.1, deadline).await;
    drop(login);
}

/// A connection's place in the login budget and in the
/// `pgkeel_login_connections` gauge, both given back on drop.
struct InLogin {
    _permit: LoginPermit,
    gauge: prometheus::IntGauge,
}

impl InLogin {
    fn new(permit: LoginPermit, gauge: &prometheus::IntGauge) -> InLogin {
        gauge.inc();
        InLogin {
            _permit: permit,
            gauge: gauge.clone(),
        }
    }
}

impl Drop for InLogin {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Accepts on one listener until the channel closes.
async fn accept(listener: TcpListener, route: ListenerRoute, to: mpsc::Sender<Accepted>) {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if to.send((stream, peer, route)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            _ = to.closed() => return,
        }
    }
}

/// Refuses a connection the login budget has no room for: one FATAL, not
/// waited for, then close.
fn refuse_at_accept(shared: &Shared, stream: TcpStream, peer: SocketAddr, limit: Limit) {
    tracing::warn!(%peer, limit = limit.setting(), "client refused at accept");
    let m = &shared.metrics;
    m.limit_refusals_total
        .with_label_values(&[limit.setting()])
        .inc();
    m.client_login_failures_total
        .with_label_values(&[limit.sqlstate()])
        .inc();
    let mut out = BytesMut::new();
    protocol::put_error(
        &mut out,
        Severity::Fatal,
        limit.sqlstate(),
        &limit.message("", ""),
    );
    let _ = stream.try_write(&out);
}

/// What an upgrade's handover brings the listener.
pub enum Brought {
    /// A client the old process passed over, to serve here.
    Client(Box<session::Resumed>),
    /// This process's listening sockets again: the new process it was
    /// handing over to went away before it was done.
    Listeners(Vec<(TcpListener, ListenerRoute)>),
}

/// Accepts on `listeners` until shutdown, and serves the clients an
/// upgrade's handover brings (`brought`). When this process hands over to
/// a new one, it stops accepting (the new one holds the same sockets) and
/// its sessions finish or move.
pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, ListenerRoute)>,
    mut brought: mpsc::Receiver<Brought>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sessions = JoinSet::new();
    let (tx, mut accepted) = mpsc::channel::<Accepted>(64);
    let mut handing_over = shared.handoff.watch();
    let mut acceptors: Vec<_> = listeners
        .into_iter()
        .map(|(l, route)| tokio::spawn(accept(l, route, tx.clone())))
        .collect();
    loop {
        tokio::select! {
            r = accepted.recv() => {
                // The listener keeps a sender: never closed.
                let Some((stream, peer, route)) = r else { break };
                let caps = {
                    let p = &shared.config.load().proxy;
                    LoginCaps { total: p.max_login_connections, per_address: p.max_logins_per_address }
                };
                let login = match shared.limits.login(peer.ip(), caps) {
                    Ok(l) => InLogin::new(l, &shared.metrics.login_connections),
                    Err(limit) => {
                        refuse_at_accept(&shared, stream, peer, limit);
                        continue;
                    }
                };
                let shared = shared.clone();
                shared.metrics.client_connections_total.inc();
                shared.metrics.clients_connected.inc();
                sessions.spawn(async move {
                    serve_connection(shared.clone(), stream, peer, route, login).await;
                    shared.metrics.clients_connected.dec();
                });
            }
            Some(b) = brought.recv() => match b {
                Brought::Client(resumed) => {
                    let shared = shared.clone();
                    shared.metrics.clients_connected.inc();
                    sessions.spawn(async move {
                        resumed.serve().await;
                        shared.metrics.clients_connected.dec();
                    });
                }
                Brought::Listeners(listeners) => {
                    acceptors.extend(
                        listeners
                            .into_iter()
                            .map(|(l, route)| tokio::spawn(accept(l, route, tx.clone()))),
                    );
                    tracing::info!("handover abandoned: accepting again");
                }
            },
            _ = handing_over.wait_for(|up| *up), if !acceptors.is_empty() => {
                // Connections already accepted are served (the channel
                // drains); the queue behind them is the new process's.
                for a in acceptors.drain(..) {
                    a.abort();
                }
                tracing::info!("handover: stopped accepting; the new process accepts");
            }
            // Reap finished sessions so the set does not grow.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Stop accepting: the sockets close with their tasks.
    drop(tx);
    drop(accepted);
    for a in acceptors {
        a.abort();
    }
    let timeout = shared.config.load().proxy.shutdown_timeout.0;
    tracing::info!(
        sessions = sessions.len(),
        ?timeout,
        "stopped accepting; waiting for sessions to finish"
    );
    let drained = tokio::time::timeout(timeout, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            sessions = sessions.len(),
            "shutdown_timeout reached; closing remaining sessions"
        );
        sessions.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that never reads cannot hold a write past its deadline, even
    /// one far larger than the socket buffers.
    #[tokio::test]
    async fn writes_to_a_peer_that_never_reads_end_at_the_deadline() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (ours, _) = l.accept().await.unwrap();
        let mut ours = Stream::plain(ours);
        let big = vec![0u8; 64 << 20];
        write_before(&mut ours, &big, Instant::now() + Duration::from_millis(200)).await;
        // Past the deadline: one attempt, no wait.
        write_before(&mut ours, &big, Instant::now()).await;
    }
}
