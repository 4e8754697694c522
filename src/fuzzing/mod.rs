//! Fuzz targets: one function per untrusted-input parser, each taking
//! arbitrary bytes and panicking only when an invariant breaks. The
//! libFuzzer crate (`fuzz/`, nightly) and the stable corpus harness
//! (`tests.rs`, part of `cargo test --lib`) both call these, so they fuzz
//! the same code. Not an API: hidden from the docs, and it exposes nothing
//! of the library beyond what the targets call.

mod session_core;

use crate::auth::scram::{
    ClientCredential, ClientExchange, ScramKeys, ScramVerifier, ServerExchange,
};
use crate::classify::{self, words, FunctionPolicy};
use crate::protocol::{self, HEADER_LEN};
use crate::session::attachment::{scan_client, scan_server, Buffers, ClientStep, State, Track};
use crate::session::prepared::Prepared;
use crate::session::startup;
use crate::statements::ConnStatements;

pub use session_core::session_core;

/// A target: its name (the folder of its corpus under `fuzz/corpus/`) and
/// its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target, by corpus name.
pub const TARGETS: &[Target] = &[
    ("startup", startup),
    ("frontend", frontend),
    ("backend", backend),
    ("session_core", session_core),
    ("classify", classify),
];

/// Chunk sizes from a seed byte: a stream fed in pieces of 1 to 64 bytes,
/// cycling, so frames straddle reads the way a slow network splits them.
pub(crate) struct Cuts(u32);

impl Cuts {
    pub(crate) fn new(seed: u8) -> Cuts {
        Cuts(u32::from(seed) | 1)
    }

    pub(crate) fn next(&mut self) -> usize {
        // xorshift32: deterministic, never zero for an odd seed.
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 17;
        self.0 ^= self.0 << 5;
        1 + (self.0 % 64) as usize
    }
}

/// The frames of a byte stream, as `protocol::header` reads them: whole
/// frames only, the first bad or partial one ends the list.
pub(crate) fn frames(mut s: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let Some(Ok((_, len))) = protocol::header(s) {
        if s.len() < len {
            break;
        }
        out.push(&s[..len]);
        s = &s[len..];
    }
    out
}

/// The startup and authentication parsers a client reaches before it has
/// logged in: startup packets (StartupMessage, SSLRequest, GSSENCRequest,
/// CancelRequest) with their length checks, the parameters and `options`,
/// then password-family messages (PasswordMessage, SASLInitialResponse,
/// SASLResponse) through the SCRAM server side. The input is a sequence of
/// packets as a client would send them.
pub fn startup(data: &[u8]) {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    // The startup packets, as `read_startup_packet` frames them.
    while rest.len() >= 4 {
        let len = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let Some(body) = startup::startup_packet_body(len).and_then(|n| rest[4..].get(..n)) else {
            return;
        };
        rest = &rest[4 + body.len()..];
        let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        let body = &body[4..];
        match code {
            protocol::SSL_REQUEST_CODE | protocol::GSSENC_REQUEST_CODE => continue,
            protocol::CANCEL_REQUEST_CODE => return,
            v if v >> 16 == 3 => {
                if let Ok(params) = protocol::parse_startup_params(body) {
                    for (k, v) in &params {
                        if k == "options" {
                            for (name, _) in startup::startup_options(v) {
                                assert!(!name.contains('-'), "option names use underscores");
                            }
                        }
                    }
                }
                break;
            }
            _ => return,
        }
    }
    // Then the password-family messages, framed as `read_message` frames
    // them, parsed by the method the selector picks.
    let mut msgs = Vec::new();
    while let Some(Ok((typ, len))) = protocol::header(rest) {
        if len > protocol::MAX_STARTUP_PACKET || rest.len() < len {
            break;
        }
        msgs.push((typ, &rest[HEADER_LEN..len]));
        rest = &rest[len..];
    }
    let mut msgs = msgs.into_iter().map(|(_, body)| body);
    if selector & 1 == 0 {
        if let Some(body) = msgs.next() {
            if let Ok(pw) = startup::parse_password(body) {
                assert!(!pw.contains(&0));
                assert_eq!(pw.len() + 1, body.len());
            }
        }
        return;
    }
    let verifier = ScramVerifier::from_password_salt("fuzz", b"fuzz-salt", 1);
    let Some(first) = msgs.next() else { return };
    let Ok((mech, client_first)) = startup::parse_sasl_initial(first) else {
        return;
    };
    assert!(!mech.contains(&0));
    let Ok((exchange, server_first)) = ServerExchange::start(
        &verifier,
        client_first,
        false,
        crate::auth::scram::Binding::None,
    ) else {
        return;
    };
    // A client may answer with any bytes; also try them against a real
    // client-final built on this server-first, with its proof mangled.
    let fin = msgs.next().unwrap_or_default();
    let _ = exchange.finish(fin);
    let mut client = ClientExchange::start(crate::auth::scram::Binding::None).0;
    let keys = ScramKeys::from_password("fuzz", b"other", 1);
    let _ = client.respond(server_first.as_bytes(), ClientCredential::Keys(&keys));
    let _ = client.verify(fin);
}

/// The frontend frame scanner (`scan_client`), fed a client stream in
/// pieces. Untracked, what reaches the server is a prefix of the stream
/// made of whole, valid frames; tracked (transaction mode, statement names
/// rewritten) it must merely never panic. Either way a frame longer than
/// the limit is refused before its body is waited for.
pub fn frontend(data: &[u8]) {
    let Some((&opts, stream)) = data.split_first() else {
        return;
    };
    let tracked = opts & 1 == 1;
    // A small limit now and then, so the oversized path is reached.
    let max = if opts & 2 == 2 { 64 } else { 1 << 20 };
    let mut cuts = Cuts::new(opts);
    let mut prepared = Prepared::new(Default::default());
    let mut conn = ConnStatements::default();
    let mut track = Track {
        prepared: &mut prepared,
        conn: &mut conn,
        pin_on: &[],
    };
    let mut b = Buffers::default();
    let mut st = State::default();
    let mut forwarded = Vec::new();
    let mut fed = 0;
    let mut outcome = Ok(ClientStep::Ok);
    while fed < stream.len() {
        let end = (fed + cuts.next()).min(stream.len());
        b.from_client.extend_from_slice(&stream[fed..end]);
        fed = end;
        outcome = scan_client(&mut b, &mut st, max, tracked.then_some(&mut track));
        forwarded.extend_from_slice(&b.to_server.split());
        b.to_client.clear();
        if outcome != Ok(ClientStep::Ok) {
            break;
        }
        // The relay does not read while the server has a request to answer.
        if st.request_done || st.batch_waits {
            break;
        }
    }
    if tracked {
        return;
    }
    assert!(
        stream.starts_with(&forwarded),
        "forwarded bytes are the client's own"
    );
    let whole = frames(&forwarded);
    assert_eq!(
        whole.iter().map(|f| f.len()).sum::<usize>(),
        forwarded.len()
    );
    for f in &whole {
        assert!(protocol::is_frontend_type(f[0]), "type {}", f[0]);
        assert!(f.len() <= max);
        assert_ne!(
            f[0],
            protocol::frontend::TERMINATE,
            "Terminate is not forwarded"
        );
    }
    if outcome == Ok(ClientStep::Ok) {
        // Nothing is lost: what was not forwarded is still buffered.
        assert_eq!(forwarded.len() + b.from_client.len(), fed);
        // An oversized or bad header would have been an error at once.
        if let Some(h) = protocol::header(&b.from_client) {
            let (typ, len) = h.expect("an impossible length is an error");
            assert!(protocol::is_frontend_type(typ) && len <= max);
        }
    }
}

/// The backend frame scanner (`scan_server`), fed a server stream in
/// pieces. What reaches the client is whole frames of the server's stream
/// in order (some held back: a FATAL is never forwarded); a ReadyForQuery
/// forwarded sets the status the core reports.
pub fn backend(data: &[u8]) {
    let Some((&opts, stream)) = data.split_first() else {
        return;
    };
    let mut cuts = Cuts::new(opts);
    let mut b = Buffers::default();
    let mut st = State::default();
    st.pending = u32::from(opts >> 4);
    let mut to_client = Vec::new();
    let mut fed = 0;
    let mut failed = false;
    while fed < stream.len() {
        let end = (fed + cuts.next()).min(stream.len());
        b.from_server.extend_from_slice(&stream[fed..end]);
        fed = end;
        let scanned = scan_server(&mut b, &mut st, None);
        to_client.extend_from_slice(&b.to_client.split());
        failed = scanned.is_err();
        if !matches!(scanned, Ok(None)) {
            break;
        }
    }
    // In order, whole, each one of the server's own frames (messages under
    // WHOLE_MESSAGE_LIMIT are never split: fuzz inputs are all smaller,
    // bar a declared length, which the framing below stops at).
    let server = frames(stream);
    let mut next = server.iter();
    for f in frames(&to_client) {
        assert!(
            next.any(|s| *s == f),
            "a forwarded frame is the server's, in order"
        );
        if f[0] == protocol::backend::ERROR_RESPONSE {
            let fields = protocol::parse_error_fields(&f[HEADER_LEN..]);
            let sev = protocol::error_field(&fields, protocol::field::SEVERITY_RAW)
                .or(protocol::error_field(&fields, protocol::field::SEVERITY));
            assert!(
                !matches!(sev, Some("FATAL" | "PANIC")),
                "a FATAL is never forwarded"
            );
        }
    }
    // (A scan that failed forwards nothing of its buffer: the session ends.)
    if st.server_skip == 0 && !failed {
        let last_ready = frames(&to_client)
            .into_iter()
            .rev()
            .find(|f| f[0] == protocol::backend::READY_FOR_QUERY);
        if let Some(z) = last_ready {
            assert_eq!(
                Some(st.status),
                protocol::TxStatus::from_byte(z[HEADER_LEN])
            );
        }
    }
}

/// The SQL lexer and classifier: tokens, statements, the keyword
/// questions, effects, hidden settings, normalization and hints, and the
/// parser-based classification (never panics, whatever the bytes).
pub fn classify(data: &[u8]) {
    for tok in words::Tokens::new(data) {
        let _ = (tok.ident(), tok.string());
    }
    let mut n = 0;
    for stmt in words::statements(data) {
        let _ = (stmt.first_word(), stmt.words().count());
        n += 1;
        if n > data.len() + 1 {
            panic!("more statements than bytes");
        }
    }
    let (commits, lone_commit, lone_rollback) = (
        words::commits(data),
        words::lone_commit(data),
        words::lone_rollback(data),
    );
    assert!(!lone_commit || commits, "a lone COMMIT commits");
    let _ = lone_rollback;
    let fx = classify::effects::scan(data);
    let _ = (fx.pin_feature(), fx.refusal(true), fx.refusal(false));
    let mut hidden = Vec::new();
    classify::effects::hidden_settings(data, &mut hidden);
    let mut key = Vec::new();
    let _ = classify::normalize(data, &mut key);
    // Normalizing is idempotent on its own output's shape: it never grows
    // the text without bound.
    assert!(key.len() <= data.len() * 4 + 16, "normalized text grew");
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = classify::classify(sql, &FunctionPolicy::default());
    }
}

#[cfg(test)]
mod tests;
