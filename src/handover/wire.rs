//! The handover protocol between the old and the new pgkeel process, on a
//! Unix stream socket: each message is a 4-byte big-endian length and that
//! much JSON, sent in one `sendmsg` with its file descriptors (if any)
//! attached as `SCM_RIGHTS` to its first byte. The receiver reads one
//! message at a time, so descriptors always arrive with their message.
//!
//! The conversation (new → old, old → new):
//! `Hello` →, ← `Listeners` + the listening sockets (or `Refused`),
//! `Ready` → (the new process accepts), ← `Stopped` + a socket for the
//! CancelRequests of clients left on the old process (it accepts no more),
//! then ← `Client` + its socket, `Taken` → for each idle client, ← `Done`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::config::ListenerRoute;
use crate::handoff::SessionState;

/// The protocol's version. A process refuses a peer of another version
/// (`Refused`), so an upgrade between incompatible binaries fails at once,
/// with both processes serving on as they were.
pub const VERSION: u32 = 1;

/// The longest message either side reads (a client's state with many
/// prepared statements stays far below it).
pub const MAX_MESSAGE: usize = 64 << 20;

/// How much of a message's body is set aside ahead of what arrived.
const READ_STEP: usize = 64 << 10;

/// Descriptors one message may carry (listeners: the main one,
/// `[[listeners]]`, admin, metrics).
pub const MAX_FDS: usize = 64;

/// Which of the old process's listening sockets a descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SocketKind {
    /// `[proxy] listen`.
    Main,
    /// A `[[listeners]]` entry.
    Extra { route: ListenerRoute },
    /// `[admin] listen`.
    Admin,
    /// `[admin] metrics_listen`.
    Metrics,
}

/// A listening socket: what it is, the address its config names (port 0
/// stays 0) and the address it is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    #[serde(flatten)]
    pub kind: SocketKind,
    pub configured: SocketAddr,
    pub bound: SocketAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Message {
    /// New → old: who is asking.
    Hello { version: u32, pid: u32 },
    /// Old → new: one descriptor per entry, in order.
    Listeners {
        version: u32,
        pid: u32,
        sockets: Vec<SocketInfo>,
    },
    /// Either way: no handover (a version mismatch, one already under way).
    Refused { reason: String },
    /// New → old: accepting on the sockets.
    Ready,
    /// Old → new: stopped accepting; the handover socket's path is free.
    /// Attached: a socket for the CancelRequests of clients still on the
    /// old process (`CANCEL_RECORD`s, new → old).
    Stopped,
    /// Old → new: an idle client, its socket attached.
    Client { state: Box<SessionState> },
    /// New → old: whether it serves that client now (else the old process
    /// goes on serving it).
    Taken { taken: bool, reason: Option<String> },
    /// Old → new: no more clients; the old process exits.
    Done { moved: u64, stayed: u64 },
}

/// A CancelRequest passed back to the old process: its key, as the
/// client sent it (process id, secret; big-endian).
pub const CANCEL_RECORD: usize = 8;

pub fn put_cancel_record(pid: i32, secret: i32) -> [u8; CANCEL_RECORD] {
    let mut r = [0u8; CANCEL_RECORD];
    r[..4].copy_from_slice(&pid.to_be_bytes());
    r[4..].copy_from_slice(&secret.to_be_bytes());
    r
}

pub fn cancel_record(r: &[u8; CANCEL_RECORD]) -> (i32, i32) {
    let (pid, secret) = r.split_at(4);
    (
        i32::from_be_bytes(pid.try_into().expect("4 bytes")),
        i32::from_be_bytes(secret.try_into().expect("4 bytes")),
    )
}

/// Sends `msg` with `fds` attached.
pub async fn send(sock: &UnixStream, msg: &Message, fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut sent = 0;
    while sent < frame.len() {
        let n = sock
            .async_io(Interest::WRITABLE, || {
                let iov = [IoSlice::new(&frame[sent..])];
                // The descriptors ride with the first byte only.
                let rights = [ControlMessage::ScmRights(&raw)];
                let cmsgs: &[ControlMessage] = if sent == 0 && !raw.is_empty() {
                    &rights
                } else {
                    &[]
                };
                sendmsg::<()>(sock.as_raw_fd(), &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
                    .map_err(io::Error::from)
            })
            .await?;
        sent += n;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes, keeping any descriptors that arrive.
async fn read_exact(sock: &UnixStream, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let n = sock
            .async_io(Interest::READABLE, || {
                let mut cmsg = nix::cmsg_space!([RawFd; MAX_FDS]);
                let mut iov = [IoSliceMut::new(&mut buf[got..])];
                let msg = recvmsg::<()>(
                    sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                for c in msg.cmsgs().map_err(io::Error::from)? {
                    if let ControlMessageOwned::ScmRights(received) = c {
                        // Ours now: owned, so closed if unused.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                if msg.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::other("too many file descriptors in one message"));
                }
                Ok(msg.bytes)
            })
            .await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    Ok(())
}

/// Receives one message and the descriptors that came with it.
pub async fn recv(sock: &UnixStream) -> io::Result<(Message, Vec<OwnedFd>)> {
    let mut fds = Vec::new();
    let mut len = [0u8; 4];
    read_exact(sock, &mut len, &mut fds).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE {
        return Err(io::Error::other(format!(
            "handover message of {len} bytes exceeds {MAX_MESSAGE}"
        )));
    }
    // Grown as bytes arrive, not by the declared length.
    let mut body = Vec::new();
    while body.len() < len {
        let start = body.len();
        body.resize(start + (len - start).min(READ_STEP), 0);
        read_exact(sock, &mut body[start..], &mut fds).await?;
    }
    let msg = serde_json::from_slice(&body).map_err(io::Error::other)?;
    Ok((msg, fds))
}

/// Whether a peer of protocol `version` can take over from this binary
/// (or this binary from it): the reason it cannot, if not.
pub fn incompatible(version: u32) -> Option<String> {
    (version != VERSION).then(|| {
        format!("handover protocol version {version} is not this binary's ({VERSION}): stop the old process and start the new one instead")
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn cancel_records_round_trip() {
        for (pid, secret) in [(1, -1), (i32::MAX, i32::MIN), (0, 0)] {
            assert_eq!(
                cancel_record(&put_cancel_record(pid, secret)),
                (pid, secret)
            );
        }
    }

    #[test]
    fn only_the_same_version_is_compatible() {
        assert!(incompatible(VERSION).is_none());
        assert!(incompatible(VERSION + 1).unwrap().contains("version 2"));
    }

    #[tokio::test]
    async fn messages_carry_their_descriptors_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut p, mut q) = std::os::unix::net::UnixStream::pair().unwrap();
        let info = SocketInfo {
            kind: SocketKind::Extra {
                route: ListenerRoute::Replica,
            },
            configured: "127.0.0.1:0".parse().unwrap(),
            bound: "127.0.0.1:5555".parse().unwrap(),
        };
        let first = Message::Listeners {
            version: VERSION,
            pid: 1,
            sockets: vec![info],
        };
        use std::os::fd::AsFd;
        send(&a, &first, &[p.as_fd()]).await.unwrap();
        send(&a, &Message::Ready, &[]).await.unwrap();
        let (m, fds) = recv(&b).await.unwrap();
        assert_eq!(m, first);
        assert_eq!(fds.len(), 1);
        let (m, fds2) = recv(&b).await.unwrap();
        assert_eq!(m, Message::Ready);
        assert!(fds2.is_empty());
        // The descriptor received is the same socket.
        let mut other = std::os::unix::net::UnixStream::from(fds.into_iter().next().unwrap());
        other.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        q.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
        p.write_all(b"y").unwrap();
    }

    #[tokio::test]
    async fn a_large_message_arrives_whole() {
        let (a, b) = UnixStream::pair().unwrap();
        let reason = "x".repeat(3 * READ_STEP + 17);
        let msg = Message::Refused { reason };
        let sending = {
            let msg = msg.clone();
            tokio::spawn(async move { send(&a, &msg, &[]).await.unwrap() })
        };
        assert_eq!(recv(&b).await.unwrap().0, msg);
        sending.await.unwrap();
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_any_allocation() {
        let (a, b) = UnixStream::pair().unwrap();
        a.writable().await.unwrap();
        a.try_write(&u32::MAX.to_be_bytes()).unwrap();
        assert!(recv(&b).await.unwrap_err().to_string().contains("exceeds"));
    }
}
