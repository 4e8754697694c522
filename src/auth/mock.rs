//! Uniform failure for unknown roles: a role pgkeel does not know gets the
//! same SCRAM exchange as one it knows (as PostgreSQL's `scram_mock_salt`):
//! a salt and keys derived from a per-instance secret and the user name, so
//! asking twice gives the same salt, and a proof that can never match. It
//! fails at the end with the same 28P01 as a wrong password, so user names
//! cannot be enumerated.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::scram::ScramVerifier;

/// PostgreSQL's default iteration count (and pgkeel's for plain passwords).
pub const MOCK_ITERATIONS: u32 = 4096;
/// The salt length PostgreSQL and pgkeel generate.
pub const MOCK_SALT_LEN: usize = 16;

/// The secret mock verifiers are derived from, drawn once per instance.
pub struct MockKey([u8; 32]);

impl Default for MockKey {
    fn default() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        MockKey(k)
    }
}

impl MockKey {
    fn derive(&self, label: &[u8], user: &str) -> [u8; 32] {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        m.update(label);
        m.update(user.as_bytes());
        m.finalize().into_bytes().into()
    }

    /// A verifier for `user` that looks like a real one and that no proof
    /// matches (its StoredKey is no hash of any ClientKey anyone knows).
    pub fn verifier(&self, user: &str) -> ScramVerifier {
        ScramVerifier {
            iterations: MOCK_ITERATIONS,
            salt: self.derive(b"salt", user)[..MOCK_SALT_LEN].to_vec(),
            stored_key: self.derive(b"stored", user),
            server_key: self.derive(b"server", user),
        }
    }
}

// Never print the key.
impl std::fmt::Debug for MockKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MockKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mock_verifiers_are_stable_per_user_and_differ_between_users() {
        let k = MockKey::default();
        let a = k.verifier("alice");
        assert!(a == k.verifier("alice"));
        assert!(a.salt != k.verifier("bob").salt);
        assert_eq!(a.salt.len(), MOCK_SALT_LEN);
        assert!(a.salt != MockKey::default().verifier("alice").salt);
    }
}
