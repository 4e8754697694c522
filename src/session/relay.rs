//! The pump: moves bytes between a client and its server connection while a
//! transaction (or session) is attached, reading only message headers.
//!
//! Both directions run at once (one `select!`, four branches), so neither
//! side can stall the other: a client that pipelines while a server streams
//! a large result is fine. Reads from one side stop while the other side has
//! not taken the previous chunk: that is the back-pressure that keeps memory
//! bounded whatever the result size.
//!
//! Bookkeeping that decides when a server connection can be released:
//! every Query, FunctionCall and Sync sent to the server earns exactly one
//! ReadyForQuery back (`pending`), the last ReadyForQuery gives the
//! transaction status, and `unsynced` notes extended-protocol messages not
//! yet followed by a Sync.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::protocol::{self, HEADER_LEN};

/// Read granularity: large enough that a big result moves in few syscalls.
const READ_CHUNK: usize = 32 * 1024;

/// The four buffers of a session, kept across transactions so their memory
/// is reused.
#[derive(Default)]
pub struct Buffers {
    /// Bytes read from the client, not yet scanned into whole messages.
    pub from_client: BytesMut,
    /// Whole client messages waiting to be written to the server.
    pub to_server: BytesMut,
    /// Bytes read from the server, not yet scanned.
    pub from_server: BytesMut,
    /// Scanned server bytes waiting to be written to the client.
    pub to_client: BytesMut,
}

/// Protocol state of the attached server connection, as seen in the stream.
#[derive(Debug, Clone)]
pub struct TxState {
    /// ReadyForQuery messages the server still owes.
    pub pending: u32,
    /// Status byte of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
    /// Extended-protocol messages were sent after the last Sync.
    pub unsynced: bool,
    /// Body bytes of the current server message still to pass through; non-zero
    /// means the client has seen part of a message.
    pub server_skip: usize,
    /// Queries (Q/S/F) forwarded, for metrics; drained by the session.
    pub queries: u64,
    /// The client is sending COPY data (between its first CopyData and its
    /// CopyDone/CopyFail).
    pub in_copy: bool,
    /// Syncs sent since the last Execute. If that Execute started a COPY
    /// FROM STDIN, the server ignores them (it ignores Sync in copy-in mode),
    /// so they earn no ReadyForQuery.
    pub syncs_since_execute: u32,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            pending: 0,
            status: b'I',
            unsynced: false,
            server_skip: 0,
            queries: 0,
            in_copy: false,
            syncs_since_execute: 0,
        }
    }
}

impl TxState {
    /// The server is between transactions with nothing in flight.
    pub fn is_idle(&self) -> bool {
        self.at_rest() && self.status == b'I'
    }

    /// Nothing is in flight, though a transaction may be open.
    pub fn at_rest(&self) -> bool {
        self.pending == 0 && !self.unsynced && self.server_skip == 0 && !self.in_copy
    }
}

#[derive(Debug)]
pub enum Outcome {
    /// The server connection is idle and may go back to the pool.
    Released,
    /// The client closed its connection (or writing to it failed).
    ClientGone,
    /// The client sent Terminate.
    ClientTerminated,
    /// The server connection closed or failed.
    ServerLost(std::io::Error),
    /// The client broke the protocol; the message explains how.
    ClientProtocol(String),
    /// The server sent something that is not the protocol.
    ServerProtocol(String),
}

pub struct Options {
    /// Release at the first idle point (transaction pooling).
    pub release_on_idle: bool,
    pub max_message_size: usize,
}

#[derive(Debug)]
pub enum ClientScan {
    Ok,
    Terminate,
}

/// Moves whole client messages from `from_client` to `to_server`, counting
/// what the server will owe. Frames are validated here: an unknown type or a
/// length over `max` is a protocol violation.
pub fn scan_client(b: &mut Buffers, st: &mut TxState, max: usize) -> Result<ClientScan, String> {
    let buf = &b.from_client;
    let mut pos = 0;
    let mut terminate = None;
    while let Some(h) = protocol::header(&buf[pos..]) {
        let (typ, len) = h.map_err(|l| format!("invalid message length {l}"))?;
        if !protocol::is_frontend_type(typ) {
            return Err(format!("invalid frontend message type {typ}"));
        }
        if len > max {
            return Err(format!(
                "message of {len} bytes exceeds max_message_size ({max} bytes)"
            ));
        }
        if buf.len() - pos < len {
            break;
        }
        match typ {
            b'X' => {
                terminate = Some(len);
                break;
            }
            b'Q' | b'F' => {
                st.pending += 1;
                st.queries += 1;
            }
            // The server ignores Sync in copy-in mode.
            b'S' if st.in_copy => {}
            b'S' => {
                st.pending += 1;
                st.queries += 1;
                st.unsynced = false;
                st.syncs_since_execute += 1;
            }
            b'E' => {
                st.unsynced = true;
                st.syncs_since_execute = 0;
            }
            b'P' | b'B' | b'D' | b'C' | b'H' => st.unsynced = true,
            b'd' | b'c' | b'f' => {
                if !st.in_copy {
                    // COPY data means the last Execute (or Query) started a
                    // COPY FROM STDIN: Syncs sent after that Execute were
                    // ignored. Until the copy ends the server is busy, so it
                    // must not be released.
                    st.in_copy = true;
                    if st.syncs_since_execute > 0 {
                        st.pending = st.pending.saturating_sub(st.syncs_since_execute);
                        st.syncs_since_execute = 0;
                        st.unsynced = true;
                    }
                }
                if typ != b'd' {
                    st.in_copy = false;
                }
            }
            _ => {}
        }
        pos += len;
    }
    if pos > 0 {
        if b.to_server.is_empty() && pos == b.from_client.len() {
            std::mem::swap(&mut b.from_client, &mut b.to_server);
        } else {
            b.to_server.extend_from_slice(&b.from_client[..pos]);
            b.from_client.advance(pos);
        }
    }
    if let Some(len) = terminate {
        // Drop the Terminate itself: the server connection outlives the client.
        b.from_client.advance(len);
        return Ok(ClientScan::Terminate);
    }
    // Make room for the rest of a partial message in one go.
    if let Some(Ok((_, len))) = protocol::header(&b.from_client) {
        if len > b.from_client.len() {
            b.from_client.reserve(len - b.from_client.len());
        }
    }
    Ok(ClientScan::Ok)
}

/// Moves server bytes from `from_server` to `to_client`. Streaming: a large
/// message passes through in pieces; only headers (and ReadyForQuery's
/// status byte) are read.
pub fn scan_server(b: &mut Buffers, st: &mut TxState) -> Result<(), String> {
    let buf = &b.from_server;
    let mut pos = 0;
    loop {
        if st.server_skip > 0 {
            let n = st.server_skip.min(buf.len() - pos);
            pos += n;
            st.server_skip -= n;
            if st.server_skip > 0 {
                break;
            }
        }
        let Some(h) = protocol::header(&buf[pos..]) else {
            break;
        };
        let (typ, len) = h.map_err(|l| format!("invalid server message length {l}"))?;
        if typ == b'Z' {
            if len != 6 {
                return Err("malformed ReadyForQuery".into());
            }
            if buf.len() - pos < 6 {
                break;
            }
            st.status = buf[pos + 5];
            st.pending = st.pending.saturating_sub(1);
            pos += 6;
            continue;
        }
        pos += HEADER_LEN;
        st.server_skip = len - HEADER_LEN;
    }
    if pos > 0 {
        if b.to_client.is_empty() && pos == b.from_server.len() {
            std::mem::swap(&mut b.from_server, &mut b.to_client);
        } else {
            b.to_client.extend_from_slice(&b.from_server[..pos]);
            b.from_server.advance(pos);
        }
    }
    Ok(())
}

fn ensure_room(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

/// Runs until the connection can be released, or one side ends.
/// `shutdown` turning true makes a session-mode pump release at the next
/// idle point too.
pub async fn pump(
    client: &mut TcpStream,
    server: &mut TcpStream,
    b: &mut Buffers,
    st: &mut TxState,
    opts: &Options,
    shutdown: &mut watch::Receiver<bool>,
) -> Outcome {
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut release_on_idle = opts.release_on_idle;
    let mut closing = *shutdown.borrow();
    if closing {
        release_on_idle = true;
    }
    let mut terminated = false;
    loop {
        if !terminated {
            match scan_client(b, st, opts.max_message_size) {
                Ok(ClientScan::Ok) => {}
                Ok(ClientScan::Terminate) => terminated = true,
                Err(e) => return Outcome::ClientProtocol(e),
            }
        }
        let flushed = b.to_server.is_empty() && b.to_client.is_empty() && b.from_server.is_empty();
        if terminated && b.to_server.is_empty() {
            return Outcome::ClientTerminated;
        }
        if release_on_idle && flushed && st.is_idle() {
            return Outcome::Released;
        }
        ensure_room(&mut b.from_server);
        ensure_room(&mut b.from_client);
        tokio::select! {
            r = cr.read_buf(&mut b.from_client), if b.to_server.is_empty() && !terminated => match r {
                Ok(0) | Err(_) => return Outcome::ClientGone,
                Ok(_) => {}
            },
            r = sr.read_buf(&mut b.from_server), if b.to_client.is_empty() => match r {
                Ok(0) => return Outcome::ServerLost(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => return Outcome::ServerLost(e),
                Ok(_) => {
                    if let Err(e) = scan_server(b, st) {
                        return Outcome::ServerProtocol(e);
                    }
                }
            },
            r = cw.write_buf(&mut b.to_client), if !b.to_client.is_empty() => {
                if r.is_err() {
                    return Outcome::ClientGone;
                }
            },
            r = sw.write_buf(&mut b.to_server), if !b.to_server.is_empty() => {
                if let Err(e) = r {
                    return Outcome::ServerLost(e);
                }
            },
            r = shutdown.changed(), if !closing => {
                let _ = r;
                closing = true;
                release_on_idle = true;
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(t: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![t];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn client_scan_counts_and_keeps_partial_frames() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        let q = msg(b'Q', b"select 1\0");
        b.from_client.extend_from_slice(&q);
        b.from_client
            .extend_from_slice(&msg(b'P', b"\0select 1\0\0\0")[..7]);
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert_eq!(&b.to_server[..], &q[..]);
        assert_eq!(b.from_client.len(), 7);
        assert_eq!(st.pending, 1);
        assert!(!st.unsynced);
    }

    #[test]
    fn client_scan_extended_and_sync() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        for m in [
            msg(b'P', b"\0x\0\0\0"),
            msg(b'B', b"\0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert!(st.unsynced);
        assert_eq!(st.pending, 0);
        b.from_client.extend_from_slice(&msg(b'S', b""));
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert!(!st.unsynced);
        assert_eq!(st.pending, 1);
    }

    #[test]
    fn sync_before_copy_data_earns_no_ready_for_query() {
        // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync.
        let mut b = Buffers::default();
        let mut st = TxState::default();
        for m in [
            msg(b'B', b"\0s0\0\0\0\0\0\0\0"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert_eq!(st.pending, 1);
        b.from_client.extend_from_slice(&msg(b'd', b"1\tx\n"));
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert_eq!(
            st.pending, 0,
            "the Sync sent into copy-in mode is ignored by the server"
        );
        assert!(!st.at_rest(), "mid-COPY is never a release point");
        for m in [msg(b'c', b""), msg(b'S', b"")] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert_eq!(st.pending, 1);
        assert!(!st.in_copy);
        // Simple-protocol COPY: one Query, one ReadyForQuery.
        let mut st = TxState::default();
        for m in [
            msg(b'Q', b"COPY t FROM STDIN\0"),
            msg(b'd', b"1\n"),
            msg(b'c', b""),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20).unwrap();
        assert_eq!(st.pending, 1);
        assert!(!st.in_copy);
    }

    #[test]
    fn client_scan_rejects_bad_frames() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        b.from_client.extend_from_slice(&msg(b'z', b""));
        assert!(scan_client(&mut b, &mut st, 1 << 20)
            .unwrap_err()
            .contains("type"));
        let mut b = Buffers::default();
        b.from_client.extend_from_slice(b"Q\x00\x10\x00\x00");
        assert!(scan_client(&mut b, &mut st, 1024)
            .unwrap_err()
            .contains("max_message_size"));
        let mut b = Buffers::default();
        b.from_client.extend_from_slice(b"Q\x00\x00\x00\x01");
        assert!(scan_client(&mut b, &mut st, 1024)
            .unwrap_err()
            .contains("length"));
    }

    #[test]
    fn client_scan_stops_at_terminate() {
        let mut b = Buffers::default();
        let mut st = TxState::default();
        b.from_client.extend_from_slice(&msg(b'Q', b"commit\0"));
        b.from_client.extend_from_slice(&msg(b'X', b""));
        assert!(matches!(
            scan_client(&mut b, &mut st, 1 << 20),
            Ok(ClientScan::Terminate)
        ));
        assert_eq!(b.to_server.len(), 12);
        assert!(b.from_client.is_empty());
    }

    #[test]
    fn server_scan_streams_large_messages_and_reads_status() {
        let mut b = Buffers::default();
        let mut st = TxState {
            pending: 1,
            ..TxState::default()
        };
        let row = msg(b'D', &[7u8; 100]);
        b.from_server.extend_from_slice(&row[..50]);
        scan_server(&mut b, &mut st).unwrap();
        // The partial row is passed on at once; the rest is owed.
        assert_eq!(b.to_client.len(), 50);
        assert_eq!(st.server_skip, row.len() - 50);
        b.to_client.clear();
        b.from_server.extend_from_slice(&row[50..]);
        b.from_server.extend_from_slice(&msg(b'Z', b"T")[..5]);
        scan_server(&mut b, &mut st).unwrap();
        assert_eq!(st.server_skip, 0);
        assert_eq!(st.pending, 1, "ReadyForQuery not complete yet");
        assert_eq!(b.from_server.len(), 5);
        b.from_server.extend_from_slice(b"T");
        scan_server(&mut b, &mut st).unwrap();
        assert_eq!((st.pending, st.status), (0, b'T'));
        assert!(!st.is_idle());
        assert!(st.at_rest());
    }
}
