//! Accepts client connections and spawns a session for each; enforces
//! `max_client_connections` across all listeners; on shutdown stops
//! accepting and lets sessions finish up to `shutdown_timeout`, then aborts
//! what is left. Each listener has a route: the main one splits reads from
//! writes, `[[listeners]]` may pin everything to the primary or replicas.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::ListenerRoute;
use crate::console;
use crate::protocol::{self, sqlstate, Severity};
use crate::session::{self, startup, startup::Handshake};
use crate::shared::Shared;
use crate::tls::Stream;

type Accepted = (TcpStream, SocketAddr, ListenerRoute);

/// One accepted connection: its handshake (bounded by
/// `client_login_timeout`), then a session, or the admin console for an
/// admin login.
async fn serve_connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    route: ListenerRoute,
) {
    let _ = tcp.set_nodelay(true);
    let mut stream = Stream::plain(tcp);
    let cfg = shared.config.load_full();
    let login = tokio::time::timeout(
        cfg.proxy.client_login_timeout.0,
        startup::handshake(&shared, &cfg, &mut stream),
    )
    .await;
    let refusal = match login {
        Ok(Ok(Handshake::Login(l))) => {
            return session::serve(shared, stream, peer, *l, route).await
        }
        Ok(Ok(Handshake::Admin(a))) => {
            tracing::info!(%peer, user = %a.user.name, "admin console connected");
            console::serve(shared, stream, peer, route, *a).await;
            tracing::info!(%peer, "admin console disconnected");
            return;
        }
        Ok(Ok(Handshake::Done)) => return,
        Ok(Err(refusal)) => {
            tracing::info!(%peer, sqlstate = refusal.sqlstate(), reason = refusal.message(), "login refused");
            (refusal.sqlstate().to_owned(), refusal.encode().to_vec())
        }
        Err(_) => {
            tracing::info!(%peer, "login timed out (client_login_timeout)");
            let mut out = BytesMut::new();
            protocol::put_error(
                &mut out,
                Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                "canceling authentication due to timeout (client_login_timeout)",
            );
            (sqlstate::PROTOCOL_VIOLATION.to_owned(), out.to_vec())
        }
    };
    shared
        .metrics
        .client_login_failures_total
        .with_label_values(&[&refusal.0])
        .inc();
    if stream.write_all(&refusal.1).await.is_ok() {
        let _ = stream.flush().await;
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = to.closed() => return,
        }
    }
}

pub async fn run(
    shared: Arc<Shared>,
    listeners: Vec<(TcpListener, ListenerRoute)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let max_clients = shared.config.load().proxy.max_client_connections as usize;
    let slots = Arc::new(Semaphore::new(max_clients));
    let mut sessions = JoinSet::new();
    let (tx, mut accepted) = mpsc::channel::<Accepted>(64);
    let acceptors: Vec<_> = listeners
        .into_iter()
        .map(|(l, route)| tokio::spawn(accept(l, route, tx.clone())))
        .collect();
    drop(tx);
    loop {
        tokio::select! {
            r = accepted.recv() => {
                let Some((mut stream, peer, route)) = r else { break };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max_clients, "client refused: max_client_connections reached");
                    shared.metrics.client_login_failures_total.with_label_values(&[sqlstate::TOO_MANY_CONNECTIONS]).inc();
                    tokio::spawn(async move {
                        let mut out = BytesMut::new();
                        protocol::put_error(&mut out, Severity::Fatal, sqlstate::TOO_MANY_CONNECTIONS, "sorry, too many clients already (max_client_connections)");
                        let _ = stream.write_all(&out).await;
                    });
                    continue;
                };
                let shared = shared.clone();
                shared.metrics.client_connections_total.inc();
                shared.metrics.clients_connected.inc();
                sessions.spawn(async move {
                    serve_connection(shared.clone(), stream, peer, route).await;
                    shared.metrics.clients_connected.dec();
                    drop(slot);
                });
            }
            // Reap finished sessions so the set does not grow.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    // Stop accepting: the sockets close with their tasks.
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
