//! PostgreSQL's md5 password scheme: `"md5" + hex(md5(hex(md5(password || user)) || salt))`.

use md5::{Digest, Md5};

use super::Secret;

fn hex_md5(parts: &[&[u8]]) -> String {
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    let out = h.finalize();
    let mut s = String::with_capacity(32);
    for b in out {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The stored form, `md5` + hex(md5(password || user)).
pub fn stored_hash(user: &str, password: &str) -> String {
    format!("md5{}", hex_md5(&[password.as_bytes(), user.as_bytes()]))
}

/// What a client sends in reply to AuthenticationMD5Password with `salt`,
/// computed from the stored hash (so a plain password is not needed).
pub fn response_from_stored(stored: &str, salt: &[u8; 4]) -> String {
    format!("md5{}", hex_md5(&[&stored.as_bytes()[3..], salt]))
}

/// The expected response for `user` with `secret`, or `None` when the secret
/// cannot do md5 (a SCRAM verifier).
pub fn expected_response(secret: &Secret, user: &str, salt: &[u8; 4]) -> Option<String> {
    match secret {
        Secret::Plain(p, _) => Some(response_from_stored(&stored_hash(user, p), salt)),
        Secret::Md5(h) => Some(response_from_stored(h, salt)),
        Secret::Scram(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_postgres_protocol() {
        let salt = [1, 2, 3, 4];
        let ours = response_from_stored(&stored_hash("bob", "secret"), &salt);
        let theirs = postgres_protocol::authentication::md5_hash(b"bob", b"secret", salt);
        assert_eq!(ours, theirs);
    }
}
