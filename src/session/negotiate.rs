//! Encryption before the startup packet: the answers to SSLRequest and
//! GSSENCRequest (one of each per connection, as PostgreSQL), a TLS
//! ClientHello as the first byte (direct TLS), and the TLS handshake.

use crate::config::ClientTlsMode;
use crate::tls::{Stream, Tls};

pub(super) use crate::protocol::{ENCRYPTION_NO as TLS_NO, ENCRYPTION_YES as TLS_YES};

/// What this connection negotiated already: one SSLRequest and one
/// GSSENCRequest each, as PostgreSQL allows.
#[derive(Default)]
pub(super) struct Negotiated {
    pub(super) ssl: bool,
    pub(super) gss: bool,
}

/// An encryption request before the startup packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Encryption {
    /// SSLRequest.
    Tls,
    /// GSSENCRequest.
    Gss,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum EncryptionAnswer {
    /// `S`: the TLS handshake follows.
    Yes,
    /// `N`: go on as it is (GSS encryption is never offered).
    No,
}

impl Negotiated {
    /// The answer to `request`, or why the connection must end: a second
    /// request of a kind is a client looping (or a peer probing), not a
    /// negotiation (PostgreSQL accepts one of each).
    pub(super) fn answer(
        &mut self,
        request: Encryption,
        offers_tls: bool,
    ) -> Result<EncryptionAnswer, &'static str> {
        let (done, twice) = match request {
            Encryption::Tls => (&mut self.ssl, "SSLRequest received twice on one connection"),
            Encryption::Gss => (
                &mut self.gss,
                "GSSENCRequest received twice on one connection",
            ),
        };
        if std::mem::replace(done, true) {
            return Err(twice);
        }
        Ok(match request {
            Encryption::Tls if offers_tls => EncryptionAnswer::Yes,
            _ => EncryptionAnswer::No,
        })
    }
}

pub(super) fn offers_tls(tls: &Tls) -> bool {
    tls.acceptor.is_some() && tls.client_mode != ClientTlsMode::Disable
}

/// A client that starts with a TLS ClientHello (PostgreSQL 17's
/// `sslnegotiation=direct`) rather than a startup packet, when pgkeel
/// offers TLS. A peek: the bytes stay for whoever reads them.
pub(super) async fn direct_tls(stream: &Stream) -> bool {
    let Some(tcp) = stream.tcp() else {
        return false;
    };
    let mut first = [0u8; 1];
    matches!(tcp.peek(&mut first).await, Ok(1) if first[0] == crate::tls::TLS_HANDSHAKE_RECORD)
}

/// The server side of the TLS handshake; false (logged) when it failed or
/// pgkeel has no certificate: the connection is then unusable.
pub(super) async fn accept_tls(tls: &Tls, stream: &mut Stream) -> bool {
    let Some(acceptor) = tls.acceptor.as_ref().filter(|_| offers_tls(tls)) else {
        tracing::info!("a client started TLS directly, but TLS to clients is off");
        return false;
    };
    match stream.accept_tls(&acceptor.tls).await {
        Ok(()) => true,
        Err(e) => {
            tracing::info!(error = %e, "client TLS handshake failed");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_encryption_request_of_each_kind() {
        let mut n = Negotiated::default();
        assert_eq!(n.answer(Encryption::Gss, true), Ok(EncryptionAnswer::No));
        assert_eq!(n.answer(Encryption::Tls, true), Ok(EncryptionAnswer::Yes));
        assert!(n.answer(Encryption::Tls, true).is_err());
        assert!(n.answer(Encryption::Gss, true).is_err());
        let mut off = Negotiated::default();
        assert_eq!(off.answer(Encryption::Tls, false), Ok(EncryptionAnswer::No));
        assert!(off.answer(Encryption::Tls, false).is_err());
        // Direct TLS counts as the SSLRequest.
        let mut direct = Negotiated {
            ssl: true,
            gss: false,
        };
        assert!(direct.answer(Encryption::Tls, true).is_err());
    }
}
