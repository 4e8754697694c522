//! Helpers for tests that run pgkeel in-process: start an instance in front
//! of the shared PostgreSQL, connect through it, speak raw protocol.
#![allow(dead_code)]

pub mod workload;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use pgkeel::auth::scram::{Binding, ClientCredential, ClientExchange};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A pgkeel config in front of `pg_port`. `proxy` lines go in `[proxy]`,
/// `extra` is appended (more tables, users).
pub fn config(pg_port: u16, proxy: &str, extra: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
{proxy}
[admin]
listen = "127.0.0.1:0"
[tls]
# The shared server trusts trustuser and asks clearuser for a cleartext
# password: pgkeel refuses both unless told (tests/it/tls.rs tests that).
server_auth_allow = ["scram-sha-256", "md5", "password", "trust"]
[health]
user = "postgres"
password = "postgres"
interval = "200ms"
[[users]]
name = "app"
password = "app_password"
[[users]]
name = "md5user"
password = "md5_password"
[[users]]
name = "scramuser"
password = "scram_password"
[[users]]
name = "trustuser"
password = "trust_password"
[[users]]
name = "clearuser"
password = "clear_password"
[[servers]]
host = "127.0.0.1"
port = {pg_port}
{extra}
"#
    )
}

pub async fn start(toml: &str) -> pgkeel::ProxyHandle {
    let cfg = pgkeel::config::Config::from_toml_str(toml).expect("test config is valid");
    pgkeel::Proxy::start(cfg).await.expect("proxy starts")
}

pub fn url(addr: SocketAddr, user: &str, password: &str, db: &str) -> String {
    format!(
        "host={} port={} user={user} password={password} dbname={db} connect_timeout=10",
        addr.ip(),
        addr.port()
    )
}

/// Connects through `addr`; the connection task's notices and notifications
/// go to the returned channel.
pub async fn connect_msgs(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<
    (
        Client,
        tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
        tokio::task::JoinHandle<()>,
    ),
    tokio_postgres::Error,
> {
    let (client, mut conn) = tokio_postgres::connect(&url(addr, user, password, db), NoTls).await?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        while let Some(Ok(m)) = std::future::poll_fn(|cx| conn.poll_message(cx)).await {
            let _ = tx.send(m);
        }
    });
    Ok((client, rx, task))
}

pub async fn connect(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: &str,
) -> Result<Client, tokio_postgres::Error> {
    connect_msgs(addr, user, password, db)
        .await
        .map(|(c, _, _)| c)
}

pub async fn app(addr: SocketAddr) -> Client {
    connect(addr, "app", "app_password", "appdb")
        .await
        .expect("app connects through pgkeel")
}

pub fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {e}"))
}

/// Polls `cond` every 50 ms until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw protocol client, for what drivers never send.
pub struct Raw {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub fn startup_packet(params: &[(&str, &str)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i32(196_608);
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut out = BytesMut::new();
        out.put_i32(body.len() as i32 + 4);
        out.put_slice(&body);
        out
    }

    /// Logs in with SCRAM; returns the messages received up to ReadyForQuery.
    pub async fn login(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: &str,
    ) -> (Raw, Vec<(u8, BytesMut)>) {
        Self::login_with(addr, user, password, db, &[]).await
    }

    /// `login` with more startup parameters (`client_encoding`, ...).
    pub async fn login_with(
        addr: SocketAddr,
        user: &str,
        password: &str,
        db: &str,
        extra: &[(&str, &str)],
    ) -> (Raw, Vec<(u8, BytesMut)>) {
        let mut raw = Raw::connect(addr).await;
        let mut params = vec![("user", user), ("database", db)];
        params.extend_from_slice(extra);
        raw.send(&Self::startup_packet(&params)).await;
        let mut scram: Option<ClientExchange> = None;
        let mut seen = Vec::new();
        loop {
            let (t, body) = raw.recv().await.expect("message during login");
            match t {
                b'R' => {
                    let code = (&body[..4]).get_i32();
                    match code {
                        0 => {}
                        10 => {
                            let (ex, first) = ClientExchange::start(Binding::None);
                            scram = Some(ex);
                            let mut m = BytesMut::new();
                            m.put_slice(b"SCRAM-SHA-256\0");
                            m.put_i32(first.len() as i32);
                            m.put_slice(first.as_bytes());
                            raw.send_msg(b'p', &m).await;
                        }
                        11 => {
                            let fin = scram
                                .as_mut()
                                .unwrap()
                                .respond(&body[4..], ClientCredential::Password(password))
                                .unwrap();
                            raw.send_msg(b'p', fin.as_bytes()).await;
                        }
                        12 => scram.as_ref().unwrap().verify(&body[4..]).unwrap(),
                        c => panic!("unexpected auth code {c}"),
                    }
                }
                b'E' => panic!(
                    "login failed: {:?}",
                    pgkeel::protocol::parse_error_fields(&body)
                ),
                b'Z' => {
                    seen.push((t, body));
                    return (raw, seen);
                }
                _ => seen.push((t, body)),
            }
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    pub async fn send_msg(&mut self, t: u8, body: &[u8]) {
        let mut m = BytesMut::new();
        m.put_u8(t);
        m.put_i32(body.len() as i32 + 4);
        m.put_slice(body);
        self.send(&m).await;
    }

    pub async fn query(&mut self, sql: &str) {
        let mut b = sql.as_bytes().to_vec();
        b.push(0);
        self.send_msg(b'Q', &b).await;
    }

    /// The next message, or `None` at EOF (10 s limit).
    pub async fn recv(&mut self) -> Option<(u8, BytesMut)> {
        let fut = pgkeel::protocol::read_message(&mut self.stream, &mut self.buf, 1 << 30);
        match tokio::time::timeout(Duration::from_secs(10), fut).await {
            Ok(Ok(m)) => Some(m),
            Ok(Err(_)) => None,
            Err(_) => panic!("no message from pgkeel within 10 s"),
        }
    }

    /// Reads until ReadyForQuery; returns every message before it and its status.
    pub async fn until_ready(&mut self) -> (Vec<(u8, BytesMut)>, u8) {
        let mut v = Vec::new();
        loop {
            let (t, b) = self.recv().await.expect("connection open");
            if t == b'Z' {
                return (v, b[0]);
            }
            v.push((t, b));
        }
    }

    /// Expects an ErrorResponse next; returns (severity, sqlstate).
    pub async fn expect_error(&mut self) -> (String, String) {
        loop {
            let (t, b) = self.recv().await.expect("an ErrorResponse, got EOF");
            if t == b'N' || t == b'S' {
                continue;
            }
            assert_eq!(t, b'E', "expected ErrorResponse, got {}", t as char);
            let f = pgkeel::protocol::parse_error_fields(&b);
            let get = |c| {
                pgkeel::protocol::error_field(&f, c)
                    .unwrap_or("")
                    .to_owned()
            };
            return (get(b'S'), get(b'C'));
        }
    }

    /// True when the peer closes the connection within 10 s.
    pub async fn closed(&mut self) -> bool {
        let mut b = [0u8; 1024];
        let fut = async {
            loop {
                match self.stream.read(&mut b).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or(false)
    }
}

/// Server connections currently lent to clients, across the instance's pools.
pub fn lent(p: &pgkeel::ProxyHandle) -> usize {
    p.shared()
        .pools
        .all()
        .iter()
        .map(|p| p.stats.active.load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}

/// A plain HTTP/1.0 GET; returns (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_as(addr, path, None).await
}

/// A GET with an optional bearer token; returns (status code, body).
pub async fn http_get_as(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("admin listener");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// A loopback port nobody listens on (for "a server that does not answer").
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the real `pgkeel` binary on `cfg` (which listens on `addr`) until
/// the returned child is killed, or the test thread ends: it is tied to it
/// with PR_SET_PDEATHSIG. Returns once it accepts connections; keep the
/// config file as long as the child.
pub async fn spawn_binary(
    cfg: &str,
    addr: SocketAddr,
) -> (std::process::Child, tempfile::NamedTempFile) {
    use std::io::Write;
    use std::os::unix::process::CommandExt;
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(cfg.as_bytes()).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pgkeel"));
    cmd.arg("--config")
        .arg(file.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    unsafe {
        // Gone with the test thread even if the test aborts.
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("pgkeel starts");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            TcpStream::connect(addr).await.is_ok()
        })
        .await,
        "pgkeel did not listen on {addr}"
    );
    (child, file)
}
