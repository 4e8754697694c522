//! Authentication secrets and the password mechanisms pgkeel speaks, both as
//! a server (to clients) and as a client (to PostgreSQL).

pub mod md5;
pub mod mock;
pub mod scram;

use std::fmt;

pub use scram::{ScramKeys, ScramVerifier};

/// How a user's password is stored in the config.
#[derive(Clone)]
pub enum Secret {
    /// Plain text: usable for SCRAM, md5 and server logins. Its SCRAM verifier
    /// is derived once at load time.
    Plain(String, ScramVerifier),
    /// A SCRAM-SHA-256 verifier (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`).
    Scram(ScramVerifier),
    /// An md5 hash as PostgreSQL stores it (`md5` + hex(md5(password || user))).
    Md5(String),
}

// Never print secrets, not even in debug output.
impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Plain(..) => f.write_str("Secret::Plain(<redacted>)"),
            Secret::Scram(_) => f.write_str("Secret::Scram(<redacted>)"),
            Secret::Md5(_) => f.write_str("Secret::Md5(<redacted>)"),
        }
    }
}

impl Secret {
    pub fn parse(s: &str) -> Result<Secret, String> {
        if s.starts_with("SCRAM-SHA-256$") {
            return ScramVerifier::parse(s).map(Secret::Scram);
        }
        if s.len() == 35 && s.starts_with("md5") && s[3..].bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Secret::Md5(s.to_ascii_lowercase()));
        }
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        Ok(Secret::Plain(s.to_owned(), ScramVerifier::from_password(s)))
    }

    pub fn plain(&self) -> Option<&str> {
        match self {
            Secret::Plain(p, _) => Some(p),
            _ => None,
        }
    }

    pub fn scram_verifier(&self) -> Option<&ScramVerifier> {
        match self {
            Secret::Plain(_, v) | Secret::Scram(v) => Some(v),
            Secret::Md5(_) => None,
        }
    }
}

/// A secret string from the config (a token): compared in constant time,
/// never printed, never serialized back.
#[derive(Clone, serde::Deserialize)]
#[serde(transparent)]
pub struct Redacted(String);

impl Redacted {
    pub fn new(s: String) -> Redacted {
        Redacted(s)
    }

    /// Whether `given` is this secret, in constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        ct_eq(self.0.as_bytes(), given)
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl serde::Serialize for Redacted {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// Constant-time comparison, so a failed check does not leak how much matched.
/// (Lengths are public: proofs, signatures and hashes have fixed sizes.)
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}
