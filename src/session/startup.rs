//! A client's first moments: TLS negotiation (SSLRequest, or PostgreSQL
//! 17's direct TLS), GSSENCRequest (refused), the StartupMessage or a
//! CancelRequest, authentication, and the welcome (ParameterStatus,
//! BackendKeyData, ReadyForQuery).

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use pgwire::messages::startup::{Authentication, NegotiateProtocolVersion};
use pgwire::messages::Message;
use rand::RngCore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::auth::scram::{self, Binding, ScramError, ServerExchange};
use crate::auth::{ct_eq, md5};
use crate::backend::BackendError;
use crate::cancel::Registration;
use crate::config::{AuthMethod, ClientTlsMode, Config, User};
use crate::limits::{ClientCaps, ClientPermit, Kind};
use crate::pool::PoolError;
use crate::protocol::{self, sqlstate};
use crate::shared::Shared;
use crate::tls::Stream;

use super::negotiate::{
    accept_tls, direct_tls, offers_tls, Encryption, EncryptionAnswer, Negotiated, TLS_NO, TLS_YES,
};

/// A client that logged in.
pub struct Login {
    pub user: User,
    pub database: String,
    pub params: Vec<(String, String)>,
    pub cancel: Registration,
    /// Bytes the client sent after its last auth message (kept for the session).
    pub pending: BytesMut,
    /// The session parameters the client wants (server defaults, overridden
    /// by its startup packet).
    pub want: crate::params::Params,
    /// Its place under the client caps (`limits.rs`), for the session's life.
    pub permit: ClientPermit,
    /// BackendKeyData and ReadyForQuery are still owed: a session-mode
    /// client gets its server connection first, so that its key names that
    /// server process (`backend_pid` is `pg_backend_pid()`, as without
    /// pgkeel).
    pub key_owed: bool,
}

/// A login to the admin console database (`[admin] database`).
pub struct AdminLogin {
    pub user: User,
    pub params: Vec<(String, String)>,
    /// Bytes the client sent after its last auth message.
    pub pending: BytesMut,
    /// Its place under `max_client_connections` + `admin_reserved_connections`.
    pub permit: ClientPermit,
}

pub enum Handshake {
    Login(Box<Login>),
    Admin(Box<AdminLogin>),
    /// The connection carried only a CancelRequest (already forwarded), or nothing.
    Done,
}

/// A refused login: what to send (already logged and counted by the caller).
#[derive(Debug)]
pub struct Refusal {
    pub fields: Vec<(u8, String)>,
}

impl Refusal {
    fn new(code: &str, message: impl Into<String>) -> Refusal {
        Refusal {
            fields: vec![
                (b'S', "FATAL".into()),
                (b'V', "FATAL".into()),
                (b'C', code.into()),
                (b'M', message.into()),
            ],
        }
    }

    pub fn sqlstate(&self) -> &str {
        protocol::error_field(&self.fields, b'C').unwrap_or("XX000")
    }

    pub fn message(&self) -> &str {
        protocol::error_field(&self.fields, b'M').unwrap_or("")
    }

    pub fn encode(mut self) -> BytesMut {
        // A server's ERROR at connect is fatal for the client's login.
        for f in self.fields.iter_mut() {
            if f.0 == b'S' || f.0 == b'V' {
                f.1 = "FATAL".into();
            }
        }
        let mut out = BytesMut::new();
        protocol::put_error_fields(&mut out, self.fields);
        out
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Refusal {
        Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string())
    }
}

/// The server's parameters for the welcome. Any member's will do (they share
/// version and settings), so a login during a failover needs no primary.
/// The first login for a database and user connects once, which also proves
/// the database exists.
async fn welcome_params(
    shared: &Arc<Shared>,
    cfg: &Config,
    database: &str,
    user: &User,
) -> Result<Vec<(String, String)>, Refusal> {
    if let Some(p) = shared.pools.welcome_for(database, &user.name) {
        return Ok(p);
    }
    // Wait for a primary, but within the login timeout.
    let wait = cfg.failover.hold_timeout.0.min(
        cfg.proxy
            .client_login_timeout
            .0
            .saturating_sub(std::time::Duration::from_millis(500)),
    );
    let primary = shared
        .topology
        .wait_for_primary(wait)
        .await
        .ok_or_else(|| {
            Refusal::new(
                sqlstate::CANNOT_CONNECT_NOW,
                "cannot connect now: no primary server is available",
            )
        })?;
    let pool = shared.pool_for(&primary, database, user);
    match pool.checkout(cfg.proxy.query_wait_timeout.0).await {
        Ok(conn) => {
            conn.release();
            Ok(pool.welcome().unwrap_or_default())
        }
        Err(PoolError::Connect(BackendError::Server(fields))) => Err(Refusal { fields }),
        Err(e @ PoolError::Timeout(_)) => {
            Err(Refusal::new(sqlstate::TOO_MANY_CONNECTIONS, e.to_string()))
        }
        Err(e) => Err(Refusal::new(sqlstate::CANNOT_CONNECT_NOW, e.to_string())),
    }
}

/// The body length of a startup packet whose length field says `len`
/// (itself included); `None` unless it holds at least a version code and
/// stays within `MAX_STARTUP_PACKET`.
pub(crate) fn startup_packet_body(len: i32) -> Option<usize> {
    let len = usize::try_from(len).ok()?;
    if !(8..=protocol::MAX_STARTUP_PACKET).contains(&len) {
        return None;
    }
    Some(len - 4)
}

/// Reads an untyped startup-phase packet (length, then body).
async fn read_startup_packet(stream: &mut Stream) -> Result<Option<BytesMut>, Refusal> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        // A port scanner or health check that connects and leaves.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes(len);
    let Some(body_len) = startup_packet_body(len) else {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid length of startup packet: {len}"),
        ));
    };
    let mut body = BytesMut::zeroed(body_len);
    stream.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Carries out a CancelRequest for the client with key (`pid`, `secret`):
/// to the server running its query, or waking its statement held for a
/// primary. A key this process does not know may be a client still on the
/// process it took over from at an upgrade: it goes there.
pub async fn cancel(shared: &Shared, pid: i32, secret: i32) {
    let Some(slot) = shared.cancels.slot(pid, secret) else {
        shared.handoff.forward_cancel(pid, secret);
        return;
    };
    match slot.current() {
        Some(key) => {
            if let Err(e) = crate::backend::send_cancel(&key).await {
                tracing::warn!(error = %e, server = %key.addr, "cannot forward cancel request");
            }
        }
        // No server: the statement may be held for a primary.
        None => slot.cancel_held(),
    }
}

/// Runs the startup phase. Bounded by `client_login_timeout` by the caller.
pub async fn handshake(
    shared: &Arc<Shared>,
    cfg: &Config,
    stream: &mut Stream,
) -> Result<Handshake, Refusal> {
    // One certificate (and its channel binding) for the whole login, even
    // if a reload swaps it meanwhile.
    let tls = shared.tls.load_full();
    let mut negotiated = Negotiated::default();
    if direct_tls(stream).await {
        if !accept_tls(&tls, stream).await {
            return Ok(Handshake::Done);
        }
        negotiated.ssl = true;
        if stream
            .tls_common()
            .and_then(|c| c.alpn_protocol())
            .is_none_or(|p| p != crate::tls::ALPN_POSTGRESQL)
        {
            // PostgreSQL refuses direct TLS without ALPN, so that a
            // connection meant for another protocol is not taken for one.
            return Err(Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "direct TLS negotiation requires ALPN protocol \"postgresql\"",
            ));
        }
    }
    let params = loop {
        let Some(mut body) = read_startup_packet(stream).await? else {
            return Ok(Handshake::Done);
        };
        let code = body.get_i32();
        match code {
            protocol::SSL_REQUEST_CODE | protocol::GSSENC_REQUEST_CODE => {
                let request = if code == protocol::SSL_REQUEST_CODE {
                    Encryption::Tls
                } else {
                    Encryption::Gss
                };
                match negotiated.answer(request, offers_tls(&tls)) {
                    Err(m) => return Err(Refusal::new(sqlstate::PROTOCOL_VIOLATION, m)),
                    Ok(EncryptionAnswer::Yes) => {
                        stream.write_all(&[TLS_YES]).await?;
                        if !accept_tls(&tls, stream).await {
                            return Ok(Handshake::Done);
                        }
                    }
                    // "N" tells libpq to go on as it is.
                    Ok(EncryptionAnswer::No) => stream.write_all(&[TLS_NO]).await?,
                }
            }
            protocol::CANCEL_REQUEST_CODE => {
                if body.len() >= 8 {
                    let pid = body.get_i32();
                    let secret = body.get_i32();
                    shared.metrics.cancel_requests_total.inc();
                    cancel(shared, pid, secret).await;
                }
                return Ok(Handshake::Done);
            }
            v if v >> 16 == 3 => {
                if tls.client_mode == ClientTlsMode::Require && !stream.is_tls() {
                    return Err(Refusal::new(
                        sqlstate::INVALID_AUTHORIZATION,
                        "pgkeel requires TLS for every login (client_tls_mode = require): connect with sslmode=require",
                    ));
                }
                let params = protocol::parse_startup_params(&body)
                    .map_err(|m| Refusal::new(sqlstate::PROTOCOL_VIOLATION, m))?;
                let unsupported: Vec<String> = params
                    .iter()
                    .filter(|(k, _)| k.starts_with("_pq_."))
                    .map(|(k, _)| k.clone())
                    .collect();
                if v & 0xffff != 0 || !unsupported.is_empty() {
                    let mut out = BytesMut::new();
                    // The newest version pgkeel speaks, whole (3.0), as
                    // PostgreSQL sends it: libpq reads 0 as protocol 0.0.
                    NegotiateProtocolVersion::new(protocol::PROTOCOL_3_0, unsupported)
                        .encode(&mut out)
                        .map_err(|e| Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()))?;
                    stream.write_all(&out).await?;
                }
                break params;
            }
            v => {
                return Err(Refusal::new(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    format!(
                        "unsupported frontend protocol {}.{}: pgkeel supports 3.0",
                        v >> 16,
                        v & 0xffff
                    ),
                ))
            }
        }
    };

    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let Some(user_name) = get("user").filter(|u| !u.is_empty()) else {
        return Err(Refusal::new(
            sqlstate::INVALID_AUTHORIZATION,
            "no PostgreSQL user name specified in startup packet",
        ));
    };
    if get("replication").is_some_and(|r| !matches!(r, "false" | "off" | "no" | "0")) {
        return Err(Refusal::new(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported through pgkeel",
        ));
    }
    let database = get("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user_name)
        .to_owned();
    let mut buf = BytesMut::with_capacity(256);
    let binding = match (&tls.acceptor, stream.is_tls()) {
        (Some(a), true) => match &a.end_point {
            Some(e) => Binding::EndPoint(e),
            None => Binding::Unused,
        },
        _ => Binding::None,
    };
    let Some(user) = cfg.user(user_name).cloned() else {
        // The same exchange as for a known role, failing the same way.
        authenticate(shared, cfg, stream, user_name, None, &mut buf, binding).await?;
        return Err(failed(user_name));
    };
    authenticate(
        shared,
        cfg,
        stream,
        &user.name,
        Some(&user),
        &mut buf,
        binding,
    )
    .await?;
    if database == cfg.admin.database {
        // Checked after the password, as PostgreSQL checks CONNECT privilege.
        if !cfg.admin.users.contains(&user.name) && !cfg.admin.stats_users.contains(&user.name) {
            return Err(Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                format!(
                    "permission denied for the admin console: user \"{}\" is not in [admin] users or stats_users",
                    user.name
                ),
            ));
        }
        let permit = admit(shared, cfg, &user.name, &database, Kind::Admin)?;
        return Ok(Handshake::Admin(Box::new(AdminLogin {
            user,
            params,
            pending: buf,
            permit,
        })));
    }
    let permit = admit(shared, cfg, &user.name, &database, Kind::Session)?;

    if shared.disabled.is_disabled(&database) {
        // PostgreSQL's answer for a database that allows no connections.
        return Err(Refusal::new(
            sqlstate::OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("database \"{database}\" is not currently accepting connections (DISABLE from pgkeel's admin console)"),
        ));
    }
    let mut server_params = welcome_params(shared, cfg, &database, &user).await?;
    // What the client asked for at startup wins over the server's defaults;
    // the first server it gets is SET to match.
    let mut want = crate::params::Params::from_pairs(
        server_params.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    for (k, v) in &params {
        match k.as_str() {
            "user" | "database" | "replication" => {}
            "options" => {
                for (k, v) in startup_options(v) {
                    want.set_startup_extra(&k, &v);
                }
            }
            k if k.starts_with("_pq_.") => {}
            // Settings (search_path, extra_float_digits...): every server
            // the client gets is set to match.
            k => want.set_startup_extra(k, v),
        }
    }
    // The server reports an encoding by its own name, whatever spelling the
    // client used; one it does not know ends the login, as it would there.
    if let Some(asked) = want.get("client_encoding").map(str::to_owned) {
        let Some(name) = crate::params::canonical_encoding(&asked) else {
            return Err(Refusal::new(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("invalid value for parameter \"client_encoding\": \"{asked}\""),
            ));
        };
        want.set("client_encoding", name);
    }
    for (k, v) in server_params.iter_mut() {
        if let Some(w) = want.get(k) {
            *v = w.to_owned();
        }
    }

    let cancel = shared.cancels.register();
    let mut out = BytesMut::with_capacity(512);
    Authentication::Ok.encode(&mut out).expect("encodes");
    for (k, v) in &server_params {
        protocol::put_parameter_status(&mut out, k, v);
    }
    let key_owed = user.pool_mode == crate::config::PoolMode::Session;
    if !key_owed {
        protocol::put_backend_key(&mut out, cancel.pid, cancel.secret);
        protocol::put_ready(&mut out, protocol::TxStatus::Idle);
    }
    stream.write_all(&out).await?;
    Ok(Handshake::Login(Box::new(Login {
        user,
        database,
        params,
        cancel,
        pending: buf,
        want,
        permit,
        key_owed,
    })))
}

/// A place under the client caps, or the refusal (53300) naming the cap.
fn admit(
    shared: &Shared,
    cfg: &Config,
    user: &str,
    database: &str,
    kind: Kind,
) -> Result<ClientPermit, Refusal> {
    let caps = ClientCaps::from_config(&cfg.proxy);
    shared
        .limits
        .client(user, database, kind, caps)
        .map_err(|limit| {
            shared
                .metrics
                .limit_refusals_total
                .with_label_values(&[limit.setting()])
                .inc();
            Refusal::new(limit.sqlstate(), limit.message(user, database))
        })
}

async fn send_auth(stream: &mut Stream, msg: Authentication) -> Result<(), Refusal> {
    let mut out = BytesMut::new();
    msg.encode(&mut out)
        .map_err(|e| Refusal::new(sqlstate::INTERNAL_ERROR, e.to_string()))?;
    stream.write_all(&out).await?;
    Ok(())
}

/// Reads a password-family message ('p'). Its variants are parsed by hand,
/// with every length checked: this is untrusted input before login.
async fn read_password_message(
    stream: &mut Stream,
    buf: &mut BytesMut,
) -> Result<BytesMut, Refusal> {
    let (typ, body) = protocol::read_message(stream, buf, protocol::MAX_STARTUP_PACKET).await?;
    if typ != b'p' {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!(
                "expected password response, got message type {}",
                typ as char
            ),
        ));
    }
    Ok(body)
}

fn malformed(what: &str) -> Refusal {
    Refusal::new(
        sqlstate::PROTOCOL_VIOLATION,
        format!("malformed {what} message"),
    )
}

/// PasswordMessage: a NUL-terminated string.
pub(crate) fn parse_password(body: &[u8]) -> Result<&[u8], Refusal> {
    match body.split_last() {
        Some((0, pw)) if !pw.contains(&0) => Ok(pw),
        _ => Err(malformed("password")),
    }
}

/// SASLInitialResponse: mechanism name, then an Int32 length and that many bytes.
pub(crate) fn parse_sasl_initial(body: &[u8]) -> Result<(&[u8], &[u8]), Refusal> {
    let bad = || malformed("SASLInitialResponse");
    let nul = body.iter().position(|&b| b == 0).ok_or_else(bad)?;
    let (mech, rest) = (&body[..nul], &body[nul + 1..]);
    let len_bytes: [u8; 4] = rest
        .get(..4)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(bad)?;
    let len = i32::from_be_bytes(len_bytes);
    let data = &rest[4..];
    if len < 0 || len as usize != data.len() {
        return Err(bad());
    }
    Ok((mech, data))
}

/// A wrong password, and an unknown role (the same words for both).
fn failed(user: &str) -> Refusal {
    Refusal::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Authenticates `name`: a configured `user`, or (`None`) an unknown role,
/// which gets the same messages in the same order and always fails.
async fn authenticate(
    shared: &Arc<Shared>,
    cfg: &Config,
    stream: &mut Stream,
    name: &str,
    user: Option<&User>,
    buf: &mut BytesMut,
    binding: Binding<'_>,
) -> Result<(), Refusal> {
    match cfg.proxy.auth_method {
        AuthMethod::Md5 => {
            let mut salt = [0u8; 4];
            rand::rng().fill_bytes(&mut salt);
            send_auth(stream, Authentication::MD5Password(salt.to_vec())).await?;
            let body = read_password_message(stream, buf).await?;
            let pw = parse_password(&body)?;
            let expected = user
                .and_then(|u| md5::expected_response(&u.secret, &u.name, &salt))
                .ok_or_else(|| failed(name))?;
            if !ct_eq(expected.as_bytes(), pw) {
                return Err(failed(name));
            }
        }
        AuthMethod::ScramSha256 => {
            let mock;
            let verifier = match user.and_then(|u| u.secret.scram_verifier()) {
                Some(v) => v,
                None => {
                    mock = shared.mock_key.verifier(name);
                    &mock
                }
            };
            // As PostgreSQL: -PLUS first, and only where it can bind.
            let mut mechanisms = Vec::with_capacity(2);
            if let Binding::EndPoint(_) = binding {
                mechanisms.push(scram::MECHANISM_PLUS.into());
            }
            mechanisms.push(scram::MECHANISM.into());
            send_auth(stream, Authentication::SASL(mechanisms)).await?;
            let body = read_password_message(stream, buf).await?;
            let (mech, data) = parse_sasl_initial(&body)?;
            let plus = if mech == scram::MECHANISM.as_bytes() {
                false
            } else if mech == scram::MECHANISM_PLUS.as_bytes() {
                true
            } else {
                return Err(Refusal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!(
                        "SASL mechanism {:?} is not supported; use SCRAM-SHA-256",
                        String::from_utf8_lossy(mech)
                    ),
                ));
            };
            let scram_err = |e: ScramError| match e {
                ScramError::BadProof => failed(name),
                ScramError::ChannelBinding(_) => {
                    Refusal::new(sqlstate::INVALID_AUTHORIZATION, e.to_string())
                }
                e => Refusal::new(sqlstate::PROTOCOL_VIOLATION, e.to_string()),
            };
            let (exchange, server_first) =
                ServerExchange::start(verifier, data, plus, binding).map_err(scram_err)?;
            send_auth(
                stream,
                Authentication::SASLContinue(Bytes::from(server_first)),
            )
            .await?;
            let fin = read_password_message(stream, buf).await?;
            let (server_final, keys) = exchange.finish(&fin).map_err(scram_err)?;
            let Some(user) = user else {
                // A mock verifier's proof cannot match; never reached.
                return Err(failed(name));
            };
            send_auth(stream, Authentication::SASLFinal(Bytes::from(server_final))).await?;
            if user.server_password.is_none() {
                shared.remember_scram_keys(&user.name, keys);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_family_parsers_reject_short_and_odd_input() {
        assert_eq!(parse_password(b"md5abc\0").unwrap(), b"md5abc");
        assert!(parse_password(b"").is_err());
        assert!(parse_password(b"no-nul").is_err());
        assert!(parse_password(b"a\0b\0").is_err());
        let (m, d) = parse_sasl_initial(b"SCRAM-SHA-256\0\0\0\0\x03abc").unwrap();
        assert_eq!((m, d), (&b"SCRAM-SHA-256"[..], &b"abc"[..]));
        for bad in [
            &b"\xff\xff"[..],
            b"SCRAM\0",
            b"SCRAM\0\0\0",
            b"SCRAM\0\0\0\0\x09abc",
            b"SCRAM\0\xff\xff\xff\xff",
        ] {
            assert!(parse_sasl_initial(bad).is_err(), "{bad:?}");
        }
    }
}

/// The settings in a startup packet's `options` (`-c name=value` or
/// `--name=value`, separated by spaces; `\\ ` is a space in a value).
pub(crate) fn startup_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => word.extend(chars.next()),
            c if c.is_ascii_whitespace() => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else {
            w.strip_prefix("-c")
                .or_else(|| w.strip_prefix("--"))
                .map(str::to_owned)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_"), v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod options_tests {
    #[test]
    fn startup_options_are_read() {
        assert_eq!(
            super::startup_options(
                "-c search_path=a,b  -cstatement_timeout=5s --work-mem=8MB -c x=a\\ b"
            ),
            vec![
                ("search_path".to_owned(), "a,b".to_owned()),
                ("statement_timeout".to_owned(), "5s".to_owned()),
                ("work_mem".to_owned(), "8MB".to_owned()),
                ("x".to_owned(), "a b".to_owned()),
            ]
        );
    }
}
