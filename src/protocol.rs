//! The wire protocol as far as pgkeel needs it: message framing, and the few
//! messages it builds itself. Everything else is forwarded as bytes.
//!
//! Message construction for the (cold) startup and auth phase goes through
//! `pgwire`'s message types; the hot path only reads 5-byte headers.

use bytes::{Buf, BufMut, BytesMut};
use pgwire::messages::response::{ErrorResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Type byte + length field.
pub const HEADER_LEN: usize = 5;

/// Protocol codes sent in place of a version in the first packet.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;
/// The one-byte answers to an SSLRequest (and a GSSENCRequest): `S`, the
/// TLS handshake follows; `N`, go on unencrypted.
pub const ENCRYPTION_YES: u8 = b'S';
pub const ENCRYPTION_NO: u8 = b'N';
pub const PROTOCOL_3_0: i32 = 196_608;

/// Startup packets are small; PostgreSQL caps them at 10000 bytes too.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Message type bytes sent by clients (protocol 3.0). The same byte means
/// different things in each direction (`D` is Describe here, DataRow there),
/// hence two modules.
pub mod frontend {
    pub const QUERY: u8 = b'Q';
    pub const PARSE: u8 = b'P';
    pub const BIND: u8 = b'B';
    pub const DESCRIBE: u8 = b'D';
    pub const EXECUTE: u8 = b'E';
    pub const CLOSE: u8 = b'C';
    pub const FLUSH: u8 = b'H';
    pub const SYNC: u8 = b'S';
    pub const FUNCTION_CALL: u8 = b'F';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_FAIL: u8 = b'f';
    pub const TERMINATE: u8 = b'X';
    /// Password, SASL initial and SASL response messages share this byte.
    pub const PASSWORD: u8 = b'p';
}

/// Message type bytes sent by servers (protocol 3.0).
pub mod backend {
    pub const AUTHENTICATION: u8 = b'R';
    pub const BACKEND_KEY_DATA: u8 = b'K';
    pub const PARSE_COMPLETE: u8 = b'1';
    pub const BIND_COMPLETE: u8 = b'2';
    pub const CLOSE_COMPLETE: u8 = b'3';
    pub const COMMAND_COMPLETE: u8 = b'C';
    pub const COPY_DATA: u8 = b'd';
    pub const COPY_DONE: u8 = b'c';
    pub const COPY_IN_RESPONSE: u8 = b'G';
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    pub const DATA_ROW: u8 = b'D';
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    pub const ERROR_RESPONSE: u8 = b'E';
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    pub const NO_DATA: u8 = b'n';
    pub const NOTICE_RESPONSE: u8 = b'N';
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    pub const PARAMETER_STATUS: u8 = b'S';
    pub const PORTAL_SUSPENDED: u8 = b's';
    pub const READY_FOR_QUERY: u8 = b'Z';
    pub const ROW_DESCRIPTION: u8 = b'T';
}

/// Field codes of ErrorResponse / NoticeResponse bodies.
pub mod field {
    pub const SEVERITY: u8 = b'S';
    /// Severity, never localized (PostgreSQL 9.6+).
    pub const SEVERITY_RAW: u8 = b'V';
    pub const CODE: u8 = b'C';
    pub const MESSAGE: u8 = b'M';
    pub const HINT: u8 = b'H';
}

/// The transaction status a ReadyForQuery reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxStatus {
    /// `I`: not in a transaction block.
    #[default]
    Idle,
    /// `T`: in a transaction block.
    InTransaction,
    /// `E`: in a failed transaction block.
    Failed,
}

impl TxStatus {
    /// The status of a ReadyForQuery body byte; `None` if it is not one.
    pub fn from_byte(b: u8) -> Option<TxStatus> {
        match b {
            b'I' => Some(TxStatus::Idle),
            b'T' => Some(TxStatus::InTransaction),
            b'E' => Some(TxStatus::Failed),
            _ => None,
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            TxStatus::Idle => b'I',
            TxStatus::InTransaction => b'T',
            TxStatus::Failed => b'E',
        }
    }
}

/// Frontend message types pgkeel accepts after startup (protocol 3.0).
pub fn is_frontend_type(t: u8) -> bool {
    use frontend::*;
    matches!(
        t,
        QUERY
            | PARSE
            | BIND
            | DESCRIBE
            | EXECUTE
            | CLOSE
            | FLUSH
            | SYNC
            | FUNCTION_CALL
            | COPY_DATA
            | COPY_DONE
            | COPY_FAIL
            | TERMINATE
    )
}

/// Reads a message header: `(type, total length including the type byte)`.
/// `Err` when the length field is impossible (< 4).
#[inline]
pub fn header(buf: &[u8]) -> Option<Result<(u8, usize), i32>> {
    if buf.len() < HEADER_LEN {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Some(Err(len));
    }
    Some(Ok((buf[0], len as usize + 1)))
}

/// PostgreSQL severities pgkeel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Error,
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        }
    }
}

/// SQLSTATE codes pgkeel reports itself.
pub mod sqlstate {
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    pub const CONNECTION_FAILURE: &str = "08006";
    pub const SERIALIZATION_FAILURE: &str = "40001";
    pub const CONNECTION_EXCEPTION: &str = "08000";
    pub const INVALID_PASSWORD: &str = "28P01";
    pub const INVALID_AUTHORIZATION: &str = "28000";
    pub const TOO_MANY_CONNECTIONS: &str = "53300";
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// "terminating connection because of crash of another server process"
    pub const CRASH_SHUTDOWN: &str = "57P02";
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    pub const INTERNAL_ERROR: &str = "XX000";
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    pub const OBJECT_NOT_IN_PREREQUISITE_STATE: &str = "55000";
    pub const IDLE_SESSION_TIMEOUT: &str = "57P05";
    pub const IDLE_IN_TRANSACTION_TIMEOUT: &str = "25P03";
    pub const QUERY_CANCELED: &str = "57014";
    pub const INVALID_PARAMETER_VALUE: &str = "22023";
}

/// Appends an ErrorResponse.
pub fn put_error(buf: &mut BytesMut, severity: Severity, code: &str, message: &str) {
    let fields = vec![
        (b'S', severity.as_str().to_owned()),
        (b'V', severity.as_str().to_owned()),
        (b'C', code.to_owned()),
        (b'M', message.to_owned()),
    ];
    ErrorResponse::new(fields)
        .encode(buf)
        .expect("an ErrorResponse always encodes");
}

/// Appends an ErrorResponse copied from a server's fields.
pub fn put_error_fields(buf: &mut BytesMut, fields: Vec<(u8, String)>) {
    ErrorResponse::new(fields)
        .encode(buf)
        .expect("an ErrorResponse always encodes");
}

/// Appends a NoticeResponse of severity WARNING.
pub fn put_notice(buf: &mut BytesMut, code: &str, message: &str) {
    let start = buf.len();
    buf.put_u8(backend::NOTICE_RESPONSE);
    buf.put_i32(0);
    for (f, v) in [
        (field::SEVERITY, "WARNING"),
        (field::SEVERITY_RAW, "WARNING"),
        (field::CODE, code),
        (field::MESSAGE, message),
    ] {
        buf.put_u8(f);
        buf.put_slice(v.as_bytes());
        buf.put_u8(0);
    }
    buf.put_u8(0);
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

pub fn put_ready(buf: &mut BytesMut, status: TxStatus) {
    let status = match status {
        TxStatus::InTransaction => TransactionStatus::Transaction,
        TxStatus::Failed => TransactionStatus::Error,
        TxStatus::Idle => TransactionStatus::Idle,
    };
    ReadyForQuery::new(status)
        .encode(buf)
        .expect("ReadyForQuery always encodes");
}

pub fn put_parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    ParameterStatus::new(name.to_owned(), value.to_owned())
        .encode(buf)
        .expect("ParameterStatus always encodes");
}

pub fn put_backend_key(buf: &mut BytesMut, pid: i32, secret: i32) {
    BackendKeyData::new(pid, SecretKey::I32(secret))
        .encode(buf)
        .expect("BackendKeyData always encodes");
}

/// Appends a CancelRequest packet (sent to a server on a fresh connection).
/// Appends an SSLRequest (pgkeel asking a server for TLS).
pub fn put_ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(SSL_REQUEST_CODE);
}

pub fn put_cancel_request(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// Appends a CommandComplete with `tag` (e.g. "ROLLBACK").
pub fn put_command_complete(buf: &mut BytesMut, tag: &str) {
    buf.put_u8(backend::COMMAND_COMPLETE);
    buf.put_i32((4 + tag.len() + 1) as i32);
    buf.put_slice(tag.as_bytes());
    buf.put_u8(0);
}

/// The SQL bytes of a whole Query ('Q') or Parse ('P') frame (empty if malformed).
pub fn query_text(typ: u8, frame: &[u8]) -> &[u8] {
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    let body = if typ == frontend::PARSE {
        // Parse: statement name, then the query.
        match memchr::memchr(0, body) {
            Some(i) => &body[i + 1..],
            None => return &[],
        }
    } else {
        body
    };
    // memchr: several times per statement on the data path.
    let end = memchr::memchr(0, body).unwrap_or(body.len());
    &body[..end]
}

/// Appends a simple Query message.
pub fn put_query(buf: &mut BytesMut, sql: &str) {
    buf.put_u8(frontend::QUERY);
    buf.put_i32((4 + sql.len() + 1) as i32);
    buf.put_slice(sql.as_bytes());
    buf.put_u8(0);
}

/// Reads a NUL-terminated string from the front of `buf`.
pub fn get_cstr(buf: &mut &[u8]) -> Option<String> {
    let end = buf.iter().position(|&b| b == 0)?;
    let s = String::from_utf8_lossy(&buf[..end]).into_owned();
    buf.advance(end + 1);
    Some(s)
}

/// The statement name of a Bind frame (`""`: the unnamed statement).
pub fn bind_statement_name(frame: &[u8]) -> Option<&[u8]> {
    let body = frame.get(HEADER_LEN..)?;
    let portal_end = memchr::memchr(0, body)?;
    let rest = &body[portal_end + 1..];
    memchr::memchr(0, rest).map(|end| &rest[..end])
}

/// Parses the fields of an ErrorResponse or NoticeResponse body.
pub fn parse_error_fields(mut body: &[u8]) -> Vec<(u8, String)> {
    let mut fields = Vec::new();
    while let Some((&code, rest)) = body.split_first() {
        if code == 0 {
            break;
        }
        body = rest;
        match get_cstr(&mut body) {
            Some(v) => fields.push((code, v)),
            None => break,
        }
    }
    fields
}

pub fn error_field(fields: &[(u8, String)], code: u8) -> Option<&str> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.as_str())
}

/// The parameters of a StartupMessage body (after the version).
pub fn parse_startup_params(mut body: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let mut params = Vec::new();
    loop {
        let key = get_cstr(&mut body).ok_or("startup packet is not NUL-terminated")?;
        if key.is_empty() {
            return Ok(params);
        }
        let value = get_cstr(&mut body).ok_or("startup parameter has no value")?;
        params.push((key, value));
    }
}

/// What `read_message` reserves at most ahead of the bytes received.
const READ_MESSAGE_STEP: usize = 1 << 20;

/// Reads one whole typed message (startup/auth phase and control queries;
/// the relay never uses this). Returns the type and the body.
pub async fn read_message<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut BytesMut,
    max_len: usize,
) -> std::io::Result<(u8, BytesMut)> {
    use std::io::{Error, ErrorKind};
    loop {
        if let Some(h) = header(buf) {
            let (typ, len) = h.map_err(|l| {
                Error::new(
                    ErrorKind::InvalidData,
                    format!("invalid message length {l}"),
                )
            })?;
            if len > max_len {
                return Err(Error::new(
                    ErrorKind::InvalidData,
                    format!("message of {len} bytes is over the limit"),
                ));
            }
            if buf.len() >= len {
                let mut msg = buf.split_to(len);
                msg.advance(HEADER_LEN);
                return Ok((typ, msg));
            }
            // Cold paths only: a startup-sized message is reserved at once,
            // a larger declared length in steps as its bytes arrive.
            buf.reserve((len - buf.len()).min(READ_MESSAGE_STEP));
        }
        if r.read_buf(buf).await? == 0 {
            return Err(Error::new(ErrorKind::UnexpectedEof, "connection closed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_reads_type_and_total_length() {
        assert_eq!(header(b"Q\0\0\0\x09sel"), Some(Ok((b'Q', 10))));
        assert_eq!(header(b"Q\0\0"), None);
        assert_eq!(header(b"Q\0\0\0\x02"), Some(Err(2)));
    }

    #[test]
    fn error_round_trips() {
        let mut b = BytesMut::new();
        put_error(&mut b, Severity::Fatal, "28P01", "nope");
        let (t, len) = header(&b).unwrap().unwrap();
        assert_eq!((t, len), (b'E', b.len()));
        let f = parse_error_fields(&b[5..]);
        assert_eq!(error_field(&f, b'C'), Some("28P01"));
        assert_eq!(error_field(&f, b'S'), Some("FATAL"));
        assert_eq!(error_field(&f, b'M'), Some("nope"));
    }

    #[test]
    fn startup_params_parse() {
        let p = parse_startup_params(b"user\0bob\0database\0db\0\0").unwrap();
        assert_eq!(
            p,
            vec![
                ("user".into(), "bob".into()),
                ("database".into(), "db".into())
            ]
        );
        assert!(parse_startup_params(b"user\0bob").is_err());
    }
}
