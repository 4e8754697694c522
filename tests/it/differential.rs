//! Differential test: random short sequences of client messages, run on a
//! raw connection straight to PostgreSQL and through the real `pgkeel`
//! binary (transaction pooling, a pool of one), must give the client the
//! same answers. A second client asks `SELECT 'other'` while each sequence
//! runs, so any answer handed to the wrong client, or any session state
//! left for the next one, shows as a difference. Only what legitimately
//! differs is normalised: backend keys and PIDs, statement names inside
//! error texts (errors compare by SQLSTATE), and the order of
//! ParameterStatus messages within a run of them.

use crate::common;
use crate::support;

use std::cell::RefCell;
use std::fmt;
use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use md5::Digest;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use support::Raw;

/// Frontend message types.
mod fe {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const SYNC: u8 = b'S';
    pub const FLUSH: u8 = b'H';
    pub const CLOSE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const PASSWORD: u8 = b'p';
    /// Describe and Close target a statement or a portal.
    pub const STATEMENT: u8 = b'S';
    pub const PORTAL: u8 = b'P';
}

/// Backend message types.
mod be {
    pub const AUTHENTICATION: u8 = b'R';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const NOTIFICATION: u8 = b'A';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const DATA_ROW: u8 = b'D';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const EMPTY_QUERY: u8 = b'I';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const ROW_DESCRIPTION: u8 = b'T';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const NO_DATA: u8 = b'n';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
}

/// Simple-protocol statements a sequence may send.
const QUERIES: &[&str] = &[
    "SELECT 1",
    "SELECT v FROM diff_t ORDER BY v",
    "SELECT 1/0",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SET work_mem = '8MB'",
    "SHOW work_mem",
    "SELECT 2; SELECT 3",
    "SELECT 'a'; SELECT 1/0; SELECT 'b'",
    "COPY diff_sink FROM STDIN",
    "COPY (SELECT 7) TO STDOUT",
    "SELECT pg_sleep(0.1), 'slept'",
];

/// Statements a Parse may prepare (none takes parameters).
const PARSED: &[&str] = &[
    "SELECT 42",
    "SELECT v FROM diff_t ORDER BY v",
    "SELECT 1/0",
    "SELEC 1",
    "BEGIN",
    "COMMIT",
    "SET work_mem = '16MB'",
    "COPY diff_sink FROM STDIN",
];

/// Statement names: the unnamed one and two named ones.
const NAMES: &[&str] = &["", "s1", "s2"];

#[derive(Clone)]
enum Msg {
    Query(&'static str),
    Parse(&'static str, &'static str),
    Bind(&'static str),
    DescribeStatement(&'static str),
    DescribePortal,
    Execute(i32),
    Sync,
    Flush,
    CloseStatement(&'static str),
    ClosePortal,
    CopyData(&'static str),
    CopyDone,
    CopyFail,
    /// int4pl(1, 2) by the fast-path function call.
    FunctionCall,
}

/// Printed as one would write the sequence by hand.
impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Query(sql) => write!(f, "Query({sql:?})"),
            Msg::Parse(name, sql) => write!(f, "Parse({name:?}, {sql:?})"),
            Msg::Bind(name) => write!(f, "Bind(portal \"\", statement {name:?})"),
            Msg::DescribeStatement(name) => write!(f, "Describe(statement {name:?})"),
            Msg::DescribePortal => write!(f, "Describe(portal \"\")"),
            Msg::Execute(max_rows) => write!(f, "Execute(portal \"\", max_rows {max_rows})"),
            Msg::Sync => write!(f, "Sync"),
            Msg::Flush => write!(f, "Flush"),
            Msg::CloseStatement(name) => write!(f, "Close(statement {name:?})"),
            Msg::ClosePortal => write!(f, "Close(portal \"\")"),
            Msg::CopyData(data) => write!(f, "CopyData({data:?})"),
            Msg::CopyDone => write!(f, "CopyDone"),
            Msg::CopyFail => write!(f, "CopyFail"),
            Msg::FunctionCall => write!(f, "FunctionCall(int4pl, 1, 2)"),
        }
    }
}

/// Every sequence ends with a Sync that clears any error it left and a
/// last Query whose 'end' row shows the stream is in step. A CopyFail comes
/// first when the sequence may have left a COPY FROM STDIN open (it is
/// not sent otherwise: a stray one is the generator's to choose).
fn suffix(seq: &[Msg]) -> Vec<Msg> {
    let mut copy_open = false;
    for m in seq {
        match m {
            Msg::Query(sql) | Msg::Parse(_, sql) if sql.ends_with("FROM STDIN") => copy_open = true,
            Msg::CopyDone | Msg::CopyFail => copy_open = false,
            _ => {}
        }
    }
    // ROLLBACK first, so that 'end' comes even after a failed transaction.
    let end = [Msg::Sync, Msg::Query("ROLLBACK; SELECT 'end'")];
    if copy_open {
        [Msg::CopyFail].into_iter().chain(end).collect()
    } else {
        end.to_vec()
    }
}

/// The messages sent for a generated sequence.
fn with_suffix(seq: &[Msg]) -> Vec<Msg> {
    seq.iter().cloned().chain(suffix(seq)).collect()
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

fn encode(m: &Msg, int4pl: u32, out: &mut BytesMut) {
    let mut body = BytesMut::new();
    let typ = match m {
        Msg::Query(sql) => {
            put_cstr(&mut body, sql);
            fe::QUERY
        }
        Msg::Parse(name, sql) => {
            put_cstr(&mut body, name);
            put_cstr(&mut body, sql);
            body.put_i16(0);
            fe::PARSE
        }
        Msg::Bind(name) => {
            put_cstr(&mut body, "");
            put_cstr(&mut body, name);
            body.put_i16(0); // parameter formats
            body.put_i16(0); // parameters
            body.put_i16(0); // result formats
            fe::BIND
        }
        Msg::DescribeStatement(name) => {
            body.put_u8(fe::STATEMENT);
            put_cstr(&mut body, name);
            fe::DESCRIBE
        }
        Msg::DescribePortal => {
            body.put_u8(fe::PORTAL);
            put_cstr(&mut body, "");
            fe::DESCRIBE
        }
        Msg::Execute(max_rows) => {
            put_cstr(&mut body, "");
            body.put_i32(*max_rows);
            fe::EXECUTE
        }
        Msg::Sync => fe::SYNC,
        Msg::Flush => fe::FLUSH,
        Msg::CloseStatement(name) => {
            body.put_u8(fe::STATEMENT);
            put_cstr(&mut body, name);
            fe::CLOSE
        }
        Msg::ClosePortal => {
            body.put_u8(fe::PORTAL);
            put_cstr(&mut body, "");
            fe::CLOSE
        }
        Msg::CopyData(data) => {
            body.put_slice(data.as_bytes());
            fe::COPY_DATA
        }
        Msg::CopyDone => fe::COPY_DONE,
        Msg::CopyFail => {
            put_cstr(&mut body, "generated CopyFail");
            fe::COPY_FAIL
        }
        Msg::FunctionCall => {
            body.put_u32(int4pl);
            body.put_i16(1); // one format code: text, for every argument
            body.put_i16(0);
            body.put_i16(2);
            for arg in ["1", "2"] {
                body.put_i32(arg.len() as i32);
                body.put_slice(arg.as_bytes());
            }
            body.put_i16(0); // text result
            fe::FUNCTION_CALL
        }
    };
    out.put_u8(typ);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
}

fn msg_strategy() -> impl Strategy<Value = Msg> {
    let name = || prop::sample::select(NAMES);
    prop_oneof![
        3 => prop::sample::select(QUERIES).prop_map(Msg::Query),
        2 => (name(), prop::sample::select(PARSED)).prop_map(|(n, sql)| Msg::Parse(n, sql)),
        2 => name().prop_map(Msg::Bind),
        1 => name().prop_map(Msg::DescribeStatement),
        1 => Just(Msg::DescribePortal),
        2 => prop::sample::select(&[0, 1][..]).prop_map(Msg::Execute),
        2 => Just(Msg::Sync),
        1 => Just(Msg::Flush),
        1 => name().prop_map(Msg::CloseStatement),
        1 => Just(Msg::ClosePortal),
        1 => prop::sample::select(&["1\n", "x\n"][..]).prop_map(Msg::CopyData),
        1 => Just(Msg::CopyDone),
        1 => Just(Msg::CopyFail),
        1 => Just(Msg::FunctionCall),
    ]
}

/// How long a missing answer is waited for. PostgreSQL answers every
/// generated sequence at once; silence is pgkeel's.
const SILENCE: Duration = Duration::from_secs(2);

/// How long the other client may wait for the pool's one connection: as
/// long as a sequence holds it.
const OTHER_WAIT: Duration = Duration::from_secs(10);

/// One received message as compared, or `None` for what legitimately
/// differs between connections (BackendKeyData).
fn describe(t: u8, mut b: &[u8]) -> Option<String> {
    let cstr =
        |b: &[u8]| String::from_utf8_lossy(b.split(|&c| c == 0).next().unwrap_or(b)).into_owned();
    let sqlstate = |b: &[u8]| {
        let f = pgkeel::protocol::parse_error_fields(b);
        let field = |c| pgkeel::protocol::error_field(&f, c).unwrap_or("?");
        format!("{} {}", field(b'S'), field(b'C'))
    };
    Some(match t {
        be::BACKEND_KEY_DATA => return None,
        be::PARSE_COMPLETE => "ParseComplete".into(),
        be::BIND_COMPLETE => "BindComplete".into(),
        be::CLOSE_COMPLETE => "CloseComplete".into(),
        be::NO_DATA => "NoData".into(),
        be::PORTAL_SUSPENDED => "PortalSuspended".into(),
        be::EMPTY_QUERY => "EmptyQueryResponse".into(),
        be::COPY_DONE => "CopyDone".into(),
        be::COPY_IN_RESPONSE => "CopyInResponse".into(),
        be::COPY_OUT_RESPONSE => "CopyOutResponse".into(),
        be::COPY_BOTH_RESPONSE => "CopyBothResponse".into(),
        be::COPY_DATA => format!("CopyData({:?})", String::from_utf8_lossy(b)),
        be::COMMAND_COMPLETE => format!("CommandComplete({})", cstr(b)),
        be::ERROR_RESPONSE => format!("Error({})", sqlstate(b)),
        be::NOTICE_RESPONSE => format!("Notice({})", sqlstate(b)),
        be::READY_FOR_QUERY => format!("ReadyForQuery({})", b[0] as char),
        be::PARAMETER_STATUS => {
            let mut parts = b.split(|&c| c == 0);
            let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let value = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            format!("ParameterStatus({name}={value})")
        }
        be::NOTIFICATION => {
            b.advance(4); // the notifying backend's PID
            let mut parts = b.split(|&c| c == 0);
            let channel = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            format!("Notification({channel})")
        }
        be::DATA_ROW => {
            let n = b.get_i16();
            let cols: Vec<String> = (0..n)
                .map(|_| match b.get_i32() {
                    len if len < 0 => "NULL".to_owned(),
                    len => {
                        let v = String::from_utf8_lossy(&b[..len as usize]).into_owned();
                        b.advance(len as usize);
                        format!("{v:?}")
                    }
                })
                .collect();
            format!("DataRow({})", cols.join(", "))
        }
        be::FUNCTION_CALL_RESPONSE => match b.get_i32() {
            len if len < 0 => "FunctionCallResponse(NULL)".into(),
            len => format!(
                "FunctionCallResponse({:?})",
                String::from_utf8_lossy(&b[..len as usize])
            ),
        },
        be::ROW_DESCRIPTION => {
            let n = b.get_i16();
            let cols: Vec<String> = (0..n)
                .map(|_| {
                    let name = cstr(b);
                    b.advance(name.len() + 1 + 18);
                    name
                })
                .collect();
            format!("RowDescription({})", cols.join(", "))
        }
        be::PARAMETER_DESCRIPTION => format!("ParameterDescription({})", b.get_i16()),
        other => format!("Message({:?})", other as char),
    })
}

/// The one difference accepted, message for message: a Parse of a name
/// the client already prepared with other text is refused by pgkeel itself
/// (42P05) before the server sees the text, where PostgreSQL reports a
/// syntax or analysis error of the text first. Both refuse the Parse, skip
/// to the Sync and leave the name as it was; only the SQLSTATE differs.
fn same_but_duplicate_precedence(direct: &[String], through: &[String]) -> bool {
    direct.len() == through.len()
        && direct
            .iter()
            .zip(through)
            .all(|(d, t)| d == t || (t == "Error(ERROR 42P05)" && d.starts_with("Error(ERROR 42")))
}

/// Sorts each run of consecutive ParameterStatus messages.
fn normalise(mut trace: Vec<String>) -> Vec<String> {
    let is_status = |s: &String| s.starts_with("ParameterStatus(");
    let mut i = 0;
    while i < trace.len() {
        let run = trace[i..].iter().take_while(|s| is_status(s)).count();
        trace[i..i + run].sort();
        i += run.max(1);
    }
    trace
}

/// Reads until a message for which `last` holds, then up to the next
/// ReadyForQuery (the message itself when it is one); stops early at EOF
/// or silence, which it records. False when it stopped early.
async fn read_until(
    raw: &mut Raw,
    last: impl Fn(&str) -> bool,
    limit: Duration,
    trace: &mut Vec<String>,
) -> bool {
    let mut seen_last = false;
    loop {
        let fut = pgkeel::protocol::read_message(&mut raw.stream, &mut raw.buf, 1 << 30);
        match tokio::time::timeout(limit, fut).await {
            Err(_) => {
                trace.push(format!("<no answer within {limit:?}>"));
                return false;
            }
            Ok(Err(_)) => {
                trace.push("<connection closed>".into());
                return false;
            }
            Ok(Ok((t, b))) => {
                let Some(d) = describe(t, &b) else { continue };
                seen_last |= last(&d);
                trace.push(d);
                if t == be::READY_FOR_QUERY && seen_last {
                    return true;
                }
            }
        }
    }
}

const OTHER_SQL: &str = "SELECT 'other', current_setting('work_mem')";
const OTHER_ROW: &str = r#"DataRow("other", "4MB")"#;
const END_ROW: &str = r#"DataRow("end")"#;

/// One side of the comparison: PostgreSQL itself, or pgkeel in front of it.
struct Side {
    addr: SocketAddr,
    /// The other client, connected for the whole test.
    other: Option<Raw>,
}

impl Side {
    async fn new(addr: SocketAddr) -> Side {
        Side {
            addr,
            other: Some(login(addr).await),
        }
    }

    /// Runs `seq`; the other client asks its question once the sequence's
    /// first ReadyForQuery has arrived (when a confused proxy lets go).
    async fn run(&mut self, seq: &[Msg], int4pl: u32) -> (Vec<String>, Vec<String>) {
        let mut raw = login(self.addr).await;
        let mut out = BytesMut::new();
        for m in &with_suffix(seq) {
            encode(m, int4pl, &mut out);
        }
        raw.send(&out).await;
        let mut trace = Vec::new();
        let in_step = read_until(&mut raw, |_| true, SILENCE, &mut trace).await;
        let mut other = self.other.take().expect("the other client");
        let asked = tokio::spawn(async move {
            other.query(OTHER_SQL).await;
            let mut t = Vec::new();
            // Its one answer; it waits while the sequence holds the connection.
            let answered = read_until(&mut other, |_| true, OTHER_WAIT, &mut t).await;
            let in_step = answered && t.iter().any(|m| m == OTHER_ROW);
            (other, t, in_step)
        });
        if in_step {
            read_until(&mut raw, |m| m == END_ROW, SILENCE, &mut trace).await;
        }
        // Gone: an open transaction is rolled back, the connection freed.
        drop(raw);
        let (other, other_trace, in_step) = asked.await.expect("the other client's task");
        if in_step {
            self.other = Some(other);
        } else {
            // Out of step: the next case gets a fresh one.
            self.other = Some(login(self.addr).await);
        }
        (normalise(trace), normalise(other_trace))
    }
}

/// The role both sides log in as: trusted by PostgreSQL, md5 with pgkeel,
/// so that logins (not what is compared) cost little.
const USER: &str = "trustuser";
const PASSWORD: &str = "trust_password";

/// Authentication request codes.
const AUTH_OK: i32 = 0;
const AUTH_MD5: i32 = 5;

/// A raw client logged in as `USER` (trust or md5).
async fn login(addr: SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(&Raw::startup_packet(&[
        ("user", USER),
        ("database", "appdb"),
    ]))
    .await;
    loop {
        let (t, body) = raw.recv().await.expect("a message during login");
        match t {
            be::AUTHENTICATION => match (&body[..4]).get_i32() {
                AUTH_OK => {}
                AUTH_MD5 => {
                    let hex = |b: &[u8]| format!("{:x}", md5::Md5::digest(b));
                    let inner = hex(format!("{PASSWORD}{USER}").as_bytes());
                    let salted = hex(&[inner.as_bytes(), &body[4..8]].concat());
                    raw.send_msg(fe::PASSWORD, format!("md5{salted}\0").as_bytes())
                        .await;
                }
                code => panic!("unexpected authentication request {code}"),
            },
            be::ERROR_RESPONSE => panic!(
                "login failed: {:?}",
                pgkeel::protocol::parse_error_fields(&body)
            ),
            be::READY_FOR_QUERY => return raw,
            _ => {}
        }
    }
}

/// The pgkeel binary, running until dropped.
struct Keel {
    child: Child,
    addr: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Keel {
    async fn start(pg_port: u16) -> Keel {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let cfg = support::config(pg_port, "pool_size = 1\nauth_method = \"md5\"", "").replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{addr}\""),
            1,
        );
        let (child, file) = support::spawn_binary(&cfg, addr).await;
        Keel {
            child,
            addr,
            _config: file,
        }
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Harness {
    pg_port: u16,
    int4pl: u32,
    direct: Side,
    keel: Keel,
    through: Side,
}

/// Tables both tests use, made once per test binary; returns int4pl's oid.
async fn setup(pg_port: u16) -> u32 {
    static DONE: tokio::sync::OnceCell<u32> = tokio::sync::OnceCell::const_new();
    *DONE
        .get_or_init(|| async {
            let su = common::pg_client(pg_port, "postgres", "postgres", "appdb").await;
            su.batch_execute(
                "CREATE TABLE diff_t (v int); INSERT INTO diff_t VALUES (1), (2), (3);
                 CREATE TABLE diff_sink (v int);
                 GRANT SELECT ON diff_t TO trustuser; GRANT INSERT ON diff_sink TO trustuser",
            )
            .await
            .unwrap();
            su.query_one("SELECT 'int4pl(int4, int4)'::regprocedure::oid", &[])
                .await
                .unwrap()
                .get(0)
        })
        .await
}

impl Harness {
    async fn start() -> Harness {
        let pg = common::shared_pg();
        let int4pl = setup(pg.port).await;
        let addr = SocketAddr::from(([127, 0, 0, 1], pg.port));
        let keel = Keel::start(pg.port).await;
        let through = Side::new(keel.addr).await;
        Harness {
            pg_port: pg.port,
            int4pl,
            direct: Side::new(addr).await,
            keel,
            through,
        }
    }

    /// A fresh pgkeel, so that a failed case leaves nothing to the next.
    async fn restart_keel(&mut self) {
        self.keel = Keel::start(self.pg_port).await;
        self.through = Side::new(self.keel.addr).await;
    }
}

/// The traces of one case, side by side, for the failure report.
fn report(seq: &[Msg], direct: &[String], through: &[String]) -> String {
    let mut s = format!("sequence (then {:?}):\n", suffix(seq));
    for m in seq {
        s.push_str(&format!("  {m:?}\n"));
    }
    s.push_str("PostgreSQL directly                          | through pgkeel\n");
    for i in 0..direct.len().max(through.len()) {
        let d = direct.get(i).map(String::as_str).unwrap_or("");
        let t = through.get(i).map(String::as_str).unwrap_or("");
        let mark = if d == t { ' ' } else { '*' };
        s.push_str(&format!("{mark} {d:<44} | {t}\n"));
    }
    s
}

/// True unless a message other than CopyData, Sync or Flush follows a
/// simple-protocol `COPY ... FROM STDIN` before its CopyDone or CopyFail:
/// PostgreSQL answers that with FATAL 08P01 ("protocol synchronization
/// was lost") and closes the connection. (Conservative: it also rejects
/// sequences whose COPY would not have started.)
fn postgres_keeps_the_connection(seq: &[Msg]) -> bool {
    let mut in_copy = false;
    for m in &with_suffix(seq) {
        match m {
            Msg::Query(sql) if !in_copy => in_copy = sql.ends_with("FROM STDIN"),
            Msg::CopyDone | Msg::CopyFail => in_copy = false,
            Msg::CopyData(_) | Msg::Sync | Msg::Flush => {}
            _ if in_copy => return false,
            _ => {}
        }
    }
    true
}

/// Runs `cases` generated sequences (those `keep` accepts) both ways; on
/// a difference, panics with proptest's minimal failing sequence and the
/// two traces side by side.
fn differential(cases: u32, keep: fn(&[Msg]) -> bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let harness = RefCell::new(rt.block_on(Harness::start()));
    let config = Config {
        cases,
        max_shrink_iters: 256,
        // Each failing try waits out a silence: bounded, so the test stays quick.
        max_shrink_time: 20_000,
        failure_persistence: None,
        ..Config::default()
    };
    let sequences = prop::collection::vec(msg_strategy(), 1..9)
        .prop_filter("PostgreSQL closes the connection", move |s| keep(s));
    let mut runner = TestRunner::new(config);
    let started = std::time::Instant::now();
    let outcome = runner.run(&sequences, |seq| {
        let mut h = harness.borrow_mut();
        let int4pl = h.int4pl;
        let (direct, direct_other) = rt.block_on(h.direct.run(&seq, int4pl));
        let (through, through_other) = rt.block_on(h.through.run(&seq, int4pl));
        let mut d = direct;
        d.push("-- the other client --".into());
        d.extend(direct_other);
        let mut t = through;
        t.push("-- the other client --".into());
        t.extend(through_other);
        if d == t || same_but_duplicate_precedence(&d, &t) {
            return Ok(());
        }
        rt.block_on(h.restart_keel());
        Err(TestCaseError::fail(report(&seq, &d, &t)))
    });
    let took = started.elapsed();
    match outcome {
        Ok(()) => eprintln!("{cases} sequences answered the same both ways ({took:.1?})"),
        Err(TestError::Fail(why, minimal)) => panic!(
            "a client sees something else through pgkeel ({took:.1?}); minimal failing sequence: {minimal:?}\n{why}"
        ),
        Err(e) => panic!("{e}"),
    }
}

/// Any sequence, the ones that make PostgreSQL close the connection too,
/// but for one kind, a known difference: a Close of a statement, or a
/// Parse of a name, sent into a simple-Query COPY before its CopyInResponse
/// came. pgkeel answers those itself (the statement lives under another
/// name on the server), so the server never sees the protocol violation
/// PostgreSQL would close the connection for; the COPY fails and the
/// session goes on in step.
#[test]
fn generated_sequences_answer_the_same_directly_and_through_pgkeel() {
    differential(256, |seq| {
        let mut in_copy = false;
        for m in &with_suffix(seq) {
            match m {
                Msg::Query(sql) if !in_copy => in_copy = sql.ends_with("FROM STDIN"),
                Msg::CopyDone | Msg::CopyFail => in_copy = false,
                Msg::CloseStatement(_) if in_copy => return false,
                Msg::Parse(name, _) if in_copy && !name.is_empty() => return false,
                _ => {}
            }
        }
        true
    });
}

/// Only sequences after which PostgreSQL keeps the connection, so that a
/// difference there is not masked by the one above.
#[test]
fn sequences_postgres_survives_answer_the_same_through_pgkeel() {
    differential(256, postgres_keeps_the_connection);
}

/// Sequences generated runs once found to differ, run every time: a Parse
/// of a statement the server connection already has, reaching it inside a
/// transaction that has failed (PostgreSQL: 25P02, then the skip to the
/// Sync). Each starts by preparing and closing the statement, so that the
/// connection has it under pgkeel's name.
#[test]
fn a_parse_inside_a_failed_transaction_is_refused_as_postgresql_refuses_it() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut h = rt.block_on(Harness::start());
    let cases: [Vec<Msg>; 2] = [
        vec![
            Msg::Parse("s2", "BEGIN"),
            Msg::Sync,
            Msg::CloseStatement("s2"),
            Msg::Sync,
            Msg::Query("BEGIN"),
            Msg::DescribePortal,
            Msg::Flush,
            Msg::Sync,
            Msg::CloseStatement("s1"),
            Msg::FunctionCall,
            Msg::Parse("s2", "BEGIN"),
        ],
        vec![
            Msg::Parse("s1", "COPY diff_sink FROM STDIN"),
            Msg::Sync,
            Msg::CloseStatement("s1"),
            Msg::Sync,
            Msg::ClosePortal,
            Msg::Query("BEGIN"),
            Msg::Query("SELECT 1/0"),
            Msg::Sync,
            Msg::Sync,
            Msg::Parse("s1", "COPY diff_sink FROM STDIN"),
            Msg::FunctionCall,
            Msg::Execute(1),
        ],
    ];
    for seq in cases {
        let int4pl = h.int4pl;
        let (d, _) = rt.block_on(h.direct.run(&seq, int4pl));
        let (t, _) = rt.block_on(h.through.run(&seq, int4pl));
        assert!(d == t, "{}", report(&seq, &d, &t));
    }
}

/// A Sync and a CopyDone sent into a simple-protocol COPY, then a batch
/// whose first message fails (a Describe of no portal): every answer comes,
/// and the session goes on.
#[test]
fn a_batch_after_a_copy_with_stray_syncs_is_answered() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut h = rt.block_on(Harness::start());
    let seq = vec![
        Msg::Query("COPY diff_sink FROM STDIN"),
        Msg::Sync,
        Msg::CopyDone,
        Msg::Sync,
        Msg::DescribePortal,
        Msg::CloseStatement("s1"),
        Msg::Parse("s2", "SELECT 42"),
        Msg::Sync,
    ];
    let int4pl = h.int4pl;
    let (d, _) = rt.block_on(h.direct.run(&seq, int4pl));
    let (t, _) = rt.block_on(h.through.run(&seq, int4pl));
    assert!(d == t, "{}", report(&seq, &d, &t));
}
