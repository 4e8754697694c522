//! The new process's side of a handover (`pgkeel --takeover`): before
//! binding anything it connects to the running process's handover socket
//! and receives its listening sockets (`Takeover::connect`); `Proxy`
//! serves on them instead of binding (`Takeover::take`); once it accepts,
//! `run` says so, waits for the old process to stop accepting, listens on
//! the handover socket itself (for the next upgrade), and rebuilds each
//! client the old process passes (`session::resume`).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::sender::{self, Listening};
use super::wire::{self, Message, SocketInfo, SocketKind, VERSION};
use crate::listener::Brought;
use crate::session::Resumed;
use crate::shared::Shared;

/// A handover in progress, from the new process's side.
pub struct Takeover {
    conn: UnixStream,
    path: PathBuf,
    /// The old process's sockets not yet taken.
    sockets: Vec<(SocketInfo, OwnedFd)>,
    old_pid: u32,
}

impl Takeover {
    /// Connects to the process listening on `path` and receives its
    /// listening sockets; an error (nobody there, another version, a
    /// handover already under way) leaves that process as it was.
    pub async fn connect(path: &Path) -> anyhow::Result<Takeover> {
        let conn = UnixStream::connect(path).await.with_context(|| {
            format!(
                "no pgkeel process to take over from on {} (is it running, with the same handover_socket?)",
                path.display()
            )
        })?;
        if !sender::same_user(&conn) {
            bail!(
                "{} is served by another user's process: not taken over",
                path.display()
            );
        }
        wire::send(
            &conn,
            &Message::Hello {
                version: VERSION,
                pid: std::process::id(),
            },
            &[],
        )
        .await?;
        let (answer, fds) = wire::recv(&conn)
            .await
            .context("the running process hung up")?;
        match answer {
            Message::Listeners {
                version,
                pid,
                sockets,
            } => {
                if let Some(reason) = wire::incompatible(version) {
                    bail!("cannot take over from process {pid}: {reason}");
                }
                if fds.len() != sockets.len() {
                    bail!(
                        "process {pid} named {} sockets but sent {}",
                        sockets.len(),
                        fds.len()
                    );
                }
                tracing::info!(
                    pid,
                    sockets = sockets.len(),
                    "taking over from the running process"
                );
                Ok(Takeover {
                    conn,
                    path: path.to_owned(),
                    sockets: sockets.into_iter().zip(fds).collect(),
                    old_pid: pid,
                })
            }
            Message::Refused { reason } => bail!("the running process refused: {reason}"),
            other => bail!("unexpected answer from the running process: {other:?}"),
        }
    }

    /// The old process's listening socket of `kind` for the configured
    /// address `configured`, if it had one: served as it is (the same
    /// kernel socket, its queue of connections included).
    pub fn take(
        &mut self,
        kind: SocketKind,
        configured: SocketAddr,
    ) -> Option<std::io::Result<tokio::net::TcpListener>> {
        let i = self
            .sockets
            .iter()
            .position(|(s, _)| s.kind == kind && s.configured == configured)?;
        let (_, fd) = self.sockets.remove(i);
        let std = std::net::TcpListener::from(fd);
        Some(
            std.set_nonblocking(true)
                .and_then(|()| tokio::net::TcpListener::from_std(std)),
        )
    }

    /// This process accepts now: tells the old one, then takes its clients
    /// as it passes them, until it is done. `sockets` are this process's
    /// own, for the handover socket it listens on afterwards.
    pub async fn run(
        mut self,
        shared: Arc<Shared>,
        sockets: Vec<Listening>,
        brought: mpsc::Sender<Brought>,
    ) {
        // Sockets of the old process this one's config does not name.
        for (s, _) in self.sockets.drain(..) {
            tracing::warn!(kind = ?s.kind, address = %s.bound, "the old process listened here but this configuration does not: not taken over");
        }
        if let Err(e) = self.serve(&shared, sockets, brought).await {
            tracing::warn!(error = %format!("{e:#}"), pid = self.old_pid, "handover ended early");
        }
    }

    async fn serve(
        &self,
        shared: &Arc<Shared>,
        sockets: Vec<Listening>,
        brought: mpsc::Sender<Brought>,
    ) -> anyhow::Result<()> {
        let conn = &self.conn;
        wire::send(conn, &Message::Ready, &[]).await?;
        let (stopped, mut fds) = wire::recv(conn).await?;
        if stopped != Message::Stopped {
            bail!("expected stopped, got {stopped:?}");
        }
        if let Some(fd) = fds.pop() {
            let std = std::os::unix::net::UnixStream::from(fd);
            std.set_nonblocking(true)?;
            let (tx, rx) = mpsc::channel(crate::handoff::CANCEL_QUEUE);
            shared.handoff.forward_cancels_to(Some(tx));
            tokio::spawn(cancels_to(shared.clone(), UnixStream::from_std(std)?, rx));
        }
        // The path is free: the next upgrade finds this process there.
        match sender::bind(&self.path) {
            Ok(l) => {
                tokio::spawn(sender::listen(
                    shared.clone(),
                    l,
                    self.path.clone(),
                    sockets,
                    brought.clone(),
                ));
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "no handover socket"),
        }
        tracing::info!(
            pid = self.old_pid,
            "the old process stopped accepting; taking its idle clients"
        );
        loop {
            let (msg, mut fds) = wire::recv(conn).await?;
            match msg {
                Message::Client { state } => {
                    let (taken, reason) = match (fds.pop(), fds.is_empty()) {
                        (Some(fd), true) => match adopt_client(shared, fd, *state) {
                            Ok(r) => (
                                brought.send(Brought::Client(Box::new(r))).await.is_ok(),
                                None,
                            ),
                            Err(why) => (false, Some(why)),
                        },
                        _ => (false, Some("expected one socket".to_owned())),
                    };
                    wire::send(conn, &Message::Taken { taken, reason }, &[]).await?;
                }
                Message::Done { moved, stayed } => {
                    tracing::info!(
                        moved,
                        stayed,
                        pid = self.old_pid,
                        "handover done: the old process exits"
                    );
                    return Ok(());
                }
                other => bail!("unexpected message {other:?}"),
            }
        }
    }
}

/// Passes CancelRequests for keys this process does not know to the old
/// process, until it is gone.
async fn cancels_to(shared: Arc<Shared>, mut to: UnixStream, mut keys: mpsc::Receiver<(i32, i32)>) {
    use tokio::io::AsyncWriteExt;
    while let Some((pid, secret)) = keys.recv().await {
        if to
            .write_all(&wire::put_cancel_record(pid, secret))
            .await
            .is_err()
        {
            break;
        }
    }
    shared.handoff.forward_cancels_to(None);
}

fn adopt_client(
    shared: &Arc<Shared>,
    fd: OwnedFd,
    state: crate::handoff::SessionState,
) -> Result<Resumed, String> {
    let std = std::net::TcpStream::from(fd);
    let tcp = std
        .set_nonblocking(true)
        .and_then(|()| tokio::net::TcpStream::from_std(std))
        .map_err(|e| e.to_string())?;
    crate::session::resume(shared, tcp, state)
}
