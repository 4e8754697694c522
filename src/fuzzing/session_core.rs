//! The session-core target: the attachment core (no I/O) driven by an
//! arbitrary interleaving of client and server frames, as the relay drives
//! it, checking after every step that it never calls the connection clean
//! unless the server's side of the stream proves it idle with nothing owed.

use crate::protocol::{backend, frontend, TxStatus, HEADER_LEN};
use crate::session::attachment::journal::Journal;
use crate::session::attachment::{Attachment, ClientStep, Release, ServerStep, State, Track};
use crate::session::prepared::Prepared;
use crate::statements::ConnStatements;

use super::frames;

/// Client message types the structured steps pick from.
const CLIENT_TYPES: [u8; 13] = [
    frontend::QUERY,
    frontend::PARSE,
    frontend::BIND,
    frontend::DESCRIBE,
    frontend::EXECUTE,
    frontend::CLOSE,
    frontend::FLUSH,
    frontend::SYNC,
    frontend::FUNCTION_CALL,
    frontend::COPY_DATA,
    frontend::COPY_DONE,
    frontend::COPY_FAIL,
    frontend::TERMINATE,
];

/// Server message types the structured steps pick from.
const SERVER_TYPES: [u8; 16] = [
    backend::PARSE_COMPLETE,
    backend::BIND_COMPLETE,
    backend::CLOSE_COMPLETE,
    backend::COMMAND_COMPLETE,
    backend::COPY_DATA,
    backend::COPY_DONE,
    backend::COPY_IN_RESPONSE,
    backend::COPY_OUT_RESPONSE,
    backend::DATA_ROW,
    backend::EMPTY_QUERY_RESPONSE,
    backend::ERROR_RESPONSE,
    backend::NO_DATA,
    backend::NOTICE_RESPONSE,
    backend::PARAMETER_STATUS,
    backend::ROW_DESCRIPTION,
    backend::PORTAL_SUSPENDED,
];

/// Statement texts a structured Query or Parse carries (the core reads
/// commits and session effects from them).
const TEXTS: [&[u8]; 8] = [
    b"SELECT 1",
    b"BEGIN",
    b"COMMIT",
    b"COPY t FROM STDIN",
    b"SET search_path = x",
    b"PREPARE p AS SELECT 1",
    b"DISCARD ALL",
    b"LISTEN c",
];

/// One step of the script, decoded from the input.
enum Step<'a> {
    /// Raw bytes from the client / the server, framed or not.
    ClientBytes(&'a [u8]),
    ServerBytes(&'a [u8]),
    /// A well-formed message of a picked type.
    Client(u8, Vec<u8>),
    Server(u8, Vec<u8>),
    /// A ReadyForQuery with the status byte given.
    Ready(u8),
}

fn msg(typ: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + body.len());
    v.push(typ);
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// A plausible body for a client message of `typ`, from `arg`.
fn client_body(typ: u8, arg: u8, raw: &[u8]) -> Vec<u8> {
    let text = TEXTS[usize::from(arg) % TEXTS.len()];
    let name: &[u8] = if arg & 0x80 != 0 { b"s1" } else { b"" };
    let mut b = Vec::new();
    match typ {
        frontend::QUERY => {
            b.extend_from_slice(text);
            b.push(0);
        }
        frontend::PARSE => {
            b.extend_from_slice(name);
            b.push(0);
            b.extend_from_slice(text);
            b.extend_from_slice(&[0, 0, 0]);
        }
        frontend::BIND => {
            b.push(0);
            b.extend_from_slice(name);
            b.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0]);
        }
        frontend::DESCRIBE | frontend::CLOSE => {
            b.push(if arg & 1 == 0 { b'S' } else { b'P' });
            b.extend_from_slice(name);
            b.push(0);
        }
        frontend::EXECUTE => b.extend_from_slice(&[0, 0, 0, 0, 0]),
        frontend::COPY_DATA | frontend::COPY_FAIL => {
            b.extend_from_slice(raw);
            b.push(0);
        }
        _ => {}
    }
    b
}

/// A plausible body for a server message of `typ`, from `arg`.
fn server_body(typ: u8, arg: u8, raw: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    match typ {
        backend::ERROR_RESPONSE | backend::NOTICE_RESPONSE => {
            let severity: &[u8] = match arg % 4 {
                0 => b"ERROR",
                1 => b"FATAL",
                2 => b"WARNING",
                _ => b"PANIC",
            };
            let code: &[u8] = if arg & 4 != 0 { b"08P01" } else { b"42601" };
            for (f, v) in [
                (b'S', severity),
                (b'V', severity),
                (b'C', code),
                (b'M', raw),
            ] {
                b.push(f);
                b.extend_from_slice(v);
                b.push(0);
            }
            b.push(0);
        }
        backend::COMMAND_COMPLETE => b.extend_from_slice(b"SELECT 1\0"),
        backend::PARAMETER_STATUS => b.extend_from_slice(b"search_path\0x\0"),
        backend::COPY_IN_RESPONSE | backend::COPY_OUT_RESPONSE => {
            b.extend_from_slice(&[0, 0, 0]);
        }
        _ => b.extend_from_slice(raw),
    }
    b
}

/// Decodes the script: each step is a tag byte, an argument byte, a length
/// byte and that many bytes (shorter at the end).
fn script(mut data: &[u8]) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    while let [tag, arg, len, rest @ ..] = data {
        let n = usize::from(*len).min(rest.len());
        let (raw, tail) = rest.split_at(n);
        data = tail;
        steps.push(match tag % 6 {
            0 => Step::ClientBytes(raw),
            1 => Step::ServerBytes(raw),
            2 | 3 => {
                let typ = CLIENT_TYPES[usize::from(*arg) % CLIENT_TYPES.len()];
                Step::Client(typ, client_body(typ, *len, raw))
            }
            4 => {
                let typ = SERVER_TYPES[usize::from(*arg) % SERVER_TYPES.len()];
                Step::Server(typ, server_body(typ, *len, raw))
            }
            _ => Step::Ready(match arg % 4 {
                0 | 1 => b'I',
                2 => b'T',
                _ => b'E',
            }),
        });
    }
    steps
}

/// What the stream itself shows, kept apart from the core's own counts.
#[derive(Default)]
struct Seen {
    /// Queries and FunctionCalls that reached the server.
    commands: u64,
    /// Syncs that reached the server.
    syncs: u64,
    /// ReadyForQuery messages the server sent, and the last one's status.
    readies: u64,
    last_status: Option<TxStatus>,
    /// The server sent an ErrorResponse: in the extended protocol it then
    /// skips what follows up to a Sync, Queries and FunctionCalls too, so
    /// those earn no ReadyForQuery of their own.
    errors: bool,
    /// The server's stream put it in COPY (CopyIn/Out/BothResponse) and
    /// no CommandComplete or ErrorResponse has ended it since.
    in_copy: bool,
}

impl Seen {
    fn client_sent(&mut self, bytes: &[u8]) {
        for f in frames(bytes) {
            match f[0] {
                frontend::QUERY | frontend::FUNCTION_CALL => self.commands += 1,
                frontend::SYNC => self.syncs += 1,
                _ => {}
            }
        }
    }

    /// Recounts the server's side from every byte it sent (a frame may
    /// have arrived over several steps).
    fn server_sent(&mut self, all: &[u8]) {
        self.readies = 0;
        self.last_status = None;
        self.in_copy = false;
        self.errors = false;
        for f in frames(all) {
            match f[0] {
                backend::READY_FOR_QUERY if f.len() == HEADER_LEN + 1 => {
                    self.readies += 1;
                    self.last_status = TxStatus::from_byte(f[HEADER_LEN]);
                }
                backend::COPY_IN_RESPONSE
                | backend::COPY_OUT_RESPONSE
                | backend::COPY_BOTH_RESPONSE => self.in_copy = true,
                backend::COMMAND_COMPLETE => self.in_copy = false,
                backend::ERROR_RESPONSE => {
                    self.in_copy = false;
                    self.errors = true;
                }
                _ => {}
            }
        }
    }
}

/// Asserts what `Clean` (or `Pinned`) must mean.
/// Returns whether the core said the connection may go back.
fn check_release(att: &Attachment, track: Option<&Track>, seen: &Seen, server_fed: &[u8]) -> bool {
    if matches!(att.release(track), Release::NotYet(_)) {
        return false;
    }
    let st = &att.st;
    assert_eq!(st.pending, 0, "released with ReadyForQuery owed");
    assert_eq!(st.status, TxStatus::Idle, "released inside a transaction");
    assert!(!st.unsynced && st.server_skip == 0 && !st.uncertain && st.swallow == 0);
    assert!(att.bufs.from_server.is_empty() && att.bufs.to_server.is_empty());
    // The server's own stream: every Query/FunctionCall it got earned a
    // ReadyForQuery (unless an error made the server skip some), and if
    // it got any command or Sync, the last ReadyForQuery it sent said idle.
    assert!(
        seen.errors || seen.commands <= seen.readies,
        "released with {} commands sent and {} ReadyForQuery received",
        seen.commands,
        seen.readies
    );
    if seen.commands + seen.syncs > 0 {
        assert_eq!(
            seen.last_status,
            Some(TxStatus::Idle),
            "last ReadyForQuery not idle"
        );
    }
    assert!(!seen.in_copy, "released while the server is in COPY");
    // And it ends on a message boundary.
    let whole: usize = frames(server_fed).iter().map(|f| f.len()).sum();
    assert_eq!(whole, server_fed.len(), "released mid-message");
    true
}

/// The session-core target. The first byte picks the attach's options
/// (tracked, one request at a time, replayable); the rest is the script.
pub fn session_core(data: &[u8]) {
    run(data);
}

/// Runs a script; returns the steps after which the core said "clean".
fn run(data: &[u8]) -> usize {
    let Some((&opts, rest)) = data.split_first() else {
        return 0;
    };
    let mut clean = 0;
    let tracked = opts & 1 == 1;
    let mut prepared = Prepared::new(Default::default());
    let mut conn = ConnStatements::default();
    let mut track = Track {
        prepared: &mut prepared,
        conn: &mut conn,
        pin_on: &[],
    };
    let mut att = Attachment {
        st: State::attached(
            opts & 4 != 0,
            0,
            opts & 2 != 0,
            if opts & 8 != 0 {
                Journal::recording(1 << 12)
            } else {
                Journal::off()
            },
        ),
        ..Attachment::default()
    };
    let mut seen = Seen::default();
    // Every server byte fed, and every client byte.
    let mut server_fed = Vec::new();
    let mut terminated = false;
    for step in script(rest) {
        let (client, server): (Option<Vec<u8>>, Option<Vec<u8>>) = match step {
            Step::ClientBytes(b) => (Some(b.to_vec()), None),
            Step::Client(t, body) => (Some(msg(t, &body)), None),
            Step::ServerBytes(b) => (None, Some(b.to_vec())),
            Step::Server(t, body) => (None, Some(msg(t, &body))),
            Step::Ready(s) => (None, Some(msg(backend::READY_FOR_QUERY, &[s]))),
        };
        if let Some(bytes) = client {
            if terminated {
                continue;
            }
            att.bufs.from_client.extend_from_slice(&bytes);
            // The relay stops feeding a request routed on its own once answered.
            if att.st.answered_alone() {
                continue;
            }
            match att.feed_client(1 << 20, tracked.then_some(&mut track)) {
                Ok(ClientStep::Ok) => {}
                Ok(ClientStep::Terminate) => terminated = true,
                Err(_) => return clean,
            }
            let out = att.bufs.to_server.split();
            seen.client_sent(&out);
            // pgkeel's own replies go to the client; nothing to check there.
            att.bufs.to_client.clear();
        }
        if let Some(bytes) = server {
            server_fed.extend_from_slice(&bytes);
            att.bufs.from_server.extend_from_slice(&bytes);
            let step = att.feed_server(tracked.then_some(&mut track));
            seen.server_sent(&server_fed);
            att.bufs.to_client.clear();
            match step {
                Ok(ServerStep::Ok) => {}
                // The server connection ends; nothing is released after it.
                Ok(ServerStep::Fatal(_)) | Err(_) => return clean,
            }
        }
        clean += usize::from(check_release(
            &att,
            tracked.then_some(&track),
            &seen,
            &server_fed,
        ));
    }
    clean
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_answered_idle_is_clean() {
        // Query "SELECT 1", then CommandComplete and ReadyForQuery idle.
        let mut data = vec![0u8];
        data.extend_from_slice(&[2, 0, 0]);
        data.extend_from_slice(&[4, 3, 0]);
        data.extend_from_slice(&[5, 0, 0]);
        assert_eq!(run(&data), 1, "clean after the ReadyForQuery only");
        let steps = script(&data[1..]);
        assert_eq!(steps.len(), 3);
        assert!(matches!(steps[0], Step::Client(frontend::QUERY, _)));
    }

    #[test]
    fn the_corpus_reaches_clean_and_not_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/session_core/");
        let read = |name: &str| std::fs::read(format!("{dir}{name}")).expect("a corpus file");
        assert!(run(&read("query_idle")) > 0);
        assert!(run(&read("tx_then_commit")) > 0);
        assert!(run(&read("copy_in")) > 0);
        assert_eq!(run(&read("fatal_mid")), 0);
    }

    /// Found by libFuzzer: a CopyInResponse no request asked for, a Sync
    /// sent into that COPY (so earning nothing), then CommandComplete.
    /// The core called the connection clean with a Sync never answered;
    /// a COPY nothing could have started now makes the stream uncertain.
    #[test]
    fn regress_unsolicited_copy_in_is_never_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/session_core/");
        let input = std::fs::read(format!("{dir}regress_unsolicited_copy_in")).unwrap();
        assert_eq!(run(&input), 0);
    }

    /// Found by libFuzzer after the fix above: a lone Sync, an error, then
    /// a CopyInResponse (no command was ever sent) took the Sync for COPY
    /// input and called the connection clean without its ReadyForQuery.
    #[test]
    fn regress_copy_in_after_a_lone_sync_is_never_clean() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/session_core/");
        let input = std::fs::read(format!("{dir}regress_copy_in_after_a_lone_sync")).unwrap();
        assert_eq!(run(&input), 0);
    }
}
