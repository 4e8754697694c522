//! A server connection: connect, start up and authenticate to PostgreSQL, and
//! the few control exchanges pgkeel runs itself (ROLLBACK, DISCARD ALL).
//! Query traffic does not pass through here: the relay moves its bytes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pgwire::messages::startup::{Password, SASLInitialResponse, SASLResponse, Startup};
use pgwire::messages::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::md5;
use crate::auth::scram::{self, ClientCredential, ClientExchange, ScramKeys};
use crate::cancel::ServerKey;
use crate::config::{ServerAuth, ServerTlsMode};
use crate::protocol::{self, error_field, parse_error_fields};
use crate::tls::{ServerTls, Stream};
use protocol::{ENCRYPTION_NO as TLS_NO, ENCRYPTION_YES as TLS_YES};

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// What pgkeel knows to log in to a server as one role.
#[derive(Clone, Default)]
pub struct ServerCredentials {
    pub user: String,
    pub password: Option<String>,
    /// The stored md5 hash, enough to answer an md5 challenge.
    pub md5_hash: Option<String>,
    /// SCRAM keys recovered from a client's login (pass-through).
    pub scram_keys: Option<ScramKeys>,
}

/// Why a server connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The server refused us with an ErrorResponse; its fields go to the client.
    #[error("server error: {}", error_field(.0, b'M').unwrap_or("?"))]
    Server(Vec<(u8, String)>),
    #[error("cannot connect to {addr}: {source}")]
    Io {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("timed out connecting to {0}")]
    Timeout(String),
    #[error("cannot log in to the server: {0}")]
    Auth(String),
    #[error("protocol error from server: {0}")]
    Protocol(String),
}

impl BackendError {
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Server(f) => error_field(f, b'C').unwrap_or("XX000"),
            BackendError::Auth(_) => protocol::sqlstate::INVALID_PASSWORD,
            _ => "08001",
        }
    }
}

/// One authenticated connection to a PostgreSQL server.
pub struct ServerConn {
    pub stream: Stream,
    pub id: u64,
    pub key: Arc<ServerKey>,
    /// ParameterStatus values the server sent at startup.
    pub params: Vec<(String, String)>,
    /// The tracked session parameters this connection has now.
    pub state: crate::params::Params,
    /// Prepared statements pgkeel made on this connection.
    pub statements: crate::statements::ConnStatements,
    pub created: Instant,
    pub last_used: Instant,
    /// Its database has pgkeel's commit token functions for its user
    /// (`None`: not asked yet).
    pub commit_tokens: Option<bool>,
}

impl ServerConn {
    pub async fn connect(
        host: &str,
        port: u16,
        database: &str,
        creds: &ServerCredentials,
        tls: &ServerTls,
        timeout: Duration,
    ) -> Result<ServerConn, BackendError> {
        let addr = format!("{host}:{port}");
        let fut = Self::connect_inner(&addr, host, database, creds, tls);
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Timeout(addr)),
        }
    }

    async fn connect_inner(
        addr: &str,
        host: &str,
        database: &str,
        creds: &ServerCredentials,
        tls: &ServerTls,
    ) -> Result<ServerConn, BackendError> {
        let io = |source| BackendError::Io {
            addr: addr.to_owned(),
            source,
        };
        let tcp = TcpStream::connect(addr).await.map_err(io)?;
        tcp.set_nodelay(true).map_err(io)?;
        let peer: SocketAddr = tcp.peer_addr().map_err(io)?;
        let mut stream = Stream::plain(tcp);
        if let Some(connector) = &tls.connector {
            negotiate_tls(&mut stream, host, tls.mode, connector)
                .await
                .map_err(|e| match e {
                    TlsRefused::Io(e) => io(e),
                    TlsRefused::Other(e) => e,
                })?;
        }
        // tls-server-end-point data of the server's certificate, for -PLUS.
        let end_point = stream
            .tls_common()
            .and_then(|c| c.peer_certificates())
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::channel_binding::server_end_point(c));

        let mut startup = Startup::new();
        startup.parameters.insert("user".into(), creds.user.clone());
        startup
            .parameters
            .insert("database".into(), database.to_owned());
        let mut out = BytesMut::new();
        startup
            .encode(&mut out)
            .map_err(|e| BackendError::Protocol(e.to_string()))?;
        stream.write_all(&out).await.map_err(io)?;
        stream.flush().await.map_err(io)?;

        let mut buf = BytesMut::with_capacity(1024);
        let mut params = Vec::new();
        let mut key = None;
        let mut scram: Option<ClientExchange> = None;
        // Whether the server asked for anything before AuthenticationOk,
        // and whether a SCRAM exchange ended with its signature checked.
        let mut challenged = false;
        let mut scram_verified = false;
        let refuse = |what: &str, auth: &str| {
            BackendError::Auth(format!(
                "the server asks for {what}, which server_auth_allow does not list (add \"{auth}\" to [tls] server_auth_allow to accept it)"
            ))
        };
        loop {
            let (typ, body) = protocol::read_message(&mut stream, &mut buf, 1 << 20)
                .await
                .map_err(io)?;
            match typ {
                b'R' => {
                    let mut b = &body[..];
                    if b.len() < 4 {
                        return Err(BackendError::Protocol(
                            "short authentication message".into(),
                        ));
                    }
                    let code = b.get_i32();
                    out.clear();
                    match code {
                        0 if scram.is_some() && !scram_verified => {
                            return Err(BackendError::Auth(
                                "the server ended the SCRAM exchange without proving it knows the password (no server signature)".into(),
                            ));
                        }
                        0 if !challenged
                            && !tls.allows(ServerAuth::Trust)
                            && !tls.cert_login(stream.is_tls()) =>
                        {
                            return Err(refuse("no authentication at all (trust)", "trust"));
                        }
                        0 => {}
                        3 if !tls.allows(ServerAuth::Password) => {
                            return Err(refuse("a cleartext password", "password"));
                        }
                        5 if !tls.allows(ServerAuth::Md5) => {
                            return Err(refuse("an md5 password", "md5"));
                        }
                        10 if !tls.allows(ServerAuth::ScramSha256) => {
                            return Err(refuse("SCRAM-SHA-256", "scram-sha-256"));
                        }
                        3 => {
                            let pw = creds
                                .password
                                .as_deref()
                                .ok_or_else(|| no_password(creds, "a cleartext password"))?;
                            Password::new(pw.to_owned())
                                .encode(&mut out)
                                .map_err(proto)?;
                        }
                        5 => {
                            let salt: [u8; 4] = b
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or_else(|| BackendError::Protocol("short md5 salt".into()))?;
                            let stored = match (&creds.password, &creds.md5_hash) {
                                (Some(p), _) => md5::stored_hash(&creds.user, p),
                                (None, Some(h)) => h.clone(),
                                _ => return Err(no_password(creds, "an md5 password")),
                            };
                            Password::new(md5::response_from_stored(&stored, &salt))
                                .encode(&mut out)
                                .map_err(proto)?;
                        }
                        10 => {
                            let mechs: Vec<&[u8]> = b.split(|&c| c == 0).collect();
                            let (mech, binding) = scram::choose_mechanism(
                                &mechs,
                                end_point.as_deref(),
                                stream.is_tls(),
                            )
                            .ok_or_else(|| {
                                BackendError::Auth(
                                    "the server offers no SASL mechanism pgkeel supports".into(),
                                )
                            })?;
                            if creds.password.is_none() && creds.scram_keys.is_none() {
                                return Err(no_password(creds, "SCRAM"));
                            }
                            let (ex, first) = ClientExchange::start(binding);
                            scram = Some(ex);
                            SASLInitialResponse::new(mech.into(), Some(Bytes::from(first)))
                                .encode(&mut out)
                                .map_err(proto)?;
                        }
                        11 => {
                            let ex = scram.as_mut().ok_or_else(|| {
                                BackendError::Protocol("SASLContinue before SASL".into())
                            })?;
                            let cred = match (&creds.password, &creds.scram_keys) {
                                (Some(p), _) => ClientCredential::Password(p),
                                (None, Some(k)) => ClientCredential::Keys(k),
                                _ => return Err(no_password(creds, "SCRAM")),
                            };
                            let fin = ex
                                .respond(b, cred)
                                .map_err(|e| BackendError::Auth(e.to_string()))?;
                            SASLResponse::new(Bytes::from(fin))
                                .encode(&mut out)
                                .map_err(proto)?;
                        }
                        12 => {
                            let ex = scram.as_ref().ok_or_else(|| {
                                BackendError::Protocol("SASLFinal before SASL".into())
                            })?;
                            ex.verify(b)
                                .map_err(|e| BackendError::Auth(e.to_string()))?;
                            scram_verified = true;
                        }
                        other => {
                            return Err(BackendError::Auth(format!("the server asks for an authentication method pgkeel does not support (code {other})")));
                        }
                    }
                    if code != 0 {
                        challenged = true;
                    }
                    if !out.is_empty() {
                        stream.write_all(&out).await.map_err(io)?;
                        stream.flush().await.map_err(io)?;
                    }
                }
                b'E' => return Err(BackendError::Server(parse_error_fields(&body))),
                b'S' => {
                    let mut b = &body[..];
                    if let (Some(k), Some(v)) =
                        (protocol::get_cstr(&mut b), protocol::get_cstr(&mut b))
                    {
                        params.push((k, v));
                    }
                }
                b'K' => {
                    let mut b = &body[..];
                    if b.len() >= 8 {
                        key = Some(ServerKey {
                            addr: peer,
                            pid: b.get_i32(),
                            secret: b.get_i32(),
                        });
                    }
                }
                b'Z' => break,
                // NoticeResponse, NegotiateProtocolVersion: nothing to do.
                _ => {}
            }
        }
        let key =
            key.ok_or_else(|| BackendError::Protocol("the server sent no BackendKeyData".into()))?;
        let now = Instant::now();
        Ok(ServerConn {
            stream,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            key: Arc::new(key),
            state: crate::params::Params::from_pairs(
                params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            ),
            params,
            statements: Default::default(),
            created: now,
            last_used: now,
            commit_tokens: None,
        })
    }

    /// Runs one simple query and waits for ReadyForQuery; returns the
    /// transaction status it reports, or an error when the query failed.
    pub async fn run_simple(&mut self, sql: &str, timeout: Duration) -> Result<u8, String> {
        self.exchange(sql, timeout).await.map(|(status, _)| status)
    }

    /// Runs `sql` (one statement returning one row, outside a transaction)
    /// and returns the text of its first column, `None` for NULL.
    pub async fn query_value(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<Option<String>, String> {
        match self.exchange(sql, timeout).await? {
            (b'I', Some(v)) => Ok(v),
            (b'I', None) => Err(format!("{sql:?} returned no row")),
            _ => Err(format!("{sql:?} left a transaction open")),
        }
    }

    /// One simple query to its ReadyForQuery: the status byte and the first
    /// column of the last row, or the error message.
    async fn exchange(
        &mut self,
        sql: &str,
        timeout: Duration,
    ) -> Result<(u8, Option<Option<String>>), String> {
        let fut = async {
            let mut out = BytesMut::new();
            protocol::put_query(&mut out, sql);
            self.stream
                .write_all(&out)
                .await
                .map_err(|e| e.to_string())?;
            self.stream.flush().await.map_err(|e| e.to_string())?;
            let mut buf = BytesMut::with_capacity(256);
            let mut value = None;
            let mut failed = None;
            loop {
                let (typ, body) = protocol::read_message(&mut self.stream, &mut buf, 1 << 30)
                    .await
                    .map_err(|e| e.to_string())?;
                match typ {
                    b'D' => value = Some(first_column(&body)),
                    b'E' => {
                        let f = parse_error_fields(&body);
                        failed = Some(error_field(&f, b'M').unwrap_or("error").to_owned());
                    }
                    b'Z' => {
                        let status = body.first().copied().unwrap_or(b'I');
                        return match failed {
                            Some(m) => Err(m),
                            None => Ok((status, value)),
                        };
                    }
                    _ => {}
                }
            }
        };
        tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| Err(format!("{sql:?} timed out")))
    }

    /// True when the server closed the connection or sent something unasked
    /// (a FATAL on shutdown, a notification) while it sat idle. Such a
    /// connection is not handed to a client.
    pub fn is_stale(&self) -> bool {
        !self.stream.tcp().is_some_and(socket_quiet)
    }
}

/// The socket has nothing to read and is not closed: one non-blocking
/// `recv(MSG_PEEK)` asked of the kernel (the runtime's readiness flags lag
/// a close by up to a reactor turn). A peek, so TLS records stay intact.
pub fn socket_quiet(stream: &TcpStream) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    // The runtime's sockets are non-blocking, so the peek never waits.
    matches!(
        socket2::SockRef::from(stream).peek(&mut b),
        Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
    )
}

/// The runtime has seen the socket readable since its last read cleared
/// that (bytes or a close arrived): no syscall, only the runtime's flags.
pub fn readiness_seen(stream: &TcpStream) -> bool {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    stream.poll_read_ready(&mut cx).is_ready()
}

enum TlsRefused {
    Io(std::io::Error),
    Other(BackendError),
}

/// SSLRequest, then the TLS handshake if the server says `S`. `prefer`
/// goes on in plaintext when it says `N`; the other modes fail.
async fn negotiate_tls(
    stream: &mut Stream,
    host: &str,
    mode: ServerTlsMode,
    connector: &tokio_rustls::TlsConnector,
) -> Result<(), TlsRefused> {
    let mut req = BytesMut::with_capacity(8);
    protocol::put_ssl_request(&mut req);
    stream.write_all(&req).await.map_err(TlsRefused::Io)?;
    // One byte, read from the socket itself: anything the server sent
    // after it belongs to the TLS handshake (CVE-2021-23222).
    let mut answer = [0u8; 1];
    stream
        .read_exact(&mut answer)
        .await
        .map_err(TlsRefused::Io)?;
    match answer[0] {
        TLS_YES => {
            let name = crate::tls::server_name(host)
                .map_err(|e| TlsRefused::Other(BackendError::Protocol(e)))?;
            stream.connect_tls(connector, name).await.map_err(|e| {
                TlsRefused::Other(BackendError::Auth(format!(
                    "TLS handshake with the server failed (server_tls_mode = {}): {e}",
                    mode_name(mode)
                )))
            })
        }
        TLS_NO if mode == ServerTlsMode::Prefer => Ok(()),
        TLS_NO => Err(TlsRefused::Other(BackendError::Auth(format!(
            "the server does not accept TLS, and server_tls_mode = {} requires it",
            mode_name(mode)
        )))),
        other => Err(TlsRefused::Other(BackendError::Protocol(format!(
            "unexpected answer to SSLRequest: {other:#04x}"
        )))),
    }
}

fn mode_name(mode: ServerTlsMode) -> &'static str {
    match mode {
        ServerTlsMode::Disable => "disable",
        ServerTlsMode::Prefer => "prefer",
        ServerTlsMode::Require => "require",
        ServerTlsMode::VerifyCa => "verify-ca",
        ServerTlsMode::VerifyFull => "verify-full",
    }
}

/// The first column of a DataRow body, as text (`None` for NULL).
fn first_column(body: &[u8]) -> Option<String> {
    let len = i32::from_be_bytes(body.get(2..6)?.try_into().ok()?);
    let len = usize::try_from(len).ok()?;
    let v = body.get(6..6 + len)?;
    Some(String::from_utf8_lossy(v).into_owned())
}

fn proto(e: pgwire::error::PgWireError) -> BackendError {
    BackendError::Protocol(e.to_string())
}

fn no_password(creds: &ServerCredentials, what: &str) -> BackendError {
    BackendError::Auth(format!(
        "the server asks for {what} for role {:?} and pgkeel knows no password for it: set server_password (or a plain password) for this user",
        creds.user
    ))
}

/// Asks a server to cancel what the connection `key` runs, on a fresh connection.
pub async fn send_cancel(key: &ServerKey) -> std::io::Result<()> {
    let mut s = TcpStream::connect(key.addr).await?;
    let mut out = BytesMut::with_capacity(16);
    protocol::put_cancel_request(&mut out, key.pid, key.secret);
    s.write_all(&out).await?;
    // PostgreSQL closes the connection once it has the request.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
    Ok(())
}
