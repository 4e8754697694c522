//! Client frames in: validated whole, counted, rewritten (transaction
//! mode), and queued for the server.

use bytes::Buf;

use crate::classify::words;
use crate::protocol::{self, frontend};
use crate::session::prepared::Verdict;

use super::{replayable_frame, Buffers, ClientStep, State, Track};

/// Moves whole client messages from `from_client` to `to_server`, counting
/// what the server will owe. Frames are validated here: an unknown type or a
/// length over `max` is a protocol violation (checked before any byte of the
/// body is waited for). With `track` (transaction mode), statement names are
/// rewritten and session effects noted.
pub fn scan_client(
    b: &mut Buffers,
    st: &mut State,
    max: usize,
    mut track: Option<&mut Track>,
) -> Result<ClientStep, String> {
    let mut pos = 0;
    // Start of the bytes to copy as they are (before `pos`).
    let mut start = 0;
    let mut terminate = None;
    st.batch_waits = false;
    while let Some(h) = protocol::header(&b.from_client[pos..]) {
        if st.request_done {
            break;
        }
        if st.journal.holds_input() {
            // A replayed transaction: the client's new messages wait until
            // the new server's answer proved the same as the old one's.
            st.batch_waits = true;
            break;
        }
        if !st.unsynced
            && track
                .as_deref()
                .is_some_and(|t| t.prepared.names_unconfirmed())
        {
            // A statement name an earlier batch recorded holds only once the
            // server answered it: an error before it makes PostgreSQL skip
            // that Parse, and pgkeel forget the name. The next batch waits,
            // so it never runs a statement the client does not have.
            st.batch_waits = true;
            break;
        }
        let (typ, len) = h.map_err(|l| format!("invalid message length {l}"))?;
        if !protocol::is_frontend_type(typ) {
            return Err(format!("invalid frontend message type {typ}"));
        }
        if len > max {
            return Err(format!(
                "message of {len} bytes exceeds max_message_size ({max} bytes)"
            ));
        }
        if b.from_client.len() - pos < len {
            break;
        }
        // An autocommit write that carries a token after it (below).
        let mut trail = None;
        if st.token_offer.is_some() && typ == frontend::QUERY && st.token_may_trail() {
            let text = protocol::query_text(typ, &b.from_client[pos..pos + len]);
            if words::lone_dml(text) {
                trail = st.token_offer.take();
            }
        }
        if st.token_offer.is_some() && typ == frontend::QUERY && st.token_may_go() {
            let text = protocol::query_text(typ, &b.from_client[pos..pos + len]);
            if words::lone_commit(text) {
                // The token goes first, in the same transaction: its answer
                // is swallowed like the prelude's.
                let token = st.token_offer.take().expect("checked");
                b.to_server.extend_from_slice(&b.from_client[start..pos]);
                start = pos;
                token.record(&mut b.to_server);
                st.swallow += 1;
                st.token = super::TokenState::Sent(token);
            }
        }
        let frame = &b.from_client[pos..pos + len];
        match typ {
            frontend::QUERY | frontend::PARSE => {
                st.commit_in_flight |= words::commits(protocol::query_text(typ, frame));
                if let Some(log) = &st.log {
                    log.client_message(typ, frame);
                }
            }
            frontend::BIND => {
                // A named statement prepared earlier may be a COMMIT.
                if let Some(t) = track.as_deref() {
                    st.commit_in_flight |= t.prepared.bind_commits(frame);
                }
            }
            _ => {}
        }
        // Kept while the request may be retried elsewhere (a read nothing
        // was answered for) or the transaction replayed.
        st.replayable &= !st.responded && replayable_frame(typ);
        if st.journal.keep(typ, len, b.replay.len()) || st.replayable {
            b.replay.extend_from_slice(frame);
        } else if !b.replay.is_empty() {
            b.replay.clear();
        }
        if typ == frontend::TERMINATE {
            terminate = Some(len);
            break;
        }
        let verdict = match track.as_deref_mut() {
            None => Verdict::Forward,
            Some(t) => {
                b.rewrite.clear();
                let instead = if matches!(typ, frontend::QUERY | frontend::PARSE | frontend::BIND) {
                    t.effects(typ, frame, st)
                } else {
                    None
                };
                match instead {
                    Some(sql) if typ == frontend::QUERY => {
                        protocol::put_query(&mut b.rewrite, &sql);
                        t.prepared.sent(typ);
                        Verdict::Replaced
                    }
                    // (A refused Parse: the error is queued, the batch dropped.)
                    _ => t
                        .prepared
                        .client_message(typ, frame, t.conn, &mut b.rewrite),
                }
            }
        };
        let sent = verdict != Verdict::Dropped;
        if let Some(token) = trail.filter(|_| verdict == Verdict::Forward) {
            // One query, one implicit transaction: the write and its token
            // commit together or not at all.
            let sql = token.after(protocol::query_text(typ, &b.from_client[pos..pos + len]));
            b.to_server.extend_from_slice(&b.from_client[start..pos]);
            protocol::put_query(&mut b.to_server, &sql);
            start = pos + len;
            st.token = super::TokenState::Trailing {
                token,
                statement_done: false,
                recorded: false,
            };
            st.commit_in_flight = true;
        }
        if let Some(t) = track.as_deref_mut() {
            st.pending += t.prepared.take_injected();
        }
        match typ {
            frontend::QUERY | frontend::FUNCTION_CALL if sent => {
                st.command_sent(false);
                st.pending += 1;
                st.queries += 1;
                st.request_done = st.one_request;
            }
            frontend::SYNC if sent => {
                if st.sync_sent() {
                    st.pending += 1;
                    st.queries += 1;
                    st.unsynced = false;
                    st.request_done = st.one_request;
                } else if let Some(t) = track.as_deref_mut() {
                    // Read as COPY input by the server: no answer comes.
                    t.prepared.forget_syncs(1);
                }
            }
            frontend::EXECUTE if sent => {
                st.command_sent(true);
                st.unsynced = true;
            }
            frontend::PARSE | frontend::BIND | frontend::DESCRIBE | frontend::CLOSE => {
                st.unsynced = true;
                st.other_sent();
            }
            frontend::FLUSH => st.unsynced = true,
            frontend::COPY_DONE | frontend::COPY_FAIL => st.copy_end_sent(),
            // CopyData: the server's COPY state says what it means.
            _ => {}
        }
        if verdict != Verdict::Forward {
            b.to_server.extend_from_slice(&b.from_client[start..pos]);
            b.to_server.extend_from_slice(&b.rewrite);
            start = pos + len;
        }
        pos += len;
        st.journal.consumed(len);
        if let Some(t) = track.as_deref_mut() {
            // pgkeel's own answers whose turn has come (nothing before them
            // is still owed by the server).
            t.prepared.due(t.conn, &mut b.to_client, st);
        }
    }
    if pos > 0 {
        if start == 0 && b.to_server.is_empty() && pos == b.from_client.len() {
            std::mem::swap(&mut b.from_client, &mut b.to_server);
        } else {
            b.to_server.extend_from_slice(&b.from_client[start..pos]);
            b.from_client.advance(pos);
        }
    }
    if let Some(len) = terminate {
        // Drop the Terminate itself: the server connection outlives the client.
        b.from_client.advance(len);
        return Ok(ClientStep::Terminate);
    }
    // The rest of a partial message is read as it comes: its declared
    // length reserves nothing.
    Ok(ClientStep::Ok)
}

#[cfg(test)]
mod tests {
    use super::super::testing::msg;
    use super::super::Copy;
    use super::*;
    use crate::protocol::backend;
    use crate::protocol::frontend::*;

    #[test]
    fn client_scan_counts_and_keeps_partial_frames() {
        let mut b = Buffers::default();
        let mut st = State::default();
        let q = msg(QUERY, b"select 1\0");
        b.from_client.extend_from_slice(&q);
        b.from_client
            .extend_from_slice(&msg(PARSE, b"\0select 1\0\0\0")[..7]);
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(&b.to_server[..], &q[..]);
        assert_eq!(b.from_client.len(), 7);
        assert_eq!(st.pending, 1);
        assert!(!st.unsynced);
    }

    #[test]
    fn client_scan_extended_and_sync() {
        let mut b = Buffers::default();
        let mut st = State::default();
        for m in [
            msg(PARSE, b"\0x\0\0\0"),
            msg(BIND, b"\0\0\0\0\0\0\0\0"),
            msg(EXECUTE, b"\0\0\0\0\0"),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert!(st.unsynced);
        assert_eq!(st.pending, 0);
        b.from_client.extend_from_slice(&msg(SYNC, b""));
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert!(!st.unsynced);
        assert_eq!(st.pending, 1);
    }

    #[test]
    fn stray_copy_messages_change_nothing() {
        // CopyData outside COPY, Sync, CopyDone, Query: the server ignores
        // the copy messages and answers both the Sync and the Query.
        let mut b = Buffers::default();
        let mut st = State::default();
        for m in [
            msg(COPY_DATA, b"x"),
            msg(SYNC, b""),
            msg(COPY_DONE, b""),
            msg(QUERY, b"SELECT pg_sleep(3), 'marker'\0"),
        ] {
            b.from_client.extend_from_slice(&m);
        }
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert_eq!(st.pending, 2);
        assert_eq!(st.copy, Copy::None);
        b.from_server
            .extend_from_slice(&msg(backend::READY_FOR_QUERY, b"I"));
        super::super::scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(st.pending, 1, "the query still runs");
        assert!(!st.at_rest());
    }

    #[test]
    fn commits_are_seen_anywhere_in_a_query() {
        for sql in [
            "/* app */ COMMIT",
            "INSERT INTO t VALUES (1); COMMIT",
            "COMMIT AND CHAIN",
            "PREPARE TRANSACTION 'x'",
            "COMMIT PREPARED 'x'",
        ] {
            let mut b = Buffers::default();
            let mut st = State::default();
            b.from_client
                .extend_from_slice(&msg(QUERY, format!("{sql}\0").as_bytes()));
            scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
            assert!(st.commit_in_flight, "{sql}");
        }
        let mut b = Buffers::default();
        let mut st = State::default();
        b.from_client
            .extend_from_slice(&msg(QUERY, b"SELECT 'COMMIT'\0"));
        scan_client(&mut b, &mut st, 1 << 20, None).unwrap();
        assert!(!st.commit_in_flight);
    }

    #[test]
    fn a_bind_of_a_named_commit_is_a_commit() {
        let mut p = crate::session::prepared::Prepared::new(Default::default());
        let mut conn = crate::statements::ConnStatements::default();
        let mut b = Buffers::default();
        let mut st = State::default();
        let mut track = Track {
            prepared: &mut p,
            conn: &mut conn,
            pin_on: &[],
        };
        b.from_client
            .extend_from_slice(&msg(PARSE, b"c\0COMMIT\0\0\0"));
        scan_client(&mut b, &mut st, 1 << 20, Some(&mut track)).unwrap();
        st.commit_in_flight = false;
        b.from_client
            .extend_from_slice(&msg(BIND, b"\0c\0\0\0\0\0\0\0"));
        scan_client(&mut b, &mut st, 1 << 20, Some(&mut track)).unwrap();
        assert!(st.commit_in_flight);
    }

    #[test]
    fn client_scan_rejects_bad_frames() {
        let mut b = Buffers::default();
        let mut st = State::default();
        b.from_client.extend_from_slice(&msg(b'z', b""));
        assert!(scan_client(&mut b, &mut st, 1 << 20, None)
            .unwrap_err()
            .contains("type"));
        let mut b = Buffers::default();
        b.from_client.extend_from_slice(b"Q\x00\x10\x00\x00");
        assert!(scan_client(&mut b, &mut st, 1024, None)
            .unwrap_err()
            .contains("max_message_size"));
        let mut b = Buffers::default();
        b.from_client.extend_from_slice(b"Q\x00\x00\x00\x01");
        assert!(scan_client(&mut b, &mut st, 1024, None)
            .unwrap_err()
            .contains("length"));
    }

    #[test]
    fn a_declared_length_reserves_nothing() {
        let mut b = Buffers::default();
        let mut st = State::default();
        // A header declaring 200 MB, within max_message_size.
        b.from_client
            .extend_from_slice(&[QUERY, 0x0b, 0xeb, 0xc2, 0x00, b'S']);
        let before = b.from_client.capacity();
        scan_client(&mut b, &mut st, 1 << 30, None).unwrap();
        assert_eq!(b.from_client.capacity(), before);
        assert!(b.from_client.capacity() < super::super::GROW_STEP * 2);
    }

    #[test]
    fn client_scan_stops_at_terminate() {
        let mut b = Buffers::default();
        let mut st = State::default();
        b.from_client.extend_from_slice(&msg(QUERY, b"commit\0"));
        b.from_client.extend_from_slice(&msg(TERMINATE, b""));
        assert_eq!(
            scan_client(&mut b, &mut st, 1 << 20, None),
            Ok(ClientStep::Terminate)
        );
        assert_eq!(b.to_server.len(), 12);
        assert!(b.from_client.is_empty());
    }
}
