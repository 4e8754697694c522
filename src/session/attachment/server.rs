//! Server frames in: headers read, whole messages (or pieces of huge ones)
//! passed to the client, pgkeel's own answers held back, FATALs stopped.

use bytes::Buf;

use crate::protocol::{self, backend, field, sqlstate, TxStatus, HEADER_LEN};

use super::{Buffers, Copy, State, TokenState, Track, GROW_STEP};
use crate::classify::effects::Effects;
use crate::commit_token;

/// Server messages up to this size reach the client only whole, so a server
/// that dies mid-result leaves the client's protocol stream in step (pgkeel
/// can still answer with an ErrorResponse). Larger messages (huge rows)
/// stream through in pieces to keep memory bounded.
pub const WHOLE_MESSAGE_LIMIT: usize = 1 << 20;

/// Notes a ParameterStatus (name, value) body.
fn record_parameter(st: &mut State, mut body: &[u8]) {
    if let (Some(k), Some(v)) = (protocol::get_cstr(&mut body), protocol::get_cstr(&mut body)) {
        st.reported.push((k, v));
    }
}

/// Messages a server sends before the actual answer, identical on any server
/// for the same request.
fn is_preamble(typ: u8) -> bool {
    use backend::*;
    matches!(
        typ,
        PARSE_COMPLETE | BIND_COMPLETE | PARAMETER_DESCRIPTION | ROW_DESCRIPTION | NO_DATA
    )
}

/// A listening client's NotificationResponses sent by its own server
/// process carry the process id the client was given at login instead
/// (`client`), as they would without pgkeel. Whole messages only, from
/// `skip` (the rest of a huge message) on.
fn rename_own_notifications(buf: &mut [u8], skip: usize, server: i32, client: i32) {
    let mut pos = skip.min(buf.len());
    while let Some(Ok((typ, len))) = protocol::header(&buf[pos..]) {
        if len > WHOLE_MESSAGE_LIMIT || buf.len() - pos < len {
            return;
        }
        let pid = pos + HEADER_LEN..pos + HEADER_LEN + 4;
        if typ == backend::NOTIFICATION_RESPONSE
            && len >= HEADER_LEN + 4
            && buf[pid.clone()] == server.to_be_bytes()
        {
            buf[pid].copy_from_slice(&client.to_be_bytes());
        }
        pos += len;
    }
}

/// An autocommit write's answer (and its token's) is held back while it
/// runs, at most this much: a client that has seen nothing of it can have
/// it run again if its server dies before it commits.
pub const HOLD_LIMIT: usize = 64 * 1024;

/// What becomes of a server message while an autocommit write carries a
/// token after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trail {
    /// Forwarded as ever.
    Pass,
    /// The write's answer: held back until the token's answer is in.
    Hold,
    /// The token's answer: not the client's.
    Drop,
    /// The token's CommandComplete: dropped, and the held answer goes out.
    DropRelease,
    /// The held answer goes out, then this message (an error: the write
    /// failed, or its token did and took the write with it; or more than
    /// `HOLD_LIMIT` held).
    Release,
}

fn trailing_token(st: &mut State, typ: u8, body: &[u8], held: usize) -> Trail {
    let TokenState::Trailing {
        token,
        statement_done,
        recorded,
    } = &mut st.token
    else {
        return Trail::Pass;
    };
    match typ {
        backend::COMMAND_COMPLETE if !*statement_done => {
            *statement_done = true;
            Trail::Hold
        }
        backend::COMMAND_COMPLETE => {
            st.token = if *recorded {
                TokenState::Recorded(*token)
            } else {
                TokenState::Refused
            };
            // The client now has the write's whole answer.
            st.commit_tag_sent = true;
            Trail::DropRelease
        }
        backend::DATA_ROW if *statement_done => {
            *recorded |= commit_token::data_row_true(body);
            Trail::Drop
        }
        backend::ROW_DESCRIPTION if *statement_done => Trail::Drop,
        backend::ERROR_RESPONSE | backend::READY_FOR_QUERY => {
            st.token = TokenState::Refused;
            Trail::Release
        }
        _ if held + HEADER_LEN + body.len() > HOLD_LIMIT => {
            // Too much to hold: it goes out, and the write can no longer
            // run again unseen (a replay is then verified as any other).
            st.token = TokenState::Sent(*token);
            Trail::Release
        }
        _ => Trail::Hold,
    }
}

/// Moves server bytes from `from_server` to `to_client`: whole messages,
/// except ones over `WHOLE_MESSAGE_LIMIT`, which pass in pieces. Only
/// headers (and ReadyForQuery's status byte, and ErrorResponse severities)
/// are read. A FATAL or PANIC from the server ends that server connection,
/// not the client's session: it is not forwarded, and its message is
/// returned (`Ok(Some(..))`) so the session can say what happened.
pub fn scan_server(
    b: &mut Buffers,
    st: &mut State,
    mut track: Option<&mut Track>,
) -> Result<Option<String>, String> {
    // pgkeel's own prelude (restoring session parameters) comes first.
    while st.swallow > 0 {
        let Some(h) = protocol::header(&b.from_server) else {
            return Ok(None);
        };
        let (typ, len) = h.map_err(|l| format!("invalid server message length {l}"))?;
        if len > WHOLE_MESSAGE_LIMIT {
            return Err(format!("server message of {len} bytes in the prelude"));
        }
        if b.from_server.len() < len {
            return Ok(None);
        }
        let body = &b.from_server[HEADER_LEN..len];
        // The last answer swallowed is a commit token's, if one was sent.
        let token = match st.token {
            TokenState::Sent(t) if st.swallow == 1 => Some(t),
            _ => None,
        };
        match typ {
            backend::READY_FOR_QUERY => {
                st.swallow -= 1;
                if token.is_some() {
                    // Answered without a row: it failed.
                    st.token = TokenState::Refused;
                }
            }
            // t: recorded; f: the transaction wrote nothing. Either way a
            // lookup after a loss tells the truth.
            backend::DATA_ROW if token.is_some() => {
                st.token = TokenState::Recorded(token.expect("checked"));
            }
            backend::PARAMETER_STATUS => record_parameter(st, body),
            // (The token failed, and the transaction with it: the client's
            // COMMIT will say so.)
            backend::ERROR_RESPONSE if token.is_some() => {}
            backend::ERROR_RESPONSE => {
                let f = protocol::parse_error_fields(body);
                return Err(format!(
                    "restoring session parameters failed: {}",
                    protocol::error_field(&f, field::MESSAGE).unwrap_or("?")
                ));
            }
            _ => {}
        }
        b.from_server.advance(len);
    }
    // A re-run request: the client already has this much of the answer.
    // (With `track`, where pgkeel's own messages interleave, this is done
    // message by message below.)
    while track.is_none() && st.drop_preamble > 0 && st.server_skip == 0 {
        match protocol::header(&b.from_server) {
            Some(Ok((typ, len))) if is_preamble(typ) => {
                if b.from_server.len() < len {
                    return Ok(None);
                }
                b.from_server.advance(len);
                st.drop_preamble -= 1;
                // Still counts as preamble the client has, for a further re-run.
                st.preamble += 1;
            }
            Some(_) => st.drop_preamble = 0,
            None => return Ok(None),
        }
    }
    // (In session mode, where no effects are scanned, any client may listen.)
    let listening = track.is_none() || st.effects.contains(Effects::LISTEN);
    if let Some((server, client)) = st.own_pid.filter(|_| listening) {
        rename_own_notifications(&mut b.from_server, st.server_skip, server, client);
    }
    let buf = &b.from_server;
    let mut pos = 0;
    // Start of the bytes to pass on as they are; `cut`: some were not.
    let mut start = 0;
    let mut cut = false;
    let mut fatal = None;
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
        if typ == backend::READY_FOR_QUERY && len != HEADER_LEN + 1 {
            return Err("malformed ReadyForQuery".into());
        }
        if len > WHOLE_MESSAGE_LIMIT {
            if let Some(t) = track.as_deref_mut() {
                // A huge row (or copy data): never completes anything.
                t.prepared.server_message(typ, t.conn);
            }
            st.responded = true;
            pos += HEADER_LEN;
            st.server_skip = len - HEADER_LEN;
            continue;
        }
        if buf.len() - pos < len {
            break;
        }
        let body = &buf[pos + HEADER_LEN..pos + len];
        // The SQLSTATE class of an ErrorResponse, counted if it reaches the client.
        let mut error_class = None;
        // A server ending this connection may warn first (a crash of
        // another process, 57P02; a shutdown cancelling a COMMIT's wait for
        // a synchronous standby, 57P01): pgkeel deals with the loss, so the
        // warning is not the client's (and a replayed transaction's answer
        // would never have it).
        let crash_warning = typ == backend::NOTICE_RESPONSE
            && matches!(
                protocol::error_field(&protocol::parse_error_fields(body), field::CODE),
                Some(sqlstate::CRASH_SHUTDOWN | sqlstate::ADMIN_SHUTDOWN)
            );
        match typ {
            backend::READY_FOR_QUERY => {
                st.status = TxStatus::from_byte(body[0]).ok_or("malformed ReadyForQuery status")?;
                if let Some(t) = track.as_deref_mut() {
                    t.prepared.ready(st.status);
                }
                st.responded = true;
                st.ready();
                st.journal.ready(st.status, st.pending);
                if st.pending == 0 {
                    st.commit_in_flight = false;
                    st.request_done = false;
                }
            }
            backend::PARAMETER_STATUS => record_parameter(st, body),
            backend::COPY_IN_RESPONSE => {
                // The COPY data is part of the request.
                st.request_done = false;
                let ignored = st.copy_in_started();
                if ignored > 0 {
                    if let Some(t) = track.as_deref_mut() {
                        t.prepared.forget_syncs(ignored);
                    }
                }
            }
            backend::COPY_OUT_RESPONSE if st.copy == Copy::None => st.copy = Copy::Out,
            backend::COPY_OUT_RESPONSE | backend::COPY_BOTH_RESPONSE => {
                // Replication streams, or a COPY inside a COPY: not counted.
                st.copy = Copy::Both;
                st.uncertain = true;
            }
            backend::COMMAND_COMPLETE if st.copy != Copy::None => st.copy_finished(false),
            backend::COMMAND_COMPLETE if matches!(st.token, TokenState::Recorded(_)) => {
                st.commit_tag_sent = true;
            }
            backend::ERROR_RESPONSE => {
                let fields = protocol::parse_error_fields(body);
                if matches!(
                    protocol::error_field(&fields, field::SEVERITY_RAW)
                        .or(protocol::error_field(&fields, field::SEVERITY)),
                    Some("FATAL" | "PANIC")
                ) {
                    let msg = protocol::error_field(&fields, field::MESSAGE)
                        .unwrap_or("server error")
                        .to_owned();
                    // The server says the client broke the protocol (a
                    // message it may not send during COPY IN, say): the
                    // client's fault, and its connection ends, as it would
                    // without pgkeel.
                    st.client_violation = protocol::error_field(&fields, field::CODE)
                        == Some(sqlstate::PROTOCOL_VIOLATION);
                    st.server_fatal = Some(super::ServerFatal {
                        code: protocol::error_field(&fields, field::CODE)
                            .unwrap_or(sqlstate::CONNECTION_FAILURE)
                            .to_owned(),
                        message: msg.clone(),
                    });
                    fatal = Some(msg);
                    break;
                }
                if st.copy != Copy::None {
                    st.copy_finished(true);
                }
                error_class = Some(crate::metrics::sqlstate_class(protocol::error_field(
                    &fields,
                    field::CODE,
                )));
            }
            _ => {}
        }
        let mut forward = true;
        if let Some(t) = track.as_deref_mut() {
            // Whether the message answers the client or pgkeel itself.
            forward = t.prepared.server_message(typ, t.conn);
            if forward && st.drop_preamble > 0 && typ != backend::READY_FOR_QUERY {
                if is_preamble(typ) {
                    forward = false;
                    st.drop_preamble -= 1;
                    st.preamble += 1;
                } else {
                    st.drop_preamble = 0;
                }
            }
        }
        let trail = if crash_warning {
            Trail::Drop
        } else {
            trailing_token(st, typ, body, b.held.len())
        };
        match trail {
            Trail::Pass => {}
            Trail::Drop | Trail::DropRelease => forward = false,
            Trail::Hold => {
                forward = false;
                b.held.extend_from_slice(&buf[pos..pos + len]);
            }
            Trail::Release => {
                // The held answer first, then this message.
                b.to_client.extend_from_slice(&buf[start..pos]);
                b.to_client.extend_from_slice(&b.held);
                b.held.clear();
                (start, cut) = (pos, true);
            }
        }
        if !forward {
            b.to_client.extend_from_slice(&buf[start..pos]);
            (start, cut) = (pos + len, true);
            if trail == Trail::DropRelease {
                b.to_client.extend_from_slice(&b.held);
                b.held.clear();
            }
        } else if is_preamble(typ) && !st.responded {
            st.preamble += 1;
        } else {
            st.responded = true;
            if let Some(class) = error_class {
                st.server_errors.push(class);
            }
        }
        pos += len;
        if let Some(t) = track.as_deref_mut() {
            if t.prepared.has_due() {
                b.to_client.extend_from_slice(&buf[start..pos]);
                t.prepared.due(t.conn, &mut b.to_client, st);
                (start, cut) = (pos, true);
            }
        }
    }
    if fatal.is_some() {
        // Whatever follows the FATAL is the connection's end: drop it.
        b.from_server.truncate(pos);
    }
    if cut {
        b.to_client.extend_from_slice(&b.from_server[start..pos]);
        b.from_server.advance(pos);
        return Ok(fatal);
    }
    if pos == 0 {
        // Make room for the rest of a partial message, in steps: a length
        // the server declared is not memory to set aside at once.
        if let Some(Ok((_, len))) = protocol::header(&b.from_server) {
            if len <= WHOLE_MESSAGE_LIMIT && len > b.from_server.capacity() {
                b.from_server
                    .reserve((len - b.from_server.len()).min(GROW_STEP));
            }
        }
        return Ok(fatal);
    }
    if b.to_client.is_empty() {
        // Hand the whole buffer over and copy back only the partial tail:
        // in steady state nothing is allocated and little is copied.
        std::mem::swap(&mut b.from_server, &mut b.to_client);
        if pos < b.to_client.len() {
            b.from_server.extend_from_slice(&b.to_client[pos..]);
            b.to_client.truncate(pos);
        }
    } else {
        b.to_client.extend_from_slice(&b.from_server[..pos]);
        b.from_server.advance(pos);
    }
    Ok(fatal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn notification(pid: i32) -> BytesMut {
        let mut m = BytesMut::new();
        m.put_u8(backend::NOTIFICATION_RESPONSE);
        m.put_i32(4 + 4 + 4 + 2);
        m.put_i32(pid);
        m.put_slice(b"foo\0\0");
        m
    }

    #[test]
    fn an_autocommit_writes_answer_waits_for_its_token() {
        use crate::commit_token::Token;
        use crate::session::attachment::testing::msg;
        let mut st = State {
            pending: 1,
            commit_in_flight: true,
            token: TokenState::Trailing {
                token: Token(9),
                statement_done: false,
                recorded: false,
            },
            ..State::default()
        };
        let mut b = Buffers::default();
        let answer = [
            msg(backend::ROW_DESCRIPTION, b"\0\0"),
            msg(backend::DATA_ROW, &[0, 1, 0, 0, 0, 2, b'4', b'2']),
            msg(backend::COMMAND_COMPLETE, b"INSERT 0 1\0"),
        ]
        .concat();
        b.from_server.extend_from_slice(&answer);
        scan_server(&mut b, &mut st, None).unwrap();
        assert!(b.to_client.is_empty(), "held until the token is in");
        assert_eq!(&b.held[..], &answer[..]);
        assert_eq!(st.commit_token(), Some(Token(9)));
        // The token's answer: taken out; the write's goes out, then the
        // ReadyForQuery.
        let token = [
            msg(backend::ROW_DESCRIPTION, b"\0\0"),
            msg(backend::DATA_ROW, &[0, 1, 0, 0, 0, 1, b't']),
            msg(backend::COMMAND_COMPLETE, b"SELECT 1\0"),
        ]
        .concat();
        let ready = msg(backend::READY_FOR_QUERY, b"I");
        b.from_server.extend_from_slice(&token);
        b.from_server.extend_from_slice(&ready);
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(b.to_client, [answer.clone(), ready].concat());
        assert!(b.held.is_empty());
        assert_eq!(st.token, TokenState::Recorded(Token(9)));
        // A failed write: its error goes out at once.
        let mut st = State {
            pending: 1,
            token: TokenState::Trailing {
                token: Token(9),
                statement_done: false,
                recorded: false,
            },
            ..State::default()
        };
        let mut b = Buffers::default();
        protocol::put_error(
            &mut b.from_server,
            protocol::Severity::Error,
            "23505",
            "duplicate",
        );
        scan_server(&mut b, &mut st, None).unwrap();
        assert!(!b.to_client.is_empty());
        assert_eq!(st.token, TokenState::Refused);
    }

    #[test]
    fn warnings_of_a_connection_ending_are_not_the_clients() {
        let mut b = Buffers::default();
        let mut st = State {
            pending: 1,
            ..State::default()
        };
        let mut other = BytesMut::new();
        protocol::put_notice(&mut other, "01000", "an ordinary warning");
        for code in [sqlstate::CRASH_SHUTDOWN, sqlstate::ADMIN_SHUTDOWN] {
            protocol::put_notice(&mut b.from_server, code, "terminating connection");
        }
        b.from_server.extend_from_slice(&other);
        scan_server(&mut b, &mut st, None).unwrap();
        assert_eq!(b.to_client, other, "only the ordinary warning passes");
        assert!(b.from_server.is_empty());
    }

    #[test]
    fn own_notifications_name_the_clients_process_id() {
        let mut buf = notification(7);
        buf.extend_from_slice(&notification(8));
        let mut ready = BytesMut::new();
        protocol::put_ready(&mut ready, TxStatus::Idle);
        buf.extend_from_slice(&ready);
        buf.extend_from_slice(&notification(7)[..6]);
        let mut want = notification(42);
        want.extend_from_slice(&notification(8));
        want.extend_from_slice(&ready);
        want.extend_from_slice(&notification(7)[..6]);
        rename_own_notifications(&mut buf, 0, 7, 42);
        assert_eq!(buf, want, "only whole ones from the client's own server");
        // The rest of a huge message is skipped, not read as messages.
        let mut skipped = notification(7);
        rename_own_notifications(&mut skipped, 3, 7, 42);
        assert_eq!(skipped, notification(7));
    }
}
