//! A hostile client against the real binary: random bytes before startup,
//! truncated and oversized frames, declared lengths of 2^31-1, odd protocol
//! versions, startup packets with no user or thousands of parameters,
//! garbage after Terminate, and startups left half-sent. Each case gets
//! a clear error (the SQLSTATE PostgreSQL itself answers, where it answers
//! the same input), pgkeel's memory stays bounded, and meanwhile a normal
//! client logs in and queries.

use crate::common;
use crate::support::{self, Raw};

use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// pgkeel's resident memory may grow by this much under a case (generous:
/// the point is that 2^31-1 declared bytes, or 1000 MB times 24, reserve
/// nothing).
const RSS_BOUND: u64 = 64 << 20;

/// Its address space may grow by this much: one declared frame reserved
/// whole would be 1000 MB.
const VM_BOUND: u64 = 512 << 20;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// The pgkeel binary, running until dropped.
struct Keel {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    _config: tempfile::NamedTempFile,
}

impl Keel {
    async fn start(proxy: &str) -> Keel {
        let (addr, admin) = (free_addr(), free_addr());
        // md5 logins: SCRAM's key stretching is not what these tests test.
        let proxy = format!("auth_method = \"md5\"\n{proxy}");
        let cfg = support::config(common::shared_pg().port, &proxy, "")
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

    /// The process is still running.
    fn alive(&mut self) -> bool {
        self.child.try_wait().expect("waitpid").is_none()
    }

    /// Resident memory of the pgkeel process, in bytes.
    fn rss(&self) -> u64 {
        self.status_kb("VmRSS:") * 1024
    }

    /// Address space of the pgkeel process, in bytes: memory reserved but
    /// never touched (a buffer sized by a declared length) shows here, not
    /// in the resident size.
    fn vm_size(&self) -> u64 {
        self.status_kb("VmSize:") * 1024
    }

    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("pgkeel's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("a {field} line"))
    }

    /// `pgkeel_client_bytes_received_total` from `/metrics`.
    async fn bytes_received(&self) -> u64 {
        let (status, body) = support::http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("pgkeel_client_bytes_received_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .expect("the byte counter") as u64
    }

    /// A normal client logs in and runs a query: whatever the hostile
    /// connections did changed nothing for it.
    async fn still_serves(&mut self) {
        assert!(self.alive(), "pgkeel exited");
        let c = support::connect(self.addr, "app", "app_password", "appdb")
            .await
            .expect("a normal client logs in");
        let rows = c.simple_query("SELECT 41 + 1").await.expect("and queries");
        assert!(rows.iter().any(|m| matches!(
            m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42")
        )));
    }

    /// A raw md5 login as app.
    async fn login(&self) -> Raw {
        raw_md5_login(self.addr).await
    }
}

impl Drop for Keel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn raw_md5_login(addr: SocketAddr) -> Raw {
    let mut raw = Raw::connect(addr).await;
    raw.send(&Raw::startup_packet(&[
        ("user", "app"),
        ("database", "appdb"),
    ]))
    .await;
    loop {
        let (t, body) = raw.recv().await.expect("a message during login");
        match t {
            b'R' if body[..4] == [0, 0, 0, 5] => {
                let salt: [u8; 4] = body[4..8].try_into().unwrap();
                let stored = pgkeel::auth::md5::stored_hash("app", "app_password");
                let pw = pgkeel::auth::md5::response_from_stored(&stored, &salt);
                raw.send_msg(b'p', format!("{pw}\0").as_bytes()).await;
            }
            b'E' => panic!(
                "login failed: {:?}",
                pgkeel::protocol::parse_error_fields(&body)
            ),
            b'Z' => return raw,
            _ => {}
        }
    }
}

/// What a peer answers to `bytes` sent on a fresh connection whose write
/// side is then closed: the type of each message up to EOF (or the first
/// authentication request, where a login would go on), with the SQLSTATE
/// of each ErrorResponse.
async fn answer(addr: SocketAddr, bytes: &[u8], close_write: bool) -> Vec<(u8, String)> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // The peer may refuse before it has read everything: a broken pipe
    // here is an answer too.
    let _ = s.write_all(bytes).await;
    if close_write {
        let _ = s.shutdown().await;
    }
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    loop {
        let read = pgkeel::protocol::read_message(&mut s, &mut buf, 1 << 20);
        match tokio::time::timeout(Duration::from_secs(10), read).await {
            Err(_) => panic!("no answer within 10 s to {bytes:?}"),
            Ok(Err(_)) => return out,
            Ok(Ok((t, body))) => {
                let code = if t == b'E' {
                    let f = pgkeel::protocol::parse_error_fields(&body);
                    pgkeel::protocol::error_field(&f, b'C')
                        .unwrap_or("")
                        .to_owned()
                } else {
                    String::new()
                };
                out.push((t, code));
                if t == b'R' {
                    return out;
                }
            }
        }
    }
}

fn startup_packet(version: i32, params: &[(&str, &str)]) -> BytesMut {
    let mut p = Raw::startup_packet(params);
    p[4..8].copy_from_slice(&version.to_be_bytes());
    p
}

fn header(t: u8, len: i32) -> [u8; 5] {
    let mut h = [t, 0, 0, 0, 0];
    h[1..].copy_from_slice(&len.to_be_bytes());
    h
}

#[tokio::test]
async fn random_bytes_before_startup_get_a_clear_error() {
    let mut keel = Keel::start("").await;
    let mut rng = StdRng::seed_from_u64(14);
    for i in 0..200 {
        let n = rng.random_range(1..64);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if i % 2 == 0 && bytes.len() >= 4 {
            // A plausible length, so the version code and body are read too.
            bytes[..4].copy_from_slice(&(rng.random_range(8..64i32)).to_be_bytes());
        }
        let got = answer(keel.addr, &bytes, true).await;
        match &got[..] {
            // Fewer than four bytes, then EOF: a port check.
            [] => {}
            [(b'E', code)] => assert!(
                ["08P01", "0A000", "28000"].contains(&code.as_str()),
                "{bytes:?}: {code}"
            ),
            other => panic!("{bytes:?}: {other:?}"),
        }
    }
    keel.still_serves().await;
}

#[tokio::test]
async fn random_frames_after_login_end_in_an_error_or_are_answered() {
    let mut keel = Keel::start("pool_size = 4").await;
    let mut rng = StdRng::seed_from_u64(1414);
    const TYPES: &[u8] = b"QPBDECHSFdcfXzp\0";
    for i in 0..60 {
        let mut raw = keel.login().await;
        let mut bytes = Vec::new();
        for _ in 0..rng.random_range(1..4) {
            let body: Vec<u8> = (0..rng.random_range(0..40)).map(|_| rng.random()).collect();
            bytes.push(TYPES[rng.random_range(0..TYPES.len())]);
            // Now and then a length that does not match the body.
            let len = if i % 4 == 0 {
                rng.random_range(0..64)
            } else {
                body.len() as i32 + 4
            };
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&body);
        }
        raw.send(&bytes).await;
        let _ = raw.stream.shutdown().await;
        // Whatever comes back ends in a close; an error pgkeel raises
        // itself is 08P01, a server's ERROR (a random query) passes.
        while let Some((t, body)) = raw.recv().await {
            if t == b'E' {
                let f = pgkeel::protocol::parse_error_fields(&body);
                let sev = pgkeel::protocol::error_field(&f, b'S').unwrap_or("");
                let code = pgkeel::protocol::error_field(&f, b'C').unwrap_or("");
                assert!(sev == "ERROR" || code == "08P01", "{bytes:?}: {sev} {code}");
            }
        }
    }
    keel.still_serves().await;
}

#[tokio::test]
async fn odd_startup_packets_are_answered_as_postgresql_answers_them() {
    let mut keel = Keel::start("").await;
    let pg: SocketAddr = format!("127.0.0.1:{}", common::shared_pg().port)
        .parse()
        .unwrap();
    let app = [("user", "app"), ("database", "appdb")];
    let many: Vec<(String, String)> = (0..2000).map(|i| (format!("p{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    // Answered alike by both.
    let same: Vec<(&str, Vec<u8>)> = vec![
        // Protocol 3.99: NegotiateProtocolVersion (newest minor 0), then the
        // login goes on.
        ("3.99", startup_packet((3 << 16) | 99, &app).to_vec()),
        // 4.0: refused, 0A000.
        ("4.0", startup_packet(4 << 16, &app).to_vec()),
        // No user: 28000.
        (
            "no user",
            Raw::startup_packet(&[("database", "appdb")]).to_vec(),
        ),
        // 1000 parameters, within the cap: the login goes on (PostgreSQL
        // checks them once logged in).
        (
            "1000 parameters",
            Raw::startup_packet(&[&app[..], &many[..1000]].concat()).to_vec(),
        ),
    ];
    for (name, bytes) in &same {
        let from_pg = answer(pg, bytes, true).await;
        let from_keel = answer(keel.addr, bytes, true).await;
        assert_eq!(
            from_keel, from_pg,
            "{name}: pgkeel answers as PostgreSQL does"
        );
    }
    // Framing errors: PostgreSQL logs them and closes without a word
    // (COMMERROR); pgkeel says why, FATAL 08P01. Where pgkeel refuses on
    // the length alone, bytes it never read are still unread at its
    // close, and the kernel's reset can overtake the error: then the
    // client sees just the close, as from PostgreSQL.
    let framing: Vec<(&str, Vec<u8>, bool)> = vec![
        // Over the 10000-byte cap: refused before the body is read.
        (
            "too many parameters",
            Raw::startup_packet(&[&app[..], &many[..]].concat()).to_vec(),
            true,
        ),
        // A declared length of 2^31-1: refused at once.
        (
            "2^31-1",
            {
                let mut p = startup_packet(3 << 16, &app).to_vec();
                p[..4].copy_from_slice(&i32::MAX.to_be_bytes());
                p
            },
            true,
        ),
        // A negative length, alone.
        ("negative", (-8i32).to_be_bytes().to_vec(), false),
        // Truncated: the length promises more than comes.
        (
            "truncated",
            startup_packet(3 << 16, &app)[..12].to_vec(),
            false,
        ),
    ];
    for (name, bytes, unread) in &framing {
        assert_eq!(
            answer(pg, bytes, true).await,
            [],
            "{name}: PostgreSQL closes"
        );
        let from_keel = answer(keel.addr, bytes, true).await;
        let error = [(b'E', "08P01".to_owned())];
        assert!(
            from_keel == error || (*unread && from_keel.is_empty()),
            "{name}: {from_keel:?}"
        );
    }
    // 2.0: PostgreSQL refuses it in protocol 2.0's own error format;
    // pgkeel with a 3.0 ErrorResponse, the same SQLSTATE.
    let v2 = startup_packet(2 << 16, &app);
    assert_eq!(answer(keel.addr, &v2, true).await, [(b'E', "0A000".into())]);
    let mut s = TcpStream::connect(pg).await.unwrap();
    s.write_all(&v2).await.unwrap();
    let mut first = [0u8; 1];
    s.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"E");
    // 3.99 with a protocol extension: both name it as unsupported, in the
    // same NegotiateProtocolVersion body.
    let ext = [
        ("user", "app"),
        ("database", "appdb"),
        ("_pq_.compression", "on"),
    ];
    let negotiate = |addr| async move {
        let mut raw = Raw::connect(addr).await;
        raw.send(&startup_packet((3 << 16) | 99, &ext)).await;
        raw.recv().await.expect("a message")
    };
    assert_eq!(negotiate(keel.addr).await, negotiate(pg).await);
    keel.still_serves().await;
}

#[tokio::test]
async fn many_parameters_within_the_cap_are_answered_like_postgresql() {
    // Within the 10000-byte cap: PostgreSQL refuses an unknown setting with
    // 42704; pgkeel must give a clear error or log in, never hang or die.
    let mut keel = Keel::start("").await;
    let params: Vec<(String, String)> = (0..800).map(|i| (format!("p{i}"), "v".into())).collect();
    let mut all = vec![("user", "app"), ("database", "appdb")];
    all.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let packet = Raw::startup_packet(&all);
    assert!(packet.len() <= 10_000);
    let mut raw = Raw::connect(keel.addr).await;
    raw.send(&packet).await;
    let (t, _) = raw.recv().await.expect("an answer");
    assert!(matches!(t, b'R' | b'E'), "{}", t as char);
    drop(raw);
    keel.still_serves().await;
}

#[tokio::test]
async fn bad_frames_after_login_get_08p01_and_memory_stays_bounded() {
    let mut keel = Keel::start("max_message_size = \"1000MB\"\npool_size = 12").await;
    keel.still_serves().await;
    // Unknown message type after login.
    let mut raw = keel.login().await;
    raw.send_msg(b'z', b"whatever").await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    assert!(raw.closed().await);
    // Impossible length (< 4).
    let mut raw = keel.login().await;
    raw.send(&header(b'Q', 3)).await;
    assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    // Over max_message_size, and 2^31-1: refused on the header alone.
    for len in [1_100_000_000, i32::MAX] {
        let mut raw = keel.login().await;
        raw.send(&header(b'Q', len)).await;
        assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
        // Inside a transaction (the relay reads it) too.
        let mut raw = keel.login().await;
        raw.query("BEGIN").await;
        assert_eq!(raw.until_ready().await.1, b'T');
        raw.send(&header(b'Q', len)).await;
        assert_eq!(raw.expect_error().await, ("FATAL".into(), "08P01".into()));
    }
    // Declared lengths within the limit reserve nothing: 24 clients each
    // promising 1000 MB (8 of them inside a transaction), having sent a
    // little of it.
    let (before, vm_before) = (keel.rss(), keel.vm_size());
    let received = keel.bytes_received().await;
    let mut held = Vec::new();
    let mut sent = 0;
    for i in 0..24 {
        let mut raw = keel.login().await;
        if i % 3 == 0 {
            raw.query("BEGIN").await;
            assert_eq!(raw.until_ready().await.1, b'T');
            sent += 11;
        }
        raw.send(&header(b'Q', 1_000_000_000)).await;
        raw.send(b"SELECT ").await;
        raw.send(&[b'x'; 4096]).await;
        sent += 5 + 7 + 4096;
        held.push(raw);
    }
    // Once pgkeel has read every byte of them (its own counter says so).
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            keel.bytes_received().await >= received + sent
        })
        .await,
        "pgkeel did not read the partial frames"
    );
    let after = keel.rss();
    assert!(
        after < before + RSS_BOUND,
        "RSS grew from {before} to {after} bytes for 24 declared 1000 MB frames"
    );
    let vm_after = keel.vm_size();
    assert!(
        vm_after < vm_before + VM_BOUND,
        "address space grew from {vm_before} to {vm_after} bytes for 24 declared 1000 MB frames"
    );
    keel.still_serves().await;
    // Closing them mid-frame leaks nothing: the transactions' connections
    // come back (pool_size 12: the normal client below needs one).
    drop(held);
    keel.still_serves().await;
}

#[tokio::test]
async fn truncated_frames_and_garbage_after_terminate_change_nothing() {
    let mut keel = Keel::start("pool_size = 2").await;
    // A header cut short, a body cut short, then the connection closed.
    for cut in [
        &b"Q\x00\x00"[..],
        b"Q\x00\x00\x00\x64SELECT",
        b"P\x00\x00\x00\x10\x00",
    ] {
        let mut raw = keel.login().await;
        raw.send(cut).await;
        drop(raw);
    }
    // Garbage after Terminate, between and inside transactions: pgkeel
    // reads nothing after it, and the server connection goes back clean.
    for in_tx in [false, true] {
        let mut raw = keel.login().await;
        if in_tx {
            raw.query("BEGIN; CREATE TEMP TABLE hf_garbage (x int)")
                .await;
            assert_eq!(raw.until_ready().await.1, b'T');
        }
        let mut bytes = vec![b'X', 0, 0, 0, 4];
        bytes.extend_from_slice(b"Q\x7f\xff\xff\xffgarbage\xff\xfe");
        raw.send(&bytes).await;
        assert!(raw.closed().await, "Terminate ends the connection");
    }
    // Both server connections (pool_size 2) are fine: neither kept the
    // transaction nor its temp table.
    let a = support::app(keel.addr).await;
    let b = support::app(keel.addr).await;
    for c in [&a, &b] {
        c.batch_execute("BEGIN").await.unwrap();
        let r = c
            .simple_query("SELECT count(*) FROM pg_class WHERE relname = 'hf_garbage'")
            .await
            .unwrap();
        assert!(r.iter().any(|m| matches!(
            m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("0")
        )));
    }
    drop((a, b));
    keel.still_serves().await;
}

#[tokio::test]
async fn half_sent_startups_held_open_do_not_stop_a_login() {
    let mut keel = Keel::start("").await;
    // Slow startups, without any waiting: 50 connections each sent a part
    // of a startup packet (3 bytes of the length, the length and part of
    // the body, everything but the last byte) and stay open.
    let packet = Raw::startup_packet(&[("user", "app"), ("database", "appdb")]);
    let mut held = Vec::new();
    for i in 0..50 {
        let mut s = TcpStream::connect(keel.addr).await.unwrap();
        let n = [3, 6, packet.len() - 1][i % 3];
        s.write_all(&packet[..n]).await.unwrap();
        held.push(s);
    }
    let before = keel.rss();
    keel.still_serves().await;
    assert!(keel.rss() < before + RSS_BOUND);
    // Each is still waited for: finishing the packet goes on to the login.
    for (i, s) in held.iter_mut().enumerate() {
        let n = [3, 6, packet.len() - 1][i % 3];
        s.write_all(&packet[n..]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"R", "an authentication request");
    }
    drop(held);
    keel.still_serves().await;
}
