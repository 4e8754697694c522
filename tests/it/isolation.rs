//! Each attack of the "clients kept apart" issue, tried through the real
//! `pgkeel` binary (static mode, transaction pooling, a pool of one or two
//! so that clients share server connections). Every test prints what the
//! clients saw, then asserts the guarantee: no client sees another's rows,
//! statements or settings; an in-doubt commit is 08006, never 40001; a
//! declared length reserves nothing.

use crate::common;
use crate::support;

use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use md5::Digest;
use support::{wait_until, Raw};
use tokio_postgres::SimpleQueryMessage;

const MB: u64 = 1 << 20;

/// Frontend and backend message types this file sends or reads.
mod msg {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const EXECUTE: u8 = b'E';
    pub const SYNC: u8 = b'S';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const DATA_ROW: u8 = b'D';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const AUTHENTICATION: u8 = b'R';
    pub const PASSWORD: u8 = b'p';
}

/// Authentication request codes.
const AUTH_OK: i32 = 0;
const AUTH_MD5: i32 = 5;

/// How long a test waits for any one answer before it calls it missing
/// (the longest statement sleeps 1 s; the largest message is 100 MB).
const ANSWER_LIMIT: Duration = Duration::from_secs(10);

/// The pgkeel binary, running until dropped, on free loopback ports.
struct Keel {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _config: tempfile::NamedTempFile,
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

impl Keel {
    /// Starts pgkeel in front of the shared PostgreSQL with `proxy` lines
    /// in `[proxy]` and `extra` appended; returns once it accepts clients.
    async fn start(proxy: &str, extra: &str) -> Keel {
        let pg = common::shared_pg();
        let (addr, admin) = (free_addr(), free_addr());
        // md5 logins: these tests log in often, and SCRAM's key stretching
        // is not what they test.
        let proxy = format!("auth_method = \"md5\"\n{proxy}");
        let cfg = support::config(pg.port, &proxy, extra)
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{addr}\""),
                1,
            )
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"{admin}\""),
                1,
            );
        let (child, file) = support::spawn_binary(&cfg, addr).await;
        Keel {
            child,
            addr,
            admin,
            _config: file,
        }
    }

    async fn client(&self, user: &str, password: &str) -> tokio_postgres::Client {
        support::connect(self.addr, user, password, "appdb")
            .await
            .unwrap_or_else(|e| panic!("{user} connects through pgkeel: {e}"))
    }

    async fn app(&self) -> tokio_postgres::Client {
        self.client("app", "app_password").await
    }

    /// A raw protocol client logged in as app (md5).
    async fn raw(&self) -> Raw {
        let mut raw = Raw::connect(self.addr).await;
        raw.send(&Raw::startup_packet(&[
            ("user", "app"),
            ("database", "appdb"),
        ]))
        .await;
        loop {
            let (t, body) = recv(&mut raw).await.expect("a message during login");
            match t {
                msg::AUTHENTICATION => match (&body[..4]).get_i32() {
                    AUTH_OK => {}
                    AUTH_MD5 => {
                        let hex = |b: &[u8]| format!("{:x}", md5::Md5::digest(b));
                        let inner = hex(b"app_passwordapp");
                        let salted = hex(&[inner.as_bytes(), &body[4..8]].concat());
                        raw.send_msg(msg::PASSWORD, format!("md5{salted}\0").as_bytes())
                            .await;
                    }
                    code => panic!("unexpected authentication request {code}"),
                },
                msg::ERROR_RESPONSE => panic!(
                    "login failed: {:?}",
                    pgkeel::protocol::parse_error_fields(&body)
                ),
                msg::READY_FOR_QUERY => return raw,
                _ => {}
            }
        }
    }

    /// A gauge or counter from pgkeel's /metrics.
    async fn metric(&self, name: &str) -> f64 {
        let (code, body) = support::http_get(self.admin, "/metrics").await;
        assert_eq!(code, 200, "/metrics: {body}");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    }

    /// (VmRSS, VmSize, VmData) of the pgkeel process, in bytes.
    fn memory(&self) -> (u64, u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("{name} in /proc/<pid>/status"))
                * 1024
        };
        (field("VmRSS:"), field("VmSize:"), field("VmData:"))
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A superuser connection straight to PostgreSQL, in appdb.
async fn superuser() -> tokio_postgres::Client {
    common::pg_client(common::shared_pg().port, "postgres", "postgres", "appdb").await
}

/// The text values of every row of a simple query, or its SQLSTATE.
async fn rows(c: &tokio_postgres::Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let fut = c.simple_query(sql);
    let out = tokio::time::timeout(ANSWER_LIMIT, fut)
        .await
        .map_err(|_| format!("no answer to {sql:?} within {ANSWER_LIMIT:?}"))?
        .map_err(|e| support::sqlstate(&e))?;
    Ok(out
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
            }
            _ => None,
        })
        .collect())
}

/// The first value of the first row.
async fn value(c: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let r = rows(c, sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    r.first().and_then(|row| row[0].clone())
}

/// The next message, `None` at EOF or after `ANSWER_LIMIT` of silence.
async fn recv(raw: &mut Raw) -> Option<(u8, BytesMut)> {
    let fut = pgkeel::protocol::read_message(&mut raw.stream, &mut raw.buf, 1 << 30);
    tokio::time::timeout(ANSWER_LIMIT, fut).await.ok()?.ok()
}

/// Appends one frontend message.
fn put_msg(out: &mut BytesMut, typ: u8, body: &[u8]) {
    out.put_u8(typ);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(body);
}

/// The columns of a DataRow, as text.
fn data_row(mut body: &[u8]) -> Vec<Option<String>> {
    let n = body.get_i16();
    (0..n)
        .map(|_| {
            let len = body.get_i32();
            if len < 0 {
                return None;
            }
            let v = String::from_utf8_lossy(&body[..len as usize]).into_owned();
            body.advance(len as usize);
            Some(v)
        })
        .collect()
}

/// Reads `n` ReadyForQuery messages; returns the DataRows and SQLSTATEs
/// seen before them, and "EOF"/"silent" if they did not all come.
async fn answers(raw: &mut Raw, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut ready = 0;
    while ready < n {
        match recv(raw).await {
            None => {
                seen.push("EOF or silence".to_owned());
                break;
            }
            Some((msg::READY_FOR_QUERY, b)) => {
                ready += 1;
                seen.push(format!("ReadyForQuery({})", b[0] as char));
            }
            Some((msg::DATA_ROW, b)) => seen.push(format!("DataRow{:?}", data_row(&b))),
            Some((msg::ERROR_RESPONSE, b)) => {
                let f = pgkeel::protocol::parse_error_fields(&b);
                let code = pgkeel::protocol::error_field(&f, b'C').unwrap_or("?");
                seen.push(format!("Error({code})"));
            }
            Some(_) => {}
        }
    }
    seen
}

/// Attack 1. PostgreSQL ignores CopyData and CopyDone outside COPY and
/// answers the Sync; a proxy that believes it is in COPY miscounts
/// ReadyForQuery and hands the connection on while A's query still runs.
#[tokio::test]
async fn stray_copy_data_never_hands_a_result_to_another_client() {
    let keel = Keel::start("pool_size = 1", "").await;
    let mut a = keel.raw().await;
    a.send_msg(msg::COPY_DATA, b"stray\n").await;
    a.send_msg(msg::SYNC, b"").await;
    a.send_msg(msg::COPY_DONE, b"").await;
    a.query("SELECT pg_sleep(1), 'marker'").await;
    // B asks once A's Sync is answered: the moment a confused proxy lets go.
    let first = recv(&mut a).await;
    eprintln!(
        "A's first answer: {:?}",
        first.as_ref().map(|(t, _)| *t as char)
    );
    let mut b = keel.raw().await;
    b.query("SELECT 'mine'").await;
    let (seen_a, seen_b) = tokio::join!(answers(&mut a, 1), answers(&mut b, 1));
    eprintln!("A saw: {seen_a:?}\nB saw: {seen_b:?}");
    assert!(
        !seen_b.iter().any(|m| m.contains("marker")),
        "B received A's row: {seen_b:?}"
    );
    assert!(
        seen_b.contains(&r#"DataRow[Some("mine")]"#.to_owned()),
        "B did not get its own row: {seen_b:?}"
    );
    assert!(
        seen_a.iter().any(|m| m.contains("marker")),
        "A did not get its own row: {seen_a:?}"
    );
}

/// Attack 2. pgkeel's server-side names are shared by every client of a
/// pool; a client that can address them can redefine another's statement.
#[tokio::test]
async fn prepared_statements_of_another_client_cannot_be_redefined() {
    let keel = Keel::start("pool_size = 1", "").await;
    let victim = keel.app().await;
    let st = victim
        .prepare("SELECT 'victim:' || $1::text")
        .await
        .unwrap();
    for i in 0..3 {
        let r = victim.query(&st, &[&format!("v{i}")]).await.unwrap();
        assert_eq!(r[0].get::<_, String>(0), format!("victim:v{i}"));
    }
    let attacker = keel.app().await;
    let visible = rows(
        &attacker,
        "SELECT name FROM pg_prepared_statements ORDER BY name",
    )
    .await
    .unwrap();
    eprintln!("the attacker sees in pg_prepared_statements: {visible:?}");
    let mut names: Vec<String> = visible.into_iter().filter_map(|r| r[0].clone()).collect();
    names.extend((1..=20).map(|n| format!("pgkeel_{n}")));
    names.sort();
    names.dedup();
    let mut accepted = Vec::new();
    for name in &names {
        let sql = format!("DEALLOCATE {name}; PREPARE {name}(text) AS SELECT 'HIJACKED:' || $1");
        match rows(&attacker, &sql).await {
            Ok(_) => accepted.push(name.clone()),
            Err(code) => assert!(
                ["42P05", "26000", "0A000"].contains(&code.as_str()),
                "{sql}: unexpected answer {code}"
            ),
        }
    }
    eprintln!("redefinitions the server accepted: {accepted:?}");
    let mut got = Vec::new();
    for i in 0..3 {
        let r = victim
            .query(&st, &[&format!("w{i}")])
            .await
            .map(|r| r[0].get::<_, String>(0))
            .map_err(|e| support::sqlstate(&e));
        got.push(r);
    }
    eprintln!("the victim's next results: {got:?}");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(
            r.as_deref(),
            Ok(format!("victim:w{i}").as_str()),
            "the victim's statement was not its own"
        );
    }
    assert!(
        accepted.is_empty(),
        "the attacker redefined server statements: {accepted:?}"
    );
}

/// What a fresh client of the pool sees of the session: (app.tenant,
/// current_user, session_user).
async fn session_view(c: &tokio_postgres::Client) -> Vec<Option<String>> {
    rows(
        c,
        "SELECT coalesce(current_setting('app.tenant', true), ''), current_user::text, session_user::text",
    )
    .await
    .unwrap()
    .remove(0)
}

/// Attack 3. Settings pgkeel does not track (custom GUCs, ROLE, SESSION
/// AUTHORIZATION) must not stay on the server connection for the next client.
#[tokio::test]
async fn untracked_settings_never_reach_the_next_client() {
    let su = superuser().await;
    su.batch_execute(
        "DO $$BEGIN CREATE ROLE iso_tenant NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END$$;
         GRANT iso_tenant TO postgres",
    )
    .await
    .unwrap();
    let clean = vec![
        Some(String::new()),
        Some("postgres".to_owned()),
        Some("postgres".to_owned()),
    ];
    let attacks = [
        "SET app.tenant = 'A'",
        "SET ROLE iso_tenant",
        "SET SESSION AUTHORIZATION app",
        "SELECT set_config('app.tenant', 'A', false)",
    ];
    let mut leaks = Vec::new();
    for sql in attacks {
        // A pgkeel of its own each, so that one attack's leak does not show
        // in the next. The superuser may change its session authorization.
        let keel = Keel::start(
            "pool_size = 1",
            "[[users]]\nname = \"postgres\"\npassword = \"postgres\"\n",
        )
        .await;
        let a = keel.client("postgres", "postgres").await;
        rows(&a, sql).await.unwrap();
        let own = session_view(&a).await;
        // A pinned client keeps its connection: the next one then gets it
        // only after A leaves, which must reset it as well.
        let pinned = keel.metric("pgkeel_pinned_clients").await > 0.0;
        if pinned {
            drop(a);
        }
        let b = keel.client("postgres", "postgres").await;
        let next = session_view(&b).await;
        eprintln!("{sql}: A sees {own:?}, A pinned: {pinned}; the next client sees {next:?}");
        if next != clean {
            leaks.push((sql, next));
        }
    }
    assert!(
        leaks.is_empty(),
        "settings reached the next client: {leaks:?}"
    );
}

/// Attack 4. A client that leaves abruptly (no Terminate) with its server
/// connection at rest must not leave that statement's effects to the next.
#[tokio::test]
async fn a_client_leaving_abruptly_leaves_nothing_behind() {
    let keel = Keel::start("pool_size = 1", "").await;
    let effects = [
        "SET app.dirty = 'leaked'",
        "SET work_mem = '7MB'",
        "CREATE TEMP TABLE iso_dirty (x int)",
        "SELECT pg_advisory_lock(4242)",
        "LISTEN iso_dirty",
        "BEGIN; DECLARE iso_cur CURSOR WITH HOLD FOR SELECT 1; COMMIT",
    ];
    let check = "SELECT coalesce(current_setting('app.dirty', true), ''), current_setting('work_mem'),
                        (to_regclass('pg_temp.iso_dirty') IS NOT NULL)::text,
                        (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid())::text,
                        (SELECT count(*) FROM pg_listening_channels())::text,
                        (SELECT count(*) FROM pg_cursors)::text";
    let clean = vec![
        Some(String::new()),
        Some("4MB".to_owned()),
        Some("false".to_owned()),
        Some("0".to_owned()),
        Some("0".to_owned()),
        Some("0".to_owned()),
    ];
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Leave {
        /// After the answer: at rest, status I.
        AtRest,
        /// Closed (FIN) right after sending, before the answer.
        Closed,
        /// Reset (RST) right after sending: writing the answer back fails.
        Reset,
    }
    // The next client of the pool's one connection, between transactions
    // when each `a` leaves.
    let b = keel.app().await;
    let mut leaks = Vec::new();
    for sql in effects {
        // The reset races pgkeel's write of the answer: tried a few times.
        for leave in [
            Leave::AtRest,
            Leave::Closed,
            Leave::Reset,
            Leave::Reset,
            Leave::Reset,
        ] {
            let mut a = keel.raw().await;
            a.query(sql).await;
            match leave {
                Leave::AtRest => {
                    let (_, status) = a.until_ready().await;
                    assert_eq!(status, b'I');
                }
                Leave::Closed => {}
                Leave::Reset => a.stream.set_zero_linger().unwrap(),
            }
            drop(a);
            let t0 = std::time::Instant::now();
            let next = rows(&b, check).await.unwrap().remove(0);
            eprintln!(
                "{sql} (left {leave:?}): the next client sees {next:?} ({:?})",
                t0.elapsed()
            );
            if next != clean {
                leaks.push((sql, leave, next));
                // So that the next try shows only its own leak.
                rows(&b, "DISCARD ALL").await.unwrap();
            }
        }
    }
    assert!(
        leaks.is_empty(),
        "the next client saw what the last one left (custom setting, work_mem, temp table, advisory locks, channels, cursors): {leaks:?}"
    );
}

/// Attack 5. Ways of committing that a first-word sniff misses; the
/// server dies while each is in flight (a deferred trigger sleeps at
/// commit, and the backend is terminated meanwhile). The outcome is
/// unknown: 08006, never 40001 "rolled back; retry".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_in_flight_when_the_server_dies_is_08006() {
    let su = superuser().await;
    su.batch_execute(
        "CREATE TABLE iso_commit (v int);
         GRANT ALL ON iso_commit TO app;
         CREATE FUNCTION iso_slow_commit() RETURNS trigger LANGUAGE plpgsql AS
           $$BEGIN PERFORM pg_sleep(60); RETURN NULL; END$$;
         CREATE CONSTRAINT TRIGGER iso_slow_commit AFTER INSERT ON iso_commit
           DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION iso_slow_commit()",
    )
    .await
    .unwrap();
    let two_phase = value(&su, "SHOW max_prepared_transactions")
        .await
        .as_deref()
        != Some("0");
    let keel = Keel::start("pool_size = 2", "").await;
    #[derive(Clone, Copy, Debug)]
    enum Via {
        /// BEGIN and an INSERT first, then this Query.
        Query(&'static str),
        /// BEGIN first, then this Query does the INSERT and the commit.
        OneQuery(&'static str),
        /// BEGIN and an INSERT first, then COMMIT through Parse/Bind/Execute.
        Extended,
    }
    let mut cases = vec![
        Via::Query("COMMIT"),
        Via::Query("/* app */ COMMIT"),
        Via::OneQuery("INSERT INTO iso_commit VALUES (2); COMMIT"),
        Via::Query("COMMIT AND CHAIN"),
        Via::Extended,
    ];
    if two_phase {
        cases.push(Via::Query("PREPARE TRANSACTION 'iso_x'"));
    } else {
        eprintln!(
            "skipped: PREPARE TRANSACTION (the test server has max_prepared_transactions = 0, and the shared test server cannot be started with other settings)"
        );
    }
    let mut wrong = Vec::new();
    for via in cases {
        let c = keel.app().await;
        c.batch_execute("BEGIN").await.unwrap();
        let pid: i32 = c
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        if !matches!(via, Via::OneQuery(_)) {
            c.batch_execute("INSERT INTO iso_commit VALUES (1)")
                .await
                .unwrap();
        }
        let committing = tokio::spawn(async move {
            let r = match via {
                Via::Query(sql) | Via::OneQuery(sql) => c.batch_execute(sql).await,
                Via::Extended => c.execute("COMMIT", &[]).await.map(|_| ()),
            };
            (r.map_err(|e| (support::sqlstate(&e), e.to_string())), c)
        });
        // The trigger sleeping means the commit is under way on the server.
        let in_commit = wait_until(Duration::from_secs(10), || async {
            su.query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
                == 1
        })
        .await;
        assert!(in_commit, "{via:?}: the commit never reached the trigger");
        su.execute("SELECT pg_terminate_backend($1)", &[&pid])
            .await
            .unwrap();
        let (r, c) = tokio::time::timeout(ANSWER_LIMIT, committing)
            .await
            .unwrap_or_else(|_| panic!("{via:?}: no answer to the commit"))
            .unwrap();
        let after = rows(&c, "SELECT 'usable'").await;
        eprintln!("{via:?}: the client got {r:?}; its connection afterwards: {after:?}");
        if !matches!(&r, Err((code, _)) if code == "08006") {
            wrong.push((via, r));
        }
    }
    assert!(
        wrong.is_empty(),
        "commits in flight not reported as 08006 (outcome unknown): {wrong:?}"
    );
}

/// Attack 6. Declared lengths must reserve nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_lengths_reserve_nothing() {
    const CLIENTS: usize = 50;
    const DECLARED: i32 = 200 << 20;
    let keel = Keel::start("pool_size = 2\nmax_message_size = \"256MB\"", "").await;
    let mut raws = Vec::new();
    for _ in 0..CLIENTS {
        raws.push(keel.raw().await);
    }
    let received = keel.metric("pgkeel_client_bytes_received_total").await;
    let before = keel.memory();
    for raw in &mut raws {
        let mut h = BytesMut::new();
        h.put_u8(msg::QUERY);
        h.put_i32(DECLARED);
        raw.send(&h).await;
    }
    // Every header has been read once pgkeel counts its bytes.
    let headers = (CLIENTS * pgkeel::protocol::HEADER_LEN) as f64;
    let read = wait_until(Duration::from_secs(10), || async {
        keel.metric("pgkeel_client_bytes_received_total").await >= received + headers
    })
    .await;
    let after = keel.memory();
    let growth = |a: u64, b: u64| a.saturating_sub(b) / MB;
    eprintln!(
        "{CLIENTS} headers declaring 200 MB each (all read: {read}): VmRSS {} -> {} MB (+{}), VmSize {} -> {} MB (+{}), VmData {} -> {} MB (+{})",
        before.0 / MB,
        after.0 / MB,
        growth(after.0, before.0),
        before.1 / MB,
        after.1 / MB,
        growth(after.1, before.1),
        before.2 / MB,
        after.2 / MB,
        growth(after.2, before.2),
    );
    assert!(
        read,
        "pgkeel_client_bytes_received_total did not grow by the {headers} header bytes: were they read?"
    );
    assert!(
        growth(after.0, before.0) < 64,
        "resident memory grew with declared lengths"
    );
    assert!(
        growth(after.2, before.2) < 64 && growth(after.1, before.1) < 64,
        "memory was reserved for declared lengths (VmData/VmSize)"
    );
}

/// Attack 6, continued: a large message's buffers go once the client is
/// idle again (it stays connected: closing would free them anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffers_shrink_back_after_a_large_message() {
    let keel = Keel::start("pool_size = 2\nmax_message_size = \"256MB\"", "").await;
    let growth = |a: u64, b: u64| a.saturating_sub(b) / MB;
    let mut big = keel.raw().await;
    let start = keel.memory();
    let t0 = std::time::Instant::now();
    // A Bind carrying a 100 MB parameter (pgkeel reads its parameters
    // through; SQL text of that size would be scanned, slowly).
    let mut out = BytesMut::new();
    put_msg(&mut out, msg::PARSE, b"\0SELECT length($1::text)\0\0\0");
    let mut bind = BytesMut::new();
    bind.put_slice(b"\0\0"); // unnamed portal, unnamed statement
    bind.put_i16(0); // parameter formats: all text
    bind.put_i16(1);
    bind.put_i32(100 << 20);
    bind.put_slice(&vec![b'x'; 100 << 20]);
    bind.put_i16(0); // result formats: all text
    put_msg(&mut out, msg::BIND, &bind);
    drop(bind);
    put_msg(&mut out, msg::EXECUTE, b"\0\0\0\0\0");
    put_msg(&mut out, msg::SYNC, b"");
    big.send(&out).await;
    drop(out);
    assert_eq!(
        answers(&mut big, 1).await,
        [
            format!("DataRow[Some(\"{}\")]", 100 << 20),
            "ReadyForQuery(I)".to_owned()
        ]
    );
    eprintln!("100 MB Bind answered in {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    big.query("SELECT repeat('y', 100 * 1024 * 1024)").await;
    let mut row_len = 0;
    loop {
        match recv(&mut big).await.expect("the 100 MB row") {
            (msg::DATA_ROW, b) => row_len = b.len(),
            (msg::READY_FOR_QUERY, _) => break,
            _ => {}
        }
    }
    assert!(row_len > 100 << 20);
    eprintln!("100 MB row received in {:?}", t0.elapsed());
    big.query("SELECT 1").await;
    assert_eq!(
        answers(&mut big, 1).await,
        [r#"DataRow[Some("1")]"#, "ReadyForQuery(I)"]
    );
    let idle = keel.memory();
    eprintln!(
        "after a 100 MB Bind and a 100 MB row, client idle: VmRSS {} -> {} MB, VmData {} -> {} MB",
        start.0 / MB,
        idle.0 / MB,
        start.2 / MB,
        idle.2 / MB
    );
    assert!(
        growth(idle.0, start.0) < 32,
        "buffers did not shrink back: pgkeel keeps {} MB more while the client idles",
        growth(idle.0, start.0)
    );
}
