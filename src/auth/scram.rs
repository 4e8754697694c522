//! SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL uses it, and
//! SCRAM-SHA-256-PLUS: channel binding `tls-server-end-point` (RFC 5929),
//! whose data the caller takes from the TLS connection. Passwords are
//! SASLprep-normalised (RFC 4013) as PostgreSQL does, the raw bytes used
//! when that fails.
//!
//! Both sides live here: `ServerExchange` checks a client's proof against a
//! verifier; `client_exchange_*` logs in to PostgreSQL. The client side can work
//! from a plain password or from the `ClientKey` recovered out of a client's
//! proof (`ScramKeys`): that is how pgkeel logs in to a server for a user whose
//! config holds only a verifier, the way PgBouncer does.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

pub const MECHANISM: &str = "SCRAM-SHA-256";
/// With channel binding: offered only over TLS.
pub const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";
/// The gs2 header of a channel-bound exchange (the only type PostgreSQL uses).
const GS2_PLUS: &str = "p=tls-server-end-point,,";

/// The password SCRAM hashes: SASLprep'd, as PostgreSQL does (it falls back
/// to the raw bytes when SASLprep refuses the string, e.g. for prohibited
/// or unassigned characters).
fn prepared_password(password: &str) -> std::borrow::Cow<'_, str> {
    stringprep::saslprep(password).unwrap_or(std::borrow::Cow::Borrowed(password))
}
const DEFAULT_ITERATIONS: u32 = 4096;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// PBKDF2-HMAC-SHA256 with one output block: RFC 5802's `Hi()`.
fn salted_password(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(password).expect("HMAC takes any key length");
    m.update(salt);
    m.update(&1u32.to_be_bytes());
    let mut u: [u8; 32] = m.finalize().into_bytes().into();
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u.iter()) {
            *o ^= x;
        }
    }
    out
}

fn xor(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
    let mut o = [0u8; 32];
    for i in 0..32 {
        o[i] = a[i] ^ b[i];
    }
    o
}

fn nonce() -> String {
    let mut b = [0u8; 18];
    rand::rng().fill_bytes(&mut b);
    B64.encode(b)
}

/// PostgreSQL's stored form of a SCRAM secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl ScramVerifier {
    pub fn from_password(password: &str) -> ScramVerifier {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        Self::from_password_salt(password, &salt, DEFAULT_ITERATIONS)
    }

    pub fn from_password_salt(password: &str, salt: &[u8], iterations: u32) -> ScramVerifier {
        let keys = ScramKeys::from_password(password, salt, iterations);
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: sha256(&keys.client_key),
            server_key: keys.server_key,
        }
    }

    /// Parses `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn parse(s: &str) -> Result<ScramVerifier, String> {
        let bad = || {
            "not a valid SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)".to_string()
        };
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
        let (iter_salt, keys) = rest.split_once('$').ok_or_else(bad)?;
        let (iter, salt) = iter_salt.split_once(':').ok_or_else(bad)?;
        let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
        let iterations: u32 = iter.parse().map_err(|_| bad())?;
        let key = |k: &str| -> Result<[u8; 32], String> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(bad)
        };
        if iterations == 0 {
            return Err(bad());
        }
        Ok(ScramVerifier {
            iterations,
            salt: B64.decode(salt).map_err(|_| bad())?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// The keys a SCRAM client needs. With a plain password they are derived for
/// whatever salt the server sends; recovered from a client's proof they are
/// only good for a server whose verifier has the same salt and iterations.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramKeys {
    pub client_key: [u8; 32],
    pub server_key: [u8; 32],
    pub salt: Vec<u8>,
    pub iterations: u32,
}

impl ScramKeys {
    pub fn from_password(password: &str, salt: &[u8], iterations: u32) -> ScramKeys {
        let sp = salted_password(prepared_password(password).as_bytes(), salt, iterations);
        ScramKeys {
            client_key: hmac(&sp, b"Client Key"),
            server_key: hmac(&sp, b"Server Key"),
            salt: salt.to_vec(),
            iterations,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Protocol(&'static str),
    #[error("password authentication failed")]
    BadProof,
    #[error("the server's SCRAM signature is wrong")]
    BadServerSignature,
    #[error("the server's SCRAM salt differs from the configured verifier; set server_password for this user")]
    SaltMismatch,
    /// Channel binding negotiation or check failed (PostgreSQL: 28000
    /// "SCRAM channel binding check failed" and its negotiation errors).
    #[error("SCRAM channel binding: {0}")]
    ChannelBinding(&'static str),
}

/// How a SCRAM login is bound to its TLS connection, on either side.
#[derive(Clone, Copy, Debug)]
pub enum Binding<'a> {
    /// Plaintext: nothing to bind to.
    None,
    /// TLS, but the peer does not do -PLUS (client: the server did not
    /// offer it; server: the certificate gives no binding data).
    Unused,
    /// TLS with `tls-server-end-point` data.
    EndPoint(&'a [u8]),
}

/// One client login checked against a verifier.
pub struct ServerExchange<'a> {
    verifier: &'a ScramVerifier,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    /// The `c=` value the client-final must carry: base64 of the gs2
    /// header and, when bound, the channel binding data.
    channel: String,
}

/// The mechanism a client picks from a server's list, and its binding:
/// -PLUS whenever the server offers it and the connection has binding
/// data (as libpq with `channel_binding=prefer`); over TLS without it, "y"
/// (so a server that would have bound sees the downgrade); else "n".
pub fn choose_mechanism<'a>(
    offered: &[&[u8]],
    end_point: Option<&'a [u8]>,
    tls: bool,
) -> Option<(&'static str, Binding<'a>)> {
    let has = |m: &str| offered.contains(&m.as_bytes());
    match end_point {
        Some(e) if tls && has(MECHANISM_PLUS) => Some((MECHANISM_PLUS, Binding::EndPoint(e))),
        _ if !has(MECHANISM) => None,
        _ if tls => Some((MECHANISM, Binding::Unused)),
        _ => Some((MECHANISM, Binding::None)),
    }
}

/// The server's view of a client's gs2 flag (as PostgreSQL's
/// `read_client_first_message`): the channel binding data the client must
/// echo, or why the negotiation fails.
fn server_binding<'b>(
    flag: &str,
    plus: bool,
    binding: Binding<'b>,
) -> Result<&'b [u8], ScramError> {
    let offered = match binding {
        Binding::EndPoint(d) => Some(d),
        _ => None,
    };
    match (flag, plus, offered) {
        ("n", false, _) => Ok(&[]),
        // The client thinks the server cannot bind: true unless -PLUS was
        // offered, in which case someone removed it on the way.
        ("y", false, None) => Ok(&[]),
        ("y", false, Some(_)) => Err(ScramError::ChannelBinding(
            "the client supports channel binding but thinks the server does not; the mechanism list was altered",
        )),
        (p, true, Some(d)) if p == &GS2_PLUS[..GS2_PLUS.len() - 2] => Ok(d),
        (p, true, Some(_)) if p.starts_with("p=") => Err(ScramError::ChannelBinding(
            "unsupported channel binding type (only tls-server-end-point)",
        )),
        (_, true, Some(_)) => Err(ScramError::ChannelBinding(
            "SCRAM-SHA-256-PLUS selected without channel binding data",
        )),
        (_, true, None) => Err(ScramError::ChannelBinding(
            "SCRAM-SHA-256-PLUS is only offered over TLS",
        )),
        (p, false, _) if p.starts_with("p=") => Err(ScramError::ChannelBinding(
            "the client requires channel binding, but selected SCRAM-SHA-256 (over plaintext, or without -PLUS)",
        )),
        _ => Err(ScramError::Protocol("bad gs2 channel binding flag")),
    }
}

impl<'a> ServerExchange<'a> {
    /// Takes the client-first message of mechanism `plus` (-PLUS or not)
    /// over a connection bound as `binding` (`EndPoint` means -PLUS was
    /// offered); returns the exchange and the server-first message.
    pub fn start(
        verifier: &'a ScramVerifier,
        client_first: &[u8],
        plus: bool,
        binding: Binding<'_>,
    ) -> Result<(Self, String), ScramError> {
        let msg =
            std::str::from_utf8(client_first).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        // gs2-header: "n,," (client does no binding), "y,," (client does,
        // thinks the server does not), "p=<type>,," (bound).
        let (cb, rest) = msg
            .split_once(',')
            .ok_or(ScramError::Protocol("no gs2 header"))?;
        let cb_data = server_binding(cb, plus, binding)?;
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Protocol("no gs2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Protocol("authzid is not supported"));
        }
        let cnonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Protocol("no client nonce"))?;
        let nonce = format!("{cnonce}{}", nonce());
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let ex = ServerExchange {
            verifier,
            client_first_bare: bare.to_owned(),
            server_first: server_first.clone(),
            nonce,
            channel: B64.encode([format!("{cb},,").as_bytes(), cb_data].concat()),
        };
        Ok((ex, server_first))
    }

    /// Checks the client-final message. On success returns the server-final
    /// message and the keys recovered from the proof (for logging in to servers).
    pub fn finish(self, client_final: &[u8]) -> Result<(String, ScramKeys), ScramError> {
        let msg =
            std::str::from_utf8(client_final).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Protocol("no proof"))?;
        let mut channel = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                channel = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if !channel.is_some_and(|c| super::ct_eq(c.as_bytes(), self.channel.as_bytes())) {
            return Err(ScramError::ChannelBinding("channel binding check failed"));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(ScramError::Protocol("bad proof encoding"))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let client_key = xor(&proof, &client_signature);
        if !super::ct_eq(&sha256(&client_key), &self.verifier.stored_key) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        let keys = ScramKeys {
            client_key,
            server_key: self.verifier.server_key,
            salt: self.verifier.salt.clone(),
            iterations: self.verifier.iterations,
        };
        Ok((format!("v={}", B64.encode(server_signature)), keys))
    }
}

/// What pgkeel knows to log in to a server with SCRAM.
pub enum ClientCredential<'a> {
    Password(&'a str),
    Keys(&'a ScramKeys),
}

/// The client side of one exchange with a server.
pub struct ClientExchange {
    client_first_bare: String,
    cnonce: String,
    /// The `c=` value: base64 of the gs2 header (and binding data).
    channel: String,
    expected_server_signature: Option<[u8; 32]>,
}

impl ClientExchange {
    /// Returns the exchange and the client-first message. `EndPoint` binds
    /// it (mechanism SCRAM-SHA-256-PLUS); `Unused` says "y" (TLS, but the
    /// server offered no -PLUS), `None` "n".
    pub fn start(binding: Binding<'_>) -> (ClientExchange, String) {
        let cnonce = nonce();
        let bare = format!("n=,r={cnonce}");
        let (gs2, data): (&str, &[u8]) = match binding {
            Binding::None => ("n,,", &[]),
            Binding::Unused => ("y,,", &[]),
            Binding::EndPoint(d) => (GS2_PLUS, d),
        };
        let first = format!("{gs2}{bare}");
        (
            ClientExchange {
                client_first_bare: bare,
                cnonce,
                channel: B64.encode([gs2.as_bytes(), data].concat()),
                expected_server_signature: None,
            },
            first,
        )
    }

    /// Takes server-first; returns client-final.
    pub fn respond(
        &mut self,
        server_first: &[u8],
        cred: ClientCredential<'_>,
    ) -> Result<String, ScramError> {
        let msg =
            std::str::from_utf8(server_first).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        let (mut nonce, mut salt, mut iter) = (None, None, None);
        for attr in msg.split(',') {
            if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = attr.strip_prefix("s=") {
                salt = Some(
                    B64.decode(v)
                        .map_err(|_| ScramError::Protocol("bad salt"))?,
                );
            } else if let Some(v) = attr.strip_prefix("i=") {
                iter = Some(
                    v.parse::<u32>()
                        .map_err(|_| ScramError::Protocol("bad iteration count"))?,
                );
            }
        }
        let nonce = nonce.ok_or(ScramError::Protocol("no nonce"))?;
        let salt = salt.ok_or(ScramError::Protocol("no salt"))?;
        let iter = iter
            .filter(|&i| i > 0)
            .ok_or(ScramError::Protocol("no iteration count"))?;
        if !nonce.starts_with(&self.cnonce) || nonce.len() == self.cnonce.len() {
            return Err(ScramError::Protocol("server nonce does not extend ours"));
        }
        let derived;
        let keys = match cred {
            ClientCredential::Password(p) => {
                derived = ScramKeys::from_password(p, &salt, iter);
                &derived
            }
            ClientCredential::Keys(k) => {
                if k.salt != salt || k.iterations != iter {
                    return Err(ScramError::SaltMismatch);
                }
                k
            }
        };
        let without_proof = format!("c={},r={nonce}", self.channel);
        let auth_message = format!("{},{},{}", self.client_first_bare, msg, without_proof);
        let stored_key = sha256(&keys.client_key);
        let proof = xor(
            &keys.client_key,
            &hmac(&stored_key, auth_message.as_bytes()),
        );
        self.expected_server_signature = Some(hmac(&keys.server_key, auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", B64.encode(proof)))
    }

    /// Checks server-final.
    pub fn verify(&self, server_final: &[u8]) -> Result<(), ScramError> {
        let msg =
            std::str::from_utf8(server_final).map_err(|_| ScramError::Protocol("not UTF-8"))?;
        let sig = msg
            .split(',')
            .find_map(|a| a.strip_prefix("v="))
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Protocol("no server signature"))?;
        match &self.expected_server_signature {
            Some(exp) if super::ct_eq(exp, &sig) => Ok(()),
            _ => Err(ScramError::BadServerSignature),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(verifier: &ScramVerifier, cred: ClientCredential<'_>) -> Result<ScramKeys, ScramError> {
        let (mut client, first) = ClientExchange::start(Binding::None);
        let (server, server_first) =
            ServerExchange::start(verifier, first.as_bytes(), false, Binding::None)?;
        let client_final = client.respond(server_first.as_bytes(), cred)?;
        let (server_final, keys) = server.finish(client_final.as_bytes())?;
        client.verify(server_final.as_bytes())?;
        Ok(keys)
    }

    #[test]
    fn round_trip_with_password_and_recovered_keys() {
        let v = ScramVerifier::from_password("s3cret");
        let keys = run(&v, ClientCredential::Password("s3cret")).unwrap();
        // The keys recovered from a proof log in again without the password.
        run(&v, ClientCredential::Keys(&keys)).unwrap();
        assert_eq!(
            run(&v, ClientCredential::Password("wrong")).err(),
            Some(ScramError::BadProof)
        );
    }

    #[test]
    fn verifier_made_by_postgres_protocol_parses_and_works() {
        let s = postgres_protocol::password::scram_sha_256(b"pw");
        let v = ScramVerifier::parse(&s).unwrap();
        run(&v, ClientCredential::Password("pw")).unwrap();
        assert!(ScramVerifier::parse("SCRAM-SHA-256$x").is_err());
    }

    #[test]
    fn recovered_keys_refuse_other_salt() {
        let v1 = ScramVerifier::from_password("pw");
        let v2 = ScramVerifier::from_password("pw");
        let keys = run(&v1, ClientCredential::Password("pw")).unwrap();
        assert_eq!(
            run(&v2, ClientCredential::Keys(&keys)).err(),
            Some(ScramError::SaltMismatch)
        );
    }

    /// One exchange with channel binding as each side sees it.
    fn bound(
        client: Binding<'_>,
        server: Binding<'_>,
        plus: bool,
    ) -> Result<ScramKeys, ScramError> {
        let v = ScramVerifier::from_password("pw");
        let (mut c, first) = ClientExchange::start(client);
        let (s, server_first) = ServerExchange::start(&v, first.as_bytes(), plus, server)?;
        let fin = c.respond(server_first.as_bytes(), ClientCredential::Password("pw"))?;
        let (server_final, keys) = s.finish(fin.as_bytes())?;
        c.verify(server_final.as_bytes())?;
        Ok(keys)
    }

    #[test]
    fn plus_binds_to_the_certificate_hash() {
        let ours = [7u8; 32];
        bound(Binding::EndPoint(&ours), Binding::EndPoint(&ours), true).unwrap();
        // A man in the middle terminates TLS with another certificate.
        let theirs = [8u8; 32];
        assert!(matches!(
            bound(Binding::EndPoint(&theirs), Binding::EndPoint(&ours), true),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn binding_negotiation_follows_postgres() {
        let ours = [7u8; 32];
        // Plaintext, or TLS without -PLUS: "n" and "y" log in.
        bound(Binding::None, Binding::None, false).unwrap();
        bound(Binding::Unused, Binding::Unused, false).unwrap();
        bound(Binding::None, Binding::EndPoint(&ours), false).unwrap();
        // "y" although -PLUS was offered: the list was tampered with.
        assert!(matches!(
            bound(Binding::Unused, Binding::EndPoint(&ours), false),
            Err(ScramError::ChannelBinding(_))
        ));
        // "p=" over plaintext (-PLUS never offered), or with plain SCRAM.
        assert!(matches!(
            bound(Binding::EndPoint(&ours), Binding::None, true),
            Err(ScramError::ChannelBinding(_))
        ));
        assert!(matches!(
            bound(Binding::EndPoint(&ours), Binding::None, false),
            Err(ScramError::ChannelBinding(_))
        ));
        // -PLUS chosen, but the client sent "n".
        assert!(matches!(
            bound(Binding::None, Binding::EndPoint(&ours), true),
            Err(ScramError::ChannelBinding(_))
        ));
    }

    #[test]
    fn forged_server_final_is_refused() {
        let v = ScramVerifier::from_password("pw");
        let (mut c, first) = ClientExchange::start(Binding::None);
        let (s, server_first) =
            ServerExchange::start(&v, first.as_bytes(), false, Binding::None).unwrap();
        let fin = c
            .respond(server_first.as_bytes(), ClientCredential::Password("pw"))
            .unwrap();
        let (genuine, _) = s.finish(fin.as_bytes()).unwrap();
        c.verify(genuine.as_bytes()).unwrap();
        // A server that does not know the password can only guess v=.
        let forged = format!("v={}", B64.encode([0u8; 32]));
        assert_eq!(
            c.verify(forged.as_bytes()),
            Err(ScramError::BadServerSignature)
        );
        assert!(c.verify(b"e=other-error").is_err());
        // A client that never got server-first has nothing to compare with.
        let (fresh, _) = ClientExchange::start(Binding::None);
        assert_eq!(
            fresh.verify(genuine.as_bytes()),
            Err(ScramError::BadServerSignature)
        );
    }

    #[test]
    fn passwords_are_saslprepped_like_postgres() {
        // U+2168 ROMAN NUMERAL NINE normalises (NFKC) to "IX"; U+00AD SOFT
        // HYPHEN maps to nothing. PostgreSQL hashes all three alike.
        let v = ScramVerifier::from_password("IX");
        run(&v, ClientCredential::Password("\u{2168}")).unwrap();
        run(&v, ClientCredential::Password("I\u{00AD}X")).unwrap();
        // The verifier PostgreSQL's client library makes agrees.
        let pg = ScramVerifier::parse(&postgres_protocol::password::scram_sha_256(
            "\u{2168}".as_bytes(),
        ))
        .unwrap();
        run(&pg, ClientCredential::Password("IX")).unwrap();
        // SASLprep refuses a prohibited character (U+0007): the raw
        // bytes are used, as PostgreSQL does, so the password still works.
        let raw = ScramVerifier::from_password("a\u{7}b");
        run(&raw, ClientCredential::Password("a\u{7}b")).unwrap();
        assert_eq!(
            run(&raw, ClientCredential::Password("ab")).err(),
            Some(ScramError::BadProof)
        );
    }

    #[test]
    fn client_picks_plus_when_it_can() {
        let both: [&[u8]; 2] = [b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"];
        let plain: [&[u8]; 1] = [b"SCRAM-SHA-256"];
        let only_plus: [&[u8]; 1] = [b"SCRAM-SHA-256-PLUS"];
        let e = [1u8; 32];
        let pick = |offered: &[&[u8]], ep: Option<&[u8]>, tls| {
            choose_mechanism(offered, ep, tls).map(|(m, b)| (m, format!("{b:?}")))
        };
        assert_eq!(pick(&both, Some(&e), true).unwrap().0, MECHANISM_PLUS);
        assert_eq!(pick(&both, None, true), Some((MECHANISM, "Unused".into())));
        assert_eq!(
            pick(&plain, Some(&e), true),
            Some((MECHANISM, "Unused".into()))
        );
        assert_eq!(pick(&plain, None, false), Some((MECHANISM, "None".into())));
        assert_eq!(pick(&only_plus, None, true), None);
        assert_eq!(pick(&[b"GSSAPI"], None, false), None);
    }
}
