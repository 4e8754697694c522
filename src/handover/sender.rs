//! The old process's side of a handover. It listens on the handover
//! socket; a new process of the same user connects, gets the listening
//! sockets, and says it accepts on them; then this process stops
//! accepting (the sockets stay open: the new process holds them, so no
//! connection attempt is refused), hands over each idle transaction-mode
//! client as its session offers itself (`handoff.rs`), until none is left
//! or `handover_timeout`, and asks to stop (`Shared::stop_requested`).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::wire::{self, Message, SocketInfo, SocketKind, VERSION};
use crate::config::ListenerRoute;
use crate::handoff::{Offer, MOVED, REFUSED, STAYED};
use crate::listener::Brought;
use crate::shared::Shared;

/// One of this process's listening sockets (a duplicate of the listener's).
pub struct Listening {
    pub info: SocketInfo,
    pub fd: OwnedFd,
}

/// How often the drain looks whether pooled clients are left.
const DRAIN_CHECK: Duration = Duration::from_millis(50);

/// How long the new process may take to answer for one client (it
/// rebuilds a session without any I/O: far less than this).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Offers in flight between the sessions and the transport.
const OFFER_QUEUE: usize = 64;

/// Binds the handover socket at `path`: a stale file (no process answers
/// on it) is replaced; one a live process listens on is an error. Only
/// this user may connect (mode 0600; peers are checked again by uid).
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            // Never removed: a wrong path must not cost someone a file.
            bail!("{} exists and is not a socket", path.display());
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another pgkeel process listens on the handover socket {} (start this one with --takeover to take over from it)",
                path.display()
            );
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on the handover socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Whether the peer runs as this process's user (whoever can connect
/// gets the listening sockets and the clients).
pub(super) fn same_user(conn: &UnixStream) -> bool {
    conn.peer_cred()
        .is_ok_and(|c| c.uid() == nix::unistd::geteuid().as_raw())
}

/// Serves the handover socket until one handover is done (or shutdown).
/// `brought` gives the listener its sockets back if the new process goes
/// away before it is done.
pub async fn listen(
    shared: Arc<Shared>,
    mut listener: UnixListener,
    path: PathBuf,
    sockets: Vec<Listening>,
    brought: mpsc::Sender<Brought>,
) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let conn = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let Ok((conn, _)) = conn else { continue };
        if !same_user(&conn) {
            tracing::warn!("handover: refused a connection from another user");
            continue;
        }
        match give(&shared, &conn, &sockets, &path).await {
            // The path is the new process's now: not removed.
            Ok(()) => return,
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "handover failed; serving on"),
        }
        if shared.handoff.is_active() {
            // The new process accepted, then went away: accept again, and
            // take the path back (the new process may have bound it).
            if let Err(e) = take_back(&shared, &sockets, &brought).await {
                tracing::error!(error = %format!("{e:#}"), "cannot accept again after a failed handover");
            }
            match bind(&path) {
                Ok(l) => listener = l,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "no handover socket any more");
                    return;
                }
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// After the new process went away mid-handover: this process accepts
/// on its sockets again (its duplicates of them) and keeps its clients.
async fn take_back(
    shared: &Arc<Shared>,
    sockets: &[Listening],
    brought: &mpsc::Sender<Brought>,
) -> std::io::Result<()> {
    shared.handoff.abort();
    let mut listeners = Vec::new();
    for s in sockets {
        let std = std::net::TcpListener::from(s.fd.try_clone()?);
        std.set_nonblocking(true)?;
        let l = tokio::net::TcpListener::from_std(std)?;
        let endpoints = match s.info.kind {
            SocketKind::Main => {
                listeners.push((l, ListenerRoute::Auto));
                continue;
            }
            SocketKind::Extra { route } => {
                listeners.push((l, route));
                continue;
            }
            SocketKind::Admin => crate::admin::Endpoints::All,
            SocketKind::Metrics => crate::admin::Endpoints::MetricsOnly,
        };
        tokio::spawn(crate::admin::run(
            shared.clone(),
            l,
            endpoints,
            shared.shutdown.clone(),
        ));
    }
    brought
        .send(Brought::Listeners(listeners))
        .await
        .map_err(|_| std::io::Error::other("the listener has stopped"))
}

/// Pooled (non-console) clients still served here.
fn pooled_clients(shared: &Shared) -> usize {
    shared
        .clients
        .all()
        .iter()
        .filter(|c| !c.spec.admin)
        .count()
}

async fn give(
    shared: &Arc<Shared>,
    conn: &UnixStream,
    sockets: &[Listening],
    path: &Path,
) -> anyhow::Result<()> {
    let timeout = shared.config.load().proxy.handover_timeout.0;
    let (hello, _) = tokio::time::timeout(timeout, wire::recv(conn))
        .await
        .context("no hello")??;
    let Message::Hello { version, pid } = hello else {
        bail!("expected a hello, got {hello:?}");
    };
    if let Some(reason) = wire::incompatible(version) {
        let _ = wire::send(
            conn,
            &Message::Refused {
                reason: reason.clone(),
            },
            &[],
        )
        .await;
        bail!("refused process {pid}: {reason}");
    }
    let infos: Vec<SocketInfo> = sockets.iter().map(|s| s.info).collect();
    let fds: Vec<_> = sockets.iter().map(|s| s.fd.as_fd()).collect();
    wire::send(
        conn,
        &Message::Listeners {
            version: VERSION,
            pid: std::process::id(),
            sockets: infos,
        },
        &fds,
    )
    .await?;
    tracing::info!(pid, "handover: listening sockets given to the new process");
    let (ready, _) = tokio::time::timeout(timeout, wire::recv(conn))
        .await
        .context("the new process did not start")??;
    if ready != Message::Ready {
        bail!("expected ready, got {ready:?}");
    }
    // From here on this process stops accepting and moves its clients.
    let (tx, mut offers) = mpsc::channel::<Offer>(OFFER_QUEUE);
    shared.handoff.begin(tx);
    let _ = std::fs::remove_file(path);
    // CancelRequests for the clients still here now reach the new
    // process: it passes them back on this pair's other end.
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    wire::send(conn, &Message::Stopped, &[theirs.as_fd()]).await?;
    drop(theirs);
    ours.set_nonblocking(true)?;
    tokio::spawn(cancels_from(shared.clone(), UnixStream::from_std(ours)?));
    tracing::info!(
        pid,
        ?timeout,
        "handover: the new process accepts; handing over idle clients"
    );
    let deadline = Instant::now() + timeout;
    let mut check = tokio::time::interval(DRAIN_CHECK);
    let (mut moved, mut refused) = (0u64, 0u64);
    let metrics = &shared.metrics.handover_clients_total;
    loop {
        tokio::select! {
            Some(offer) = offers.recv() => match hand(conn, offer).await {
                Ok(true) => {
                    moved += 1;
                    metrics.with_label_values(&[MOVED]).inc();
                }
                Ok(false) => {
                    refused += 1;
                    metrics.with_label_values(&[REFUSED]).inc();
                }
                Err(e) => bail!("the new process is gone: {e}"),
            },
            // The new process never speaks unasked: readable is its end.
            r = conn.readable() => {
                let mut byte = [0u8; 1];
                match (r, conn.try_read(&mut byte)) {
                    (Ok(()), Err(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    _ => bail!("the new process went away"),
                }
            }
            _ = check.tick() => if pooled_clients(shared) == 0 { break },
            _ = tokio::time::sleep_until(deadline) => {
                tracing::info!("handover_timeout reached");
                break;
            }
        }
    }
    shared.handoff.end();
    // Offers still queued go back to their sessions as refused.
    drop(offers);
    let stayed = pooled_clients(shared) as u64;
    metrics.with_label_values(&[STAYED]).inc_by(stayed);
    let _ = wire::send(conn, &Message::Done { moved, stayed }, &[]).await;
    tracing::info!(moved, refused, stayed, "handover done; stopping");
    shared.stop_requested.notify_one();
    Ok(())
}

/// Carries out the CancelRequests the new process passes back, for
/// clients still served here, until it closes its end (or this process
/// stops).
async fn cancels_from(shared: Arc<Shared>, mut from: UnixStream) {
    use tokio::io::AsyncReadExt;
    let mut record = [0u8; wire::CANCEL_RECORD];
    while from.read_exact(&mut record).await.is_ok() {
        let (pid, secret) = wire::cancel_record(&record);
        crate::session::startup::cancel(&shared, pid, secret).await;
    }
}

/// Passes one client to the new process; whether it took it. Once the
/// socket was sent without an answer, the client counts as taken: two
/// processes must never both read one client's socket.
async fn hand(conn: &UnixStream, offer: Offer) -> std::io::Result<bool> {
    let state = Box::new(offer.state);
    if let Err(e) = wire::send(conn, &Message::Client { state }, &[offer.socket.as_fd()]).await {
        let _ = offer.taken.send(false);
        return Err(e);
    }
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, wire::recv(conn)).await {
        Ok(a) => a,
        Err(_) => Err(std::io::Error::other("the new process did not answer")),
    };
    let taken = match &answer {
        Ok((Message::Taken { taken, reason }, _)) => {
            if !taken {
                tracing::info!(
                    reason = reason.as_deref().unwrap_or(""),
                    "handover: the new process refused a client; it finishes here"
                );
            }
            *taken
        }
        _ => true,
    };
    let _ = offer.taken.send(taken);
    answer.map(|_| taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_a_live_one_or_another_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sock");
        let live = bind(&path).unwrap();
        assert!(bind(&path)
            .unwrap_err()
            .to_string()
            .contains("another pgkeel process"));
        drop(live);
        // The file is left behind, stale: replaced.
        assert!(path.exists());
        let _again = bind(&path).unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(&file)
            .unwrap_err()
            .to_string()
            .contains("not a socket"));
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "x");
    }
}
