//! Accepts client connections and spawns a session for each; enforces
//! `max_client_connections`; on shutdown stops accepting and lets sessions
//! finish up to `shutdown_timeout`, then aborts what is left.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::protocol::{self, sqlstate, Severity};
use crate::proxy::Shared;

pub async fn run(shared: Arc<Shared>, listener: TcpListener, mut shutdown: watch::Receiver<bool>) {
    let max_clients = shared.config.load().proxy.max_client_connections as usize;
    let slots = Arc::new(Semaphore::new(max_clients));
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (mut stream, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
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
                    crate::session::serve(shared.clone(), stream, peer).await;
                    shared.metrics.clients_connected.dec();
                    drop(slot);
                });
            }
            // Reap finished sessions so the set does not grow.
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
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
