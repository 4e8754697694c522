//! `tls-server-end-point` channel binding (RFC 5929 section 4.1), as
//! PostgreSQL uses it for SCRAM-SHA-256-PLUS: the hash of the server's
//! certificate, with the hash function of the certificate's signature
//! algorithm, SHA-256 when that is MD5 or SHA-1.

use sha2::{Digest, Sha256, Sha384, Sha512};

/// The channel binding type pgkeel (and PostgreSQL) speaks.
pub const TLS_SERVER_END_POINT: &str = "tls-server-end-point";

/// The hash functions a certificate's signature can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

// DER encodings of the signature algorithm OIDs (contents only).
// sha224WithRSAEncryption (SHA-224 by the RFC) is not listed: no binding.
const SIG_ALGS: [(&[u8], Hash); 9] = [
    // md5WithRSAEncryption, sha1WithRSAEncryption: SHA-256 by the RFC.
    (&[42, 134, 72, 134, 247, 13, 1, 1, 4], Hash::Sha256),
    (&[42, 134, 72, 134, 247, 13, 1, 1, 5], Hash::Sha256),
    // sha256/384/512WithRSAEncryption.
    (&[42, 134, 72, 134, 247, 13, 1, 1, 11], Hash::Sha256),
    (&[42, 134, 72, 134, 247, 13, 1, 1, 12], Hash::Sha384),
    (&[42, 134, 72, 134, 247, 13, 1, 1, 13], Hash::Sha512),
    // ecdsa-with-SHA1, ecdsa-with-SHA256/384/512.
    (&[42, 134, 72, 206, 61, 4, 1], Hash::Sha256),
    (&[42, 134, 72, 206, 61, 4, 3, 2], Hash::Sha256),
    (&[42, 134, 72, 206, 61, 4, 3, 3], Hash::Sha384),
    (&[42, 134, 72, 206, 61, 4, 3, 4], Hash::Sha512),
];

/// One DER element: (tag, contents, rest). Bounds-checked; `None` on
/// anything malformed (a certificate pgkeel cannot read offers no binding).
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;

/// The OID of a certificate's outer `signatureAlgorithm`.
fn signature_oid(cert: &[u8]) -> Option<&[u8]> {
    let (tag, cert, _) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, _tbs, rest) = element(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, alg, _) = element(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, oid, _) = element(alg)?;
    (tag == OID).then_some(oid)
}

fn hash_for(cert: &[u8]) -> Option<Hash> {
    let oid = signature_oid(cert)?;
    SIG_ALGS.iter().find(|(o, _)| *o == oid).map(|(_, h)| *h)
}

/// The `tls-server-end-point` binding data for a DER certificate, or `None`
/// when its signature algorithm names no usable hash (Ed25519, RSA-PSS):
/// then SCRAM-SHA-256-PLUS is not offered, as PostgreSQL does not either.
pub fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    Some(match hash_for(cert)? {
        Hash::Sha256 => Sha256::digest(cert).to_vec(),
        Hash::Sha384 => Sha384::digest(cert).to_vec(),
        Hash::Sha512 => Sha512::digest(cert).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for localhost signed with `alg`, as DER.
    fn self_signed(alg: &'static rcgen::SignatureAlgorithm) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(alg).unwrap();
        rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .der()
            .to_vec()
    }

    #[test]
    fn sha256_signed_certificate_hashes_with_sha256() {
        let der = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            server_end_point(&der).unwrap(),
            Sha256::digest(&der).to_vec()
        );
    }

    #[test]
    fn sha384_signed_certificate_hashes_with_sha384() {
        let der = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            server_end_point(&der).unwrap(),
            Sha384::digest(&der).to_vec()
        );
    }

    #[test]
    fn ed25519_and_garbage_offer_no_binding() {
        assert_eq!(server_end_point(&self_signed(&rcgen::PKCS_ED25519)), None);
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x84\xff\xff\xff\xff",
            b"\x30\x03\x30\x01",
        ] {
            assert_eq!(server_end_point(bad), None);
        }
    }
}
