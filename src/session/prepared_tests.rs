//! Unit tests of `prepared.rs`: the client-name mapping and the answer queue.

use super::*;

fn msg(t: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![t];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn parse(name: &str, sql: &str) -> Vec<u8> {
    msg(b'P', format!("{name}\0{sql}\0\0\0").as_bytes())
}

fn bind(name: &str) -> Vec<u8> {
    msg(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes())
}

/// Runs client messages through; returns what went to the server.
fn send(p: &mut Prepared, conn: &mut ConnStatements, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for f in frames {
        if p.client_message(f[0], f, conn, &mut out) == Verdict::Forward {
            out.extend_from_slice(f);
        }
    }
    out.to_vec()
}

/// The stream state the answer queue sees, as the attachment core keeps it.
#[derive(Default)]
struct TestStream {
    pending: u32,
    responded: bool,
}

impl Stream for TestStream {
    fn status(&self) -> TxStatus {
        TxStatus::Idle
    }
    fn query_skipped(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }
    fn own_parse_complete(&mut self) -> bool {
        true
    }
    fn answered(&mut self) {
        self.responded = true;
    }
}

/// Runs server messages through; returns what the client gets.
fn answer(p: &mut Prepared, conn: &mut ConnStatements, frames: &[Vec<u8>]) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut st = TestStream::default();
    p.due(conn, &mut out, &mut st);
    for f in frames {
        if p.server_message(f[0], conn) {
            out.extend_from_slice(f);
        }
        p.due(conn, &mut out, &mut st);
    }
    out.to_vec()
}

fn types(bytes: &[u8]) -> String {
    let mut rest = bytes;
    let mut s = String::new();
    while let Some(Ok((t, len))) = protocol::header(rest) {
        s.push(t as char);
        rest = &rest[len..];
    }
    s
}

#[test]
fn a_statement_follows_the_client_to_another_connection() {
    let cache = Arc::new(StatementCache::default());
    let mut p = Prepared::new(cache.clone());
    let mut c1 = ConnStatements::default();
    // Transaction 1 on c1: the client's Parse is sent as pgkeel_1.
    let out = send(
        &mut p,
        &mut c1,
        &[
            parse("S_1", "select $1"),
            bind("S_1"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ],
    );
    assert_eq!(types(&out), "PBES");
    assert!(String::from_utf8_lossy(&out).contains(&format!("{}1\0", cache.prefix())));
    assert!(!String::from_utf8_lossy(&out).contains("S_1"));
    let got = answer(
        &mut p,
        &mut c1,
        &[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ],
    );
    assert_eq!(types(&got), "12CZ");
    assert!(p.settled());
    // Transaction 2 lands on c2: a Parse goes ahead of the Bind and its
    // ParseComplete is not the client's.
    let mut c2 = ConnStatements::default();
    p.reset_queue();
    let out = send(
        &mut p,
        &mut c2,
        &[bind("S_1"), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")],
    );
    assert_eq!(types(&out), "PBES");
    let got = answer(
        &mut p,
        &mut c2,
        &[
            msg(b'1', b""),
            msg(b'2', b""),
            msg(b'C', b"SELECT 1\0"),
            msg(b'Z', b"I"),
        ],
    );
    assert_eq!(types(&got), "2CZ");
    // Another client parsing the same text on c2: nothing sent, pgkeel
    // answers ParseComplete in its turn.
    let mut q = Prepared::new(cache);
    let out = send(
        &mut q,
        &mut c2,
        &[parse("other", "select $1"), msg(b'S', b"")],
    );
    assert_eq!(types(&out), "S");
    let got = answer(&mut q, &mut c2, &[msg(b'Z', b"I")]);
    assert_eq!(types(&got), "1Z");
    // The first Bind found the statement its Parse had just prepared.
    assert_eq!(
        (p.counters.prepares, p.counters.hits, q.counters.hits),
        (2, 1, 1)
    );
}

#[test]
fn close_is_answered_locally_and_the_name_can_be_reused() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(&mut p, &mut c, &[parse("a", "select 1"), msg(b'S', b"")]);
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    let out = send(
        &mut p,
        &mut c,
        &[msg(b'C', b"Sa\0"), parse("a", "select 2"), msg(b'S', b"")],
    );
    assert_eq!(types(&out), "PS", "the Close stays in pgkeel");
    let got = answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    assert_eq!(types(&got), "31Z");
    assert_eq!(c.len(), 2, "the first statement stays for other clients");
}

#[test]
fn a_duplicate_name_is_an_error_and_the_batch_is_dropped() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(&mut p, &mut c, &[parse("a", "select 1"), msg(b'S', b"")]);
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    let out = send(
        &mut p,
        &mut c,
        &[
            parse("a", "select 2"),
            bind("a"),
            msg(b'E', b"\0\0\0\0\0"),
            msg(b'S', b""),
        ],
    );
    assert_eq!(types(&out), "S");
    let got = answer(&mut p, &mut c, &[msg(b'Z', b"I")]);
    assert_eq!(types(&got), "EZ");
    assert!(String::from_utf8_lossy(&got).contains("42P05"));
}

#[test]
fn after_an_error_the_skipped_parse_is_forgotten() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    // The first Parse fails; the server skips the second (and pgkeel's
    // would-be ParseComplete for a third it already has is not sent).
    send(
        &mut p,
        &mut c,
        &[
            parse("x", "selec 1"),
            parse("y", "select 1"),
            msg(b'S', b""),
        ],
    );
    let got = answer(
        &mut p,
        &mut c,
        &[error_bytes("42601", "syntax error"), msg(b'Z', b"I")],
    );
    assert_eq!(types(&got), "EZ");
    assert!(c.is_empty(), "neither statement is on the server");
    assert!(p.is_empty(), "neither name exists for the client");
    assert!(p.settled());
}

#[test]
fn lru_eviction_closes_on_the_server_quietly() {
    let mut p = Prepared::new(Arc::default());
    p.cap = 1;
    let mut c = ConnStatements::default();
    send(&mut p, &mut c, &[parse("a", "select 1"), msg(b'S', b"")]);
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    let out = send(&mut p, &mut c, &[parse("b", "select 2"), msg(b'S', b"")]);
    assert_eq!(types(&out), "CPS");
    let got = answer(
        &mut p,
        &mut c,
        &[msg(b'3', b""), msg(b'1', b""), msg(b'Z', b"I")],
    );
    assert_eq!(types(&got), "1Z");
    assert_eq!(p.counters.evictions, 1);
    // "a" is prepared again when used.
    let out = send(&mut p, &mut c, &[bind("a"), msg(b'S', b"")]);
    assert_eq!(types(&out), "CPBS");
}

#[test]
fn syncs_sent_into_copy_in_are_forgotten() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(
        &mut p,
        &mut c,
        &[bind(""), msg(b'E', b"\0\0\0\0\0"), msg(b'S', b"")],
    );
    p.forget_syncs(1);
    send(&mut p, &mut c, &[msg(b'c', b""), msg(b'S', b"")]);
    let got = answer(
        &mut p,
        &mut c,
        &[
            msg(b'2', b""),
            msg(b'G', b"\0\0\0"),
            msg(b'C', b"COPY 1\0"),
            msg(b'Z', b"I"),
        ],
    );
    assert_eq!(types(&got), "2GCZ");
    assert!(p.settled());
}

#[test]
fn raising_query_quotes() {
    let q = raising_query("0A000", "it's refused", "h");
    assert!(q.contains("it''s refused") && q.starts_with("DO $pgkeel$"));
}

fn query(sql: &str) -> Vec<u8> {
    msg(b'Q', format!("{sql}\0").as_bytes())
}

#[test]
fn deallocate_as_sql_forgets_a_parsed_name_which_can_be_prepared_again() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(
        &mut p,
        &mut c,
        &[parse("_pg3_0", "select 1"), msg(b'S', b"")],
    );
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    let out = send(&mut p, &mut c, &[query("DEALLOCATE _pg3_0")]);
    assert_eq!(types(&out), "", "answered by pgkeel");
    let got = answer(&mut p, &mut c, &[]);
    assert_eq!(types(&got), "CZ");
    assert!(p.is_empty());
    let out = send(
        &mut p,
        &mut c,
        &[parse("_pg3_0", "select 2"), msg(b'S', b"")],
    );
    assert_eq!(types(&out), "PS");
    // Unknown names fail on the server, aborting its transaction.
    let out = send(&mut p, &mut c, &[query("DEALLOCATE nope")]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("26000") && text.contains("\"nope\" does not exist"),
        "{text}"
    );
}

#[test]
fn one_namespace_for_parse_and_sql_prepare() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(&mut p, &mut c, &[parse("s", "select 1"), msg(b'S', b"")]);
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    let out = send(&mut p, &mut c, &[query("PREPARE s AS select 1")]);
    assert!(String::from_utf8_lossy(&out).contains("42P05"));
}

#[test]
fn a_copy_from_before_a_type_change_is_closed_and_prepared_again() {
    let cache = Arc::new(StatementCache::default());
    let mut p = Prepared::new(cache.clone());
    let mut c = ConnStatements::default();
    let insert = "insert into t values ($1::e[])";
    send(&mut p, &mut c, &[parse("a", insert), msg(b'S', b"")]);
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    // Another client drops and creates the type again.
    let mut r = Prepared::new(cache.clone());
    let mut c2 = ConnStatements::default();
    send(
        &mut r,
        &mut c2,
        &[query("DROP TYPE e; CREATE TYPE e AS ENUM ('x')")],
    );
    let mut q = Prepared::new(cache.clone());
    let out = send(&mut q, &mut c, &[parse("b", insert), msg(b'S', b"")]);
    assert_eq!(types(&out), "CPS", "the old copy is closed first");
    let got = answer(
        &mut q,
        &mut c,
        &[msg(b'3', b""), msg(b'1', b""), msg(b'Z', b"I")],
    );
    assert_eq!(types(&got), "1Z");
    // The first client's next use finds the fresh copy.
    let out = send(&mut p, &mut c, &[bind("a"), msg(b'S', b"")]);
    assert_eq!(types(&out), "BS");
}

#[test]
fn the_end_of_a_transaction_that_changed_types_advances_the_epoch() {
    let cache = Arc::new(StatementCache::default());
    let mut p = Prepared::new(cache.clone());
    let mut c = ConnStatements::default();
    send(&mut p, &mut c, &[query("create type e as enum ('a')")]);
    let before = cache.epoch();
    p.ready(TxStatus::InTransaction);
    assert_eq!(cache.epoch(), before, "others cannot see it yet");
    p.ready(TxStatus::Idle);
    assert_eq!(cache.epoch(), before + 1);
    p.ready(TxStatus::Idle);
    assert_eq!(cache.epoch(), before + 1, "once");
}

#[test]
fn a_close_skipped_after_an_error_leaves_the_statement_recorded() {
    let mut p = Prepared::new(Arc::default());
    p.cap = 2;
    let mut c = ConnStatements::default();
    send(&mut p, &mut c, &[parse("a", "select 1"), msg(b'S', b"")]);
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    // "bad" fails; the eviction Close of "a" and the Parse of "b" are skipped.
    let out = send(
        &mut p,
        &mut c,
        &[
            parse("bad", "selec"),
            parse("b", "select 2"),
            msg(b'S', b""),
        ],
    );
    assert_eq!(types(&out), "PCPS");
    let got = answer(
        &mut p,
        &mut c,
        &[error_bytes("42601", "syntax error"), msg(b'Z', b"I")],
    );
    assert_eq!(types(&got), "EZ");
    assert_eq!(c.len(), 1, "\"a\" is still on the server");
    // Its next use closes and prepares it again (a bare Parse would fail
    // with 42P05 on the server).
    let out = send(&mut p, &mut c, &[bind("a"), msg(b'S', b"")]);
    assert_eq!(types(&out), "CPBS");
}

#[test]
fn an_sql_prepare_skipped_after_an_error_is_forgotten() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(
        &mut p,
        &mut c,
        &[
            parse("bad", "selec"),
            query("PREPARE s AS select 1"),
            msg(b'S', b""),
        ],
    );
    answer(
        &mut p,
        &mut c,
        &[error_bytes("42601", "syntax error"), msg(b'Z', b"I")],
    );
    assert!(p.is_empty() && c.is_empty() && p.settled());
    let out = send(&mut p, &mut c, &[query("PREPARE s AS select 1")]);
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("PREPARE pgkeel_"),
        "prepared anew, not 42P05: {text}"
    );
}

#[test]
fn an_sql_prepare_answered_by_pgkeel_and_skipped_is_forgotten_too() {
    let cache = Arc::new(StatementCache::default());
    let mut c = ConnStatements::default();
    // Another client has the statement on this connection already.
    let mut other = Prepared::new(cache.clone());
    send(&mut other, &mut c, &[query("PREPARE t AS select 1")]);
    answer(
        &mut other,
        &mut c,
        &[msg(b'C', b"PREPARE\0"), msg(b'Z', b"I")],
    );
    let mut p = Prepared::new(cache);
    send(
        &mut p,
        &mut c,
        &[
            parse("bad", "selec"),
            query("PREPARE s AS select 1"),
            msg(b'S', b""),
        ],
    );
    let got = answer(
        &mut p,
        &mut c,
        &[error_bytes("42601", "syntax error"), msg(b'Z', b"I")],
    );
    assert_eq!(types(&got), "EZ", "the skipped PREPARE gets no answer");
    assert!(p.is_empty(), "and its name is not kept");
}

#[test]
fn pg_prepared_statements_lists_the_clients_own_names() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    send(
        &mut p,
        &mut c,
        &[parse("mine", "select 42"), msg(b'S', b"")],
    );
    answer(&mut p, &mut c, &[msg(b'1', b""), msg(b'Z', b"I")]);
    let out = send(
        &mut p,
        &mut c,
        &[query("select name from pg_prepared_statements")],
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("$k$mine$k$, $k$select 42$k$"), "{text}");
    assert!(text.contains("AS pg_prepared_statements"), "{text}");
    // The unnamed Parse of a driver's query is rewritten too.
    let out = send(
        &mut p,
        &mut c,
        &[parse("", "select * from pg_prepared_statements")],
    );
    assert_eq!(types(&out), "P");
    assert!(String::from_utf8_lossy(&out).contains("$k$mine$k$"));
    // A named one lists itself too: it exists whenever it runs.
    let out = send(
        &mut p,
        &mut c,
        &[parse(
            "count",
            "select count(*) from pg_prepared_statements",
        )],
    );
    let text = String::from_utf8_lossy(&out);
    assert!(
        text.contains("$k$mine$k$") && text.contains("$k$count$k$"),
        "{text}"
    );
}

#[test]
fn a_request_run_again_records_its_parsed_names_anew() {
    let mut p = Prepared::new(Arc::default());
    let mut c = ConnStatements::default();
    let request = [
        parse("sleep", "select pg_sleep($1)"),
        bind("sleep"),
        msg(b'S', b""),
    ];
    send(&mut p, &mut c, &request);
    answer(&mut p, &mut c, &[msg(b'1', b"")]);
    // The server dies before the request is answered; it runs again on a
    // fresh connection.
    p.server_lost();
    p.forget_parsed_in(&request.concat());
    let mut fresh = ConnStatements::default();
    let out = send(&mut p, &mut fresh, &request);
    assert_eq!(types(&out), "PBS", "not refused with 42P05");
}

/// An ErrorResponse pgkeel gives itself, as bytes (for tests).
fn error_bytes(code: &str, msg: &str) -> Vec<u8> {
    let mut b = BytesMut::new();
    protocol::put_error(&mut b, protocol::Severity::Error, code, msg);
    b.to_vec()
}
