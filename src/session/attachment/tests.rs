//! Unit and property tests of the attachment core: no sockets, no server.

use bytes::BytesMut;
use proptest::prelude::*;

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

// ---- a model of PostgreSQL's side, for the property tests ----

/// What a generated statement does on the model server.
#[derive(Debug, Clone, Copy)]
enum Sql {
    Select,
    Fail,
    CopyIn,
    CopyOut,
    Begin,
    Commit,
}

impl Sql {
    fn text(self) -> &'static [u8] {
        match self {
            Sql::Select => b"SELECT 1\0",
            Sql::Fail => b"SELECT 1/0\0",
            Sql::CopyIn => b"COPY t FROM STDIN\0",
            Sql::CopyOut => b"COPY t TO STDOUT\0",
            Sql::Begin => b"BEGIN\0",
            Sql::Commit => b"COMMIT\0",
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Client {
    Query(Sql),
    Parse,
    Bind,
    Describe,
    Execute(Sql),
    Sync,
    Flush,
    Close,
    FunctionCall,
    CopyData,
    CopyDone,
    CopyFail,
}

impl Client {
    fn bytes(self) -> Vec<u8> {
        use frontend::*;
        match self {
            Client::Query(s) => msg(QUERY, s.text()),
            Client::Parse => msg(PARSE, b"\0SELECT $1\0\0\0"),
            Client::Bind => msg(BIND, b"\0\0\0\0\0\0\0\0"),
            Client::Describe => msg(DESCRIBE, b"P\0"),
            Client::Execute(s) => {
                // The statement rides in the portal name, for the model.
                let mut body = vec![s as u8 + b'a', 0];
                body.extend_from_slice(&[0, 0, 0, 0]);
                msg(EXECUTE, &body)
            }
            Client::Sync => msg(SYNC, b""),
            Client::Flush => msg(FLUSH, b""),
            Client::Close => msg(CLOSE, b"P\0"),
            Client::FunctionCall => msg(FUNCTION_CALL, b"\0\0\0\x01\0\0\0\0\0\0"),
            Client::CopyData => msg(COPY_DATA, b"1\n"),
            Client::CopyDone => msg(COPY_DONE, b""),
            Client::CopyFail => msg(COPY_FAIL, b"stop\0"),
        }
    }
}

fn client_strategy() -> impl Strategy<Value = Client> {
    let sql = prop_oneof![
        4 => Just(Sql::Select),
        1 => Just(Sql::Fail),
        1 => Just(Sql::CopyIn),
        1 => Just(Sql::CopyOut),
        1 => Just(Sql::Begin),
        1 => Just(Sql::Commit),
    ];
    prop_oneof![
        2 => sql.clone().prop_map(Client::Query),
        1 => Just(Client::Parse),
        1 => Just(Client::Bind),
        1 => Just(Client::Describe),
        2 => sql.prop_map(Client::Execute),
        3 => Just(Client::Sync),
        1 => Just(Client::Flush),
        1 => Just(Client::Close),
        1 => Just(Client::FunctionCall),
        2 => Just(Client::CopyData),
        1 => Just(Client::CopyDone),
        1 => Just(Client::CopyFail),
    ]
}

/// PostgreSQL's message loop as far as the core's counting goes: COPY
/// mode, skipping to Sync after an error, stray copy messages ignored.
#[derive(Default)]
struct Server {
    copy_in: Option<bool>,
    skip_to_sync: bool,
    status: Option<TxStatus>,
    out: Vec<u8>,
}

impl Server {
    fn status(&self) -> TxStatus {
        self.status.unwrap_or(TxStatus::Idle)
    }

    fn put(&mut self, typ: u8, body: &[u8]) {
        self.out.extend_from_slice(&msg(typ, body));
    }

    fn ready(&mut self) {
        let s = self.status().to_byte();
        self.put(backend::READY_FOR_QUERY, &[s]);
    }

    fn error(&mut self, extended: bool) {
        let mut e = BytesMut::new();
        protocol::put_error(&mut e, protocol::Severity::Error, "22012", "boom");
        self.out.extend_from_slice(&e);
        if self.status() == TxStatus::InTransaction {
            self.status = Some(TxStatus::Failed);
        }
        if extended {
            self.skip_to_sync = true;
        } else {
            self.ready();
        }
    }

    /// Runs `sql`; `extended`: from an Execute (no ReadyForQuery of its own).
    fn run(&mut self, sql: Sql, extended: bool) {
        if self.status() == TxStatus::Failed && !matches!(sql, Sql::Commit) {
            return self.error(extended);
        }
        match sql {
            Sql::Select => {
                self.put(backend::DATA_ROW, b"\0\x01\0\0\0\x011");
                self.put(backend::COMMAND_COMPLETE, b"SELECT 1\0");
            }
            Sql::Fail => return self.error(extended),
            Sql::CopyIn => {
                self.put(backend::COPY_IN_RESPONSE, b"\0\0\0");
                self.copy_in = Some(extended);
                return;
            }
            Sql::CopyOut => {
                self.put(backend::COPY_OUT_RESPONSE, b"\0\0\0");
                self.put(backend::COPY_DATA, b"1\n");
                self.put(backend::COPY_DONE, b"");
                self.put(backend::COMMAND_COMPLETE, b"COPY 1\0");
            }
            Sql::Begin => {
                self.status = Some(TxStatus::InTransaction);
                self.put(backend::COMMAND_COMPLETE, b"BEGIN\0");
            }
            Sql::Commit => {
                let tag: &[u8] = if self.status() == TxStatus::Failed {
                    b"ROLLBACK\0"
                } else {
                    b"COMMIT\0"
                };
                self.status = Some(TxStatus::Idle);
                self.put(backend::COMMAND_COMPLETE, tag);
            }
        }
        if !extended {
            self.ready();
        }
    }

    fn receive(&mut self, m: Client) {
        if let Some(extended) = self.copy_in {
            match m {
                Client::CopyData | Client::Sync | Client::Flush => {}
                Client::CopyDone => {
                    self.copy_in = None;
                    self.put(backend::COMMAND_COMPLETE, b"COPY 1\0");
                    if !extended {
                        self.ready();
                    }
                }
                _ => {
                    // CopyFail, or anything else: the COPY fails.
                    self.copy_in = None;
                    self.error(extended);
                }
            }
            return;
        }
        if self.skip_to_sync && !matches!(m, Client::Sync) {
            return;
        }
        match m {
            Client::Query(sql) => self.run(sql, false),
            Client::Parse => self.put(backend::PARSE_COMPLETE, b""),
            Client::Bind => self.put(backend::BIND_COMPLETE, b""),
            Client::Describe => self.put(backend::NO_DATA, b""),
            Client::Close => self.put(backend::CLOSE_COMPLETE, b""),
            Client::Execute(sql) => self.run(sql, true),
            Client::Sync => {
                self.skip_to_sync = false;
                self.ready();
            }
            Client::FunctionCall => {
                self.put(backend::FUNCTION_CALL_RESPONSE, b"\xff\xff\xff\xff");
                self.ready();
            }
            Client::Flush | Client::CopyData | Client::CopyDone | Client::CopyFail => {}
        }
    }

    /// Nothing more will come, and nothing the next client sends would be
    /// skipped or read as COPY data.
    fn settled(&self, delivered: usize) -> bool {
        delivered == self.out.len()
            && self.copy_in.is_none()
            && !self.skip_to_sync
            && self.status() == TxStatus::Idle
    }
}

/// Runs `messages` through the core and the model server, in rounds: the
/// client sends a few, the server answers in pieces. Checks at every step
/// that a Clean release means the model server is settled.
fn run_session(messages: &[Client], rounds: &[(usize, usize)]) -> Result<(), TestCaseError> {
    let mut att = Attachment::default();
    let mut server = Server::default();
    let mut sent = 0;
    let mut delivered = 0;
    let mut rounds = rounds.iter().cycle();
    while sent < messages.len() || delivered < server.out.len() {
        let &(n_client, n_server) = rounds.next().expect("cycled");
        for m in messages.iter().skip(sent).take(n_client) {
            att.bufs.from_client.extend_from_slice(&m.bytes());
            server.receive(*m);
            sent += 1;
        }
        att.feed_client(1 << 20, None)
            .map_err(TestCaseError::fail)?;
        att.bufs.to_server.clear();
        check(&att, &server, delivered, sent == messages.len())?;
        let end = (delivered + n_server).min(server.out.len());
        att.bufs
            .from_server
            .extend_from_slice(&server.out[delivered..end]);
        delivered = end;
        att.feed_server(None).map_err(TestCaseError::fail)?;
        att.bufs.to_client.clear();
        check(&att, &server, delivered, sent == messages.len())?;
    }
    Ok(())
}

fn check(
    att: &Attachment,
    server: &Server,
    delivered: usize,
    all_sent: bool,
) -> Result<(), TestCaseError> {
    if att.release(None) == Release::Clean {
        prop_assert!(
            server.settled(delivered),
            "released while the server owes {} bytes (copy {:?}, skipping {}, {:?}), all sent: {}",
            server.out.len() - delivered,
            server.copy_in,
            server.skip_to_sync,
            server.status(),
            all_sent
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    /// Random client sequences (stray COPY messages included) never make
    /// the core claim Clean while the server owes anything.
    #[test]
    fn never_clean_while_the_server_owes(
        messages in prop::collection::vec(client_strategy(), 1..40),
        rounds in prop::collection::vec((1usize..6, 1usize..64), 1..8),
    ) {
        run_session(&messages, &rounds)?;
    }

    /// The regression of the stray-COPY attack, with any chunking.
    #[test]
    fn stray_copy_then_query_is_answered_before_release(
        rounds in prop::collection::vec((1usize..6, 1usize..64), 1..8),
    ) {
        let messages = [
            Client::CopyData,
            Client::Sync,
            Client::CopyDone,
            Client::Query(Sql::Select),
        ];
        run_session(&messages, &rounds)?;
    }

    /// Any split of a client stream gives the same forwarded bytes and the
    /// same state, with and without statement tracking.
    #[test]
    fn client_stream_splits_do_not_matter(
        messages in prop::collection::vec(client_strategy(), 1..30),
        cuts in prop::collection::vec(1usize..40, 1..20),
        tracked in any::<bool>(),
    ) {
        let stream: Vec<u8> = messages.iter().flat_map(|m| m.bytes()).collect();
        let whole = client_run(&stream, &[stream.len()], tracked);
        let split = client_run(&stream, &cuts, tracked);
        prop_assert_eq!(whole, split);
    }

    /// Any split of a server stream gives the same bytes to the client and
    /// the same state.
    #[test]
    fn server_stream_splits_do_not_matter(
        messages in prop::collection::vec(client_strategy(), 1..30),
        cuts in prop::collection::vec(1usize..40, 1..20),
    ) {
        let mut server = Server::default();
        let mut client = Vec::new();
        for m in &messages {
            client.extend_from_slice(&m.bytes());
            server.receive(*m);
        }
        let whole = server_run(&client, &server.out, &[server.out.len()]);
        let split = server_run(&client, &server.out, &cuts);
        prop_assert_eq!(whole, split);
    }
}

/// What a run decided: the bytes forwarded and the state at the end.
type Decisions = (Vec<u8>, Vec<u8>, u32, bool, Copy, TxStatus, bool, Release);

fn decisions(
    att: &Attachment,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    tracked: Option<&Track>,
) -> Decisions {
    let st = &att.st;
    (
        to_server,
        to_client,
        st.pending,
        st.unsynced,
        st.copy,
        st.status,
        st.commit_in_flight,
        att.release(tracked),
    )
}

fn client_run(stream: &[u8], cuts: &[usize], tracked: bool) -> Decisions {
    let mut att = Attachment::default();
    let mut p = Prepared::new(Default::default());
    let mut conn = ConnStatements::default();
    let mut track = Track {
        prepared: &mut p,
        conn: &mut conn,
        pin_on: &[],
    };
    let mut to_server = Vec::new();
    let mut to_client = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter().cycle();
    while at < stream.len() {
        let end = (at + cuts.next().expect("cycled")).min(stream.len());
        att.bufs.from_client.extend_from_slice(&stream[at..end]);
        at = end;
        att.feed_client(1 << 20, tracked.then_some(&mut track))
            .expect("a valid stream");
        to_server.extend_from_slice(&att.bufs.to_server.split());
        to_client.extend_from_slice(&att.bufs.to_client.split());
    }
    decisions(&att, to_server, to_client, tracked.then_some(&track))
}

fn server_run(client: &[u8], stream: &[u8], cuts: &[usize]) -> Decisions {
    let mut att = Attachment::default();
    att.bufs.from_client.extend_from_slice(client);
    att.feed_client(1 << 20, None).expect("a valid stream");
    let to_server = att.bufs.to_server.split().to_vec();
    let mut to_client = Vec::new();
    let mut at = 0;
    let mut cuts = cuts.iter().cycle();
    while at < stream.len() {
        let end = (at + cuts.next().expect("cycled")).min(stream.len());
        att.bufs.from_server.extend_from_slice(&stream[at..end]);
        at = end;
        att.feed_server(None).expect("a valid stream");
        to_client.extend_from_slice(&att.bufs.to_client.split());
    }
    decisions(&att, to_server, to_client, None)
}
