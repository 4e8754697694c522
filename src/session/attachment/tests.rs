//! Unit and property tests of the attachment core: no sockets, no server.

use bytes::BytesMut;

use super::testing::msg;
use super::*;
use crate::protocol::{self, backend, frontend};
use crate::session::prepared::Prepared;
use crate::statements::ConnStatements;

#[test]
fn server_scan_forwards_only_whole_messages() {
    let mut b = Buffers::default();
    let mut st = State {
        pending: 1,
        ..State::default()
    };
    let row = msg(b'D', &[1u8; 100]);
    let done = msg(b'C', b"SELECT 2\0");
    b.from_server.extend_from_slice(&row);
    b.from_server.extend_from_slice(&done[..4]);
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(
        &b.to_client[..],
        &row[..],
        "the complete row goes, the partial one waits"
    );
    assert_eq!(&b.from_server[..], &done[..4]);
    assert!(st.responded);
    assert_eq!(st.server_skip, 0);
    b.to_client.clear();
    b.from_server.extend_from_slice(&done[4..]);
    b.from_server.extend_from_slice(&msg(b'Z', b"I"));
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(b.to_client.len(), done.len() + 6);
    assert!(st.is_idle());
}

#[test]
fn a_rerun_drops_the_preamble_the_client_already_has() {
    let mut b = Buffers::default();
    let mut st = State {
        pending: 1,
        ..State::default()
    };
    b.from_server.extend_from_slice(&msg(b'1', b""));
    b.from_server.extend_from_slice(&msg(b'2', b""));
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(
        (st.preamble, st.responded),
        (2, false),
        "preamble alone is not an answer"
    );
    // The server dies; the request runs again elsewhere.
    let mut again = State {
        pending: 1,
        drop_preamble: st.preamble,
        ..State::default()
    };
    let mut b = Buffers::default();
    let rest = [
        msg(b'D', b"\0\x01\0\0\0\x011"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'Z', b"I"),
    ]
    .concat();
    b.from_server.extend_from_slice(&msg(b'1', b""));
    b.from_server.extend_from_slice(&msg(b'2', b""));
    b.from_server.extend_from_slice(&rest);
    scan_server(&mut b, &mut again, None).unwrap();
    assert_eq!(&b.to_client[..], &rest[..]);
    assert!(again.is_idle() && again.responded);
    assert_eq!(again.preamble, 2, "a further re-run would drop both again");
}

#[test]
fn the_set_prelude_answer_is_swallowed_and_parameters_noted() {
    let mut b = Buffers::default();
    let mut st = State {
        pending: 1,
        swallow: 1,
        ..State::default()
    };
    let prelude = [
        msg(b'C', b"SET\0"),
        msg(b'S', b"TimeZone\0UTC\0"),
        msg(b'Z', b"I"),
    ]
    .concat();
    let answer = [msg(b'C', b"SELECT 1\0"), msg(b'Z', b"I")].concat();
    b.from_server.extend_from_slice(&prelude[..7]);
    scan_server(&mut b, &mut st, None).unwrap();
    assert!(b.to_client.is_empty());
    b.from_server.extend_from_slice(&prelude[7..]);
    b.from_server.extend_from_slice(&answer);
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(
        &b.to_client[..],
        &answer[..],
        "only the client's answer goes through"
    );
    assert_eq!(
        st.reported,
        vec![("TimeZone".to_string(), "UTC".to_string())]
    );
    assert!(st.is_idle());
}

#[test]
fn only_requests_that_read_are_replayed() {
    let read = [
        msg(b'P', b"\0SELECT count(*) FROM t WHERE id = $1\0\0\0"),
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    assert!(replay_reads_only(&read, None));
    let only = |frames: &[u8]| replay_reads_only(frames, None);
    assert!(only(&msg(b'Q', b"SELECT 1\0")));
    assert!(!only(&msg(b'Q', b"INSERT INTO t VALUES (1)\0")));
    assert!(!only(&msg(b'P', b"\0SELECT nextval('s')\0\0\0")));
    // An unnamed Bind needs its Parse in the copy.
    let unnamed_bind = [
        msg(b'B', b"\0\0\0\0\0\0\0\0"),
        msg(b'E', b"\0\0\0\0\0"),
        msg(b'S', b""),
    ]
    .concat();
    assert!(!only(&unnamed_bind));
    // A named one is re-run if the client's statement only reads.
    let mut p = Prepared::new(Default::default());
    let mut conn = ConnStatements::default();
    for f in [
        msg(b'P', b"r\0SELECT 1\0\0\0"),
        msg(b'P', b"w\0DELETE FROM t\0\0\0"),
    ] {
        p.client_message(b'P', &f, &mut conn, &mut BytesMut::new());
    }
    let bind = |name: &str| {
        [
            msg(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes()),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ]
        .concat()
    };
    assert!(replay_reads_only(&bind("r"), Some(&p)));
    assert!(!replay_reads_only(&bind("w"), Some(&p)));
    assert!(!replay_reads_only(&bind("unknown"), Some(&p)));
    assert!(!replay_reads_only(&bind("r"), None));
    assert!(
        !replay_reads_only(&read[..read.len() - 2], None),
        "a truncated copy is not replayed"
    );
}

#[test]
fn server_fatal_is_not_forwarded() {
    let mut b = Buffers::default();
    let mut st = State {
        pending: 1,
        ..State::default()
    };
    let row = msg(b'D', &[1u8; 10]);
    let mut fatal = BytesMut::new();
    protocol::put_error(
        &mut fatal,
        protocol::Severity::Fatal,
        "57P01",
        "terminating connection due to administrator command",
    );
    b.from_server.extend_from_slice(&row);
    b.from_server.extend_from_slice(&fatal);
    let got = scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(
        got.as_deref(),
        Some("terminating connection due to administrator command")
    );
    assert_eq!(&b.to_client[..], &row[..], "the row before it still goes");
    assert!(b.from_server.is_empty());
    // An ERROR is an ordinary answer and passes.
    let mut b = Buffers::default();
    let mut err = BytesMut::new();
    protocol::put_error(
        &mut err,
        protocol::Severity::Error,
        "42P01",
        "no such table",
    );
    b.from_server.extend_from_slice(&err);
    assert_eq!(scan_server(&mut b, &mut st, None).unwrap(), None);
    assert_eq!(&b.to_client[..], &err[..]);
}

#[test]
fn forwarded_errors_are_noted_by_class() {
    let mut st = State {
        pending: 2,
        ..State::default()
    };
    let mut b = Buffers::default();
    for (severity, code) in [
        (protocol::Severity::Error, "22012"),
        (protocol::Severity::Error, "23505"),
    ] {
        let mut e = BytesMut::new();
        protocol::put_error(&mut e, severity, code, "boom");
        b.from_server.extend_from_slice(&e);
        b.from_server.extend_from_slice(&msg(b'Z', b"I"));
    }
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(st.server_errors, vec![*b"22", *b"23"]);
    // A FATAL ends the server connection and is not forwarded: not counted.
    let mut st = State {
        pending: 1,
        ..State::default()
    };
    let mut b = Buffers::default();
    let mut fatal = BytesMut::new();
    protocol::put_error(&mut fatal, protocol::Severity::Fatal, "57P01", "bye");
    b.from_server.extend_from_slice(&fatal);
    assert!(scan_server(&mut b, &mut st, None).unwrap().is_some());
    assert!(st.server_errors.is_empty());
}

#[test]
fn server_scan_streams_large_messages_and_reads_status() {
    let mut b = Buffers::default();
    let mut st = State {
        pending: 1,
        ..State::default()
    };
    // A huge row streams through in pieces.
    let row = msg(b'D', &vec![7u8; WHOLE_MESSAGE_LIMIT + 10]);
    b.from_server.extend_from_slice(&row[..50]);
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(b.to_client.len(), 50);
    assert_eq!(st.server_skip, row.len() - 50);
    b.to_client.clear();
    b.from_server.extend_from_slice(&row[50..]);
    b.from_server.extend_from_slice(&msg(b'Z', b"T")[..5]);
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!(st.server_skip, 0);
    assert_eq!(st.pending, 1, "ReadyForQuery not complete yet");
    assert_eq!(b.from_server.len(), 5);
    b.from_server.extend_from_slice(b"T");
    scan_server(&mut b, &mut st, None).unwrap();
    assert_eq!((st.pending, st.status), (0, TxStatus::InTransaction));
    assert!(!st.is_idle());
    assert!(st.at_rest());
}

// ---- COPY state is the server's ----

fn feed(b: &mut Buffers, st: &mut State, client: &[Vec<u8>]) {
    for m in client {
        b.from_client.extend_from_slice(m);
    }
    scan_client(b, st, 1 << 20, None).unwrap();
    b.to_server.clear();
}

fn answer(b: &mut Buffers, st: &mut State, server: &[Vec<u8>]) {
    for m in server {
        b.from_server.extend_from_slice(m);
    }
    scan_server(b, st, None).unwrap();
    b.to_client.clear();
}

fn ready() -> Vec<u8> {
    msg(backend::READY_FOR_QUERY, b"I")
}

fn copy_in() -> Vec<u8> {
    msg(backend::COPY_IN_RESPONSE, b"\0\0\0")
}

fn complete(tag: &str) -> Vec<u8> {
    msg(backend::COMMAND_COMPLETE, format!("{tag}\0").as_bytes())
}

#[test]
fn extended_copy_in_ignores_the_sync_sent_with_its_execute() {
    // tokio-postgres: Bind, Execute, Sync, then the data, CopyDone, Sync.
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[
            msg(frontend::BIND, b"\0s0\0\0\0\0\0\0\0"),
            msg(frontend::EXECUTE, b"\0\0\0\0\0"),
            msg(frontend::SYNC, b""),
        ],
    );
    assert_eq!(st.pending, 1);
    answer(
        &mut b,
        &mut st,
        &[msg(backend::BIND_COMPLETE, b""), copy_in()],
    );
    assert_eq!(
        st.pending, 0,
        "the Sync sent into copy-in mode is ignored by the server"
    );
    assert_eq!(st.copy, Copy::In);
    assert!(!st.at_rest(), "mid-COPY is never a release point");
    feed(&mut b, &mut st, &[msg(frontend::COPY_DATA, b"1\tx\n")]);
    // A Sync inside the data is read as COPY input too.
    feed(&mut b, &mut st, &[msg(frontend::SYNC, b"")]);
    assert_eq!(st.pending, 0);
    feed(
        &mut b,
        &mut st,
        &[msg(frontend::COPY_DONE, b""), msg(frontend::SYNC, b"")],
    );
    assert_eq!(st.pending, 1);
    answer(&mut b, &mut st, &[complete("COPY 1")]);
    assert_eq!(st.copy, Copy::None);
    assert!(!st.at_rest());
    answer(&mut b, &mut st, &[ready()]);
    assert!(st.is_idle() && !st.uncertain);
}

#[test]
fn simple_copy_in_is_one_request() {
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[msg(frontend::QUERY, b"COPY t FROM STDIN\0")],
    );
    answer(&mut b, &mut st, &[copy_in()]);
    feed(
        &mut b,
        &mut st,
        &[
            msg(frontend::COPY_DATA, b"1\n"),
            msg(frontend::COPY_DONE, b""),
        ],
    );
    assert_eq!((st.pending, st.copy), (1, Copy::In));
    assert!(!st.unsynced, "a simple COPY needs no Sync");
    answer(&mut b, &mut st, &[complete("COPY 1")]);
    answer(&mut b, &mut st, &[ready()]);
    assert!(st.is_idle());
}

#[test]
fn a_failed_copy_in_ends_the_copy() {
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[msg(frontend::QUERY, b"COPY t FROM STDIN\0")],
    );
    answer(&mut b, &mut st, &[copy_in()]);
    feed(&mut b, &mut st, &[msg(frontend::COPY_FAIL, b"no\0")]);
    let mut err = BytesMut::new();
    protocol::put_error(
        &mut err,
        protocol::Severity::Error,
        "57014",
        "COPY from stdin failed",
    );
    answer(&mut b, &mut st, &[err.to_vec(), ready()]);
    assert!(st.is_idle());
}

#[test]
fn copy_out_is_the_servers_until_its_command_completes() {
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[msg(frontend::QUERY, b"COPY t TO STDOUT\0")],
    );
    answer(
        &mut b,
        &mut st,
        &[
            msg(backend::COPY_OUT_RESPONSE, b"\0\0\0"),
            msg(backend::COPY_DATA, b"1\n"),
        ],
    );
    assert_eq!(st.copy, Copy::Out);
    answer(
        &mut b,
        &mut st,
        &[msg(backend::COPY_DONE, b""), complete("COPY 1")],
    );
    assert_eq!(st.copy, Copy::None);
    answer(&mut b, &mut st, &[ready()]);
    assert!(st.is_idle());
}

#[test]
fn a_command_sent_into_copy_is_never_released() {
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[msg(frontend::QUERY, b"COPY t FROM STDIN\0")],
    );
    answer(&mut b, &mut st, &[copy_in()]);
    feed(&mut b, &mut st, &[msg(frontend::QUERY, b"SELECT 1\0")]);
    assert!(st.uncertain);
    let mut err = BytesMut::new();
    protocol::put_error(
        &mut err,
        protocol::Severity::Error,
        "08P01",
        "unexpected message",
    );
    answer(&mut b, &mut st, &[err.to_vec(), ready()]);
    // PostgreSQL read the SELECT as bad COPY input: it is never answered.
    assert!(st.uncertain);
    let att = Attachment { bufs: b, st };
    assert_ne!(att.release(None), Release::Clean);
}

#[test]
fn a_copy_answering_an_earlier_command_is_never_released() {
    // COPY in a Query, then an extended batch before the CopyInResponse.
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[
            msg(frontend::QUERY, b"COPY t FROM STDIN\0"),
            msg(frontend::BIND, b"\0\0\0\0\0\0\0\0"),
            msg(frontend::EXECUTE, b"\0\0\0\0\0"),
            msg(frontend::SYNC, b""),
        ],
    );
    answer(&mut b, &mut st, &[copy_in()]);
    assert!(st.uncertain);
}

#[test]
fn release_is_a_positive_proof() {
    let mut att = Attachment::default();
    assert_eq!(att.release(None), Release::Clean);
    att.st.pending = 1;
    assert_eq!(att.release(None), Release::NotYet(NotYet::Owed(1)));
    att.st.pending = 0;
    att.st.unsynced = true;
    assert_eq!(att.release(None), Release::NotYet(NotYet::Unsynced));
    att.st.unsynced = false;
    att.st.swallow = 1;
    assert_eq!(att.release(None), Release::NotYet(NotYet::Prelude));
    att.st.swallow = 0;
    att.st.copy = Copy::In;
    assert_eq!(att.release(None), Release::NotYet(NotYet::Copy(Copy::In)));
    att.st.copy = Copy::None;
    att.st.server_skip = 3;
    assert_eq!(att.release(None), Release::NotYet(NotYet::PartialMessage));
    att.st.server_skip = 0;
    att.bufs.from_server.extend_from_slice(b"Z\0");
    assert_eq!(att.release(None), Release::NotYet(NotYet::PartialMessage));
    att.bufs.from_server.clear();
    att.bufs.to_client.extend_from_slice(&ready());
    assert_eq!(att.release(None), Release::NotYet(NotYet::Unflushed));
    att.bufs.to_client.clear();
    att.st.status = TxStatus::InTransaction;
    assert_eq!(
        att.release(None),
        Release::NotYet(NotYet::InTransaction(TxStatus::InTransaction))
    );
    att.st.status = TxStatus::Idle;
    att.st.pinned = Some(crate::config::PinFeature::Listen);
    assert_eq!(
        att.release(None),
        Release::Pinned(crate::config::PinFeature::Listen)
    );
    // A reply pgkeel still has queued.
    let mut att = Attachment::default();
    let mut p = Prepared::new(Default::default());
    let mut conn = ConnStatements::default();
    p.client_message(
        frontend::PARSE,
        &msg(frontend::PARSE, b"a\0SELECT 1\0\0\0"),
        &mut conn,
        &mut BytesMut::new(),
    );
    let track = Track {
        prepared: &mut p,
        conn: &mut conn,
        pin_on: &[],
    };
    assert_eq!(
        att.release(Some(&track)),
        Release::NotYet(NotYet::QueuedReply)
    );
    att.st.pending = 0;
}

#[test]
fn buffers_shrink_back_after_a_large_message() {
    let mut b = Buffers::default();
    b.from_client.reserve(4 << 20);
    b.from_client.extend_from_slice(b"Q");
    b.shrink();
    assert!(b.from_client.capacity() <= SHRINK_TO * 2);
    assert_eq!(&b.from_client[..], b"Q");
    let mut small = BytesMut::with_capacity(64 * 1024);
    small.extend_from_slice(b"x");
    let cap = small.capacity();
    shrink(&mut small);
    assert_eq!(small.capacity(), cap, "ordinary buffers are left alone");
    let mut empty = BytesMut::new();
    ensure_room(&mut empty, 1 << 30);
    assert!(empty.capacity() <= GROW_STEP * 2, "growth is bounded");
}

#[test]
fn a_request_pipelined_after_copy_done_is_counted() {
    // The next batch follows CopyDone before the server's CommandComplete:
    // its Sync is real, whatever the server's COPY state says meanwhile.
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[
            msg(frontend::BIND, b"\0\0\0\0\0\0\0\0"),
            msg(frontend::EXECUTE, b"\0\0\0\0\0"),
            msg(frontend::SYNC, b""),
        ],
    );
    answer(
        &mut b,
        &mut st,
        &[msg(backend::BIND_COMPLETE, b""), copy_in()],
    );
    feed(
        &mut b,
        &mut st,
        &[
            msg(frontend::COPY_DONE, b""),
            msg(frontend::SYNC, b""),
            msg(frontend::BIND, b"\0\0\0\0\0\0\0\0"),
            msg(frontend::EXECUTE, b"\0\0\0\0\0"),
            msg(frontend::SYNC, b""),
        ],
    );
    assert_eq!(st.pending, 2);
    answer(&mut b, &mut st, &[complete("COPY 0"), ready()]);
    assert!(!st.at_rest(), "the second batch is still owed");
    answer(
        &mut b,
        &mut st,
        &[
            msg(backend::BIND_COMPLETE, b""),
            complete("SELECT 0"),
            ready(),
        ],
    );
    assert!(st.is_idle() && !st.uncertain);
}

#[test]
fn copy_input_ended_and_synced_before_the_copy_in_response() {
    // Bind, Execute, CopyDone, Sync all sent before the CopyInResponse: the
    // Sync after CopyDone is real and closes the batch.
    let mut b = Buffers::default();
    let mut st = State::default();
    feed(
        &mut b,
        &mut st,
        &[
            msg(frontend::BIND, b"\0\0\0\0\0\0\0\0"),
            msg(frontend::EXECUTE, b"\0\0\0\0\0"),
            msg(frontend::COPY_DONE, b""),
            msg(frontend::SYNC, b""),
        ],
    );
    answer(
        &mut b,
        &mut st,
        &[
            msg(backend::BIND_COMPLETE, b""),
            copy_in(),
            complete("COPY 0"),
        ],
    );
    assert_eq!((st.pending, st.unsynced), (1, false));
    answer(&mut b, &mut st, &[ready()]);
    assert!(st.is_idle() && !st.uncertain);
}
