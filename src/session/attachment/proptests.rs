//! Property tests of the attachment core against a model of PostgreSQL's
//! message loop: no sockets, no server.

use bytes::BytesMut;
use proptest::prelude::*;

use super::testing::msg;
use super::*;
use crate::protocol::{self, backend, frontend};
use crate::session::prepared::Prepared;
use crate::statements::ConnStatements;

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

/// Sequences around COPY: starts, data, ends, and batches right after.
fn copy_strategy() -> impl Strategy<Value = Client> {
    prop_oneof![
        2 => Just(Client::Execute(Sql::CopyIn)),
        1 => Just(Client::Query(Sql::CopyIn)),
        1 => Just(Client::Execute(Sql::Select)),
        1 => Just(Client::Query(Sql::Select)),
        1 => Just(Client::Bind),
        3 => Just(Client::CopyData),
        2 => Just(Client::CopyDone),
        1 => Just(Client::CopyFail),
        3 => Just(Client::Sync),
        1 => Just(Client::Flush),
    ]
}

/// PostgreSQL's message loop as far as the core's counting goes: COPY
/// mode, skipping to Sync after an error, stray copy messages ignored.
#[derive(Default)]
struct Server {
    copy_in: Option<bool>,
    /// Extended-protocol messages ran since the last Sync: their implicit
    /// transaction is still open.
    extended_open: bool,
    /// ErrorResponses sent.
    errors: u32,
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
        self.errors += 1;
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
        if matches!(
            m,
            Client::Parse | Client::Bind | Client::Describe | Client::Close | Client::Execute(_)
        ) {
            self.extended_open = true;
        }
        if matches!(m, Client::Query(_) | Client::FunctionCall) {
            // A simple message ends the implicit transaction of the
            // extended messages before it.
            self.extended_open = false;
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
                self.extended_open = false;
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
            && !self.extended_open
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
    // And the proof comes: once everything is answered, a settled server
    // after a well-formed stream is released (unless the core gave up).
    if server.errors == 0 && well_formed(messages) && server.settled(delivered) && !att.st.uncertain
    {
        prop_assert_eq!(att.release(None), Release::Clean, "{:?}", att.st);
    }
    Ok(())
}

/// Every extended batch closed by its Sync before any simple message, and
/// no COPY FROM STDIN: with no errors, the streams for which the core must
/// also reach its proof. (After errors, loose batches or Syncs eaten by a
/// COPY it may stay on the safe side: never released, closed at the end.)
fn well_formed(messages: &[Client]) -> bool {
    let mut open = false;
    for m in messages {
        match m {
            Client::Flush | Client::Query(Sql::CopyIn) | Client::Execute(Sql::CopyIn) => {
                return false
            }
            Client::Parse
            | Client::Bind
            | Client::Describe
            | Client::Close
            | Client::Execute(_) => open = true,
            Client::Sync => open = false,
            Client::Query(_) | Client::FunctionCall if open => return false,
            _ => {}
        }
    }
    !open
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

    /// The same, with sequences that mostly start, feed and end COPYs.
    #[test]
    fn never_clean_while_the_server_owes_around_copy(
        messages in prop::collection::vec(copy_strategy(), 1..30),
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
