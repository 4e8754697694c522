//! TLS on both sides: the acceptor for clients (SSLRequest or direct TLS)
//! and the connector for servers (`server_tls_mode`), built from `[tls]`
//! at start and at every reload (`Shared::tls` swaps the whole `Tls`, so a
//! handshake uses one certificate and its channel binding throughout).

pub mod channel_binding;
pub mod postgres;
pub mod stream;
mod verify;

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::config::{ClientTlsMode, ServerAuth, ServerTlsMode, TlsConfig};
pub use stream::Stream;

/// ALPN protocol name of PostgreSQL 17's direct TLS negotiation.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The TLS record type of a handshake: the first byte of a ClientHello, so a
/// client that starts with TLS at once (`sslnegotiation=direct`) is told
/// apart from a startup packet (whose first byte is a length's high byte).
pub const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// What one config says about TLS, ready to use.
pub struct Tls {
    pub client_mode: ClientTlsMode,
    /// `None` when `[tls] cert` is not set.
    pub acceptor: Option<Acceptor>,
    pub server: Arc<ServerTls>,
}

/// pgkeel's certificate for clients, and its channel binding data.
pub struct Acceptor {
    pub tls: tokio_rustls::TlsAcceptor,
    /// `tls-server-end-point` data of the leaf certificate; `None` when its
    /// signature names no usable hash (then no SCRAM-SHA-256-PLUS).
    pub end_point: Option<Vec<u8>>,
}

/// How pgkeel connects and logs in to servers.
pub struct ServerTls {
    pub mode: ServerTlsMode,
    /// Built unless the mode is `disable`.
    pub connector: Option<tokio_rustls::TlsConnector>,
    pub auth_allow: Vec<ServerAuth>,
    /// `server_cert` is set: pgkeel presents a client certificate.
    pub client_cert: bool,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("mode", &self.mode)
            .field("auth_allow", &self.auth_allow)
            .finish()
    }
}

impl Default for ServerTls {
    fn default() -> Self {
        ServerTls {
            mode: ServerTlsMode::Disable,
            connector: None,
            auth_allow: TlsConfig::default().server_auth_allow,
            client_cert: false,
        }
    }
}

impl ServerTls {
    pub fn allows(&self, auth: ServerAuth) -> bool {
        self.auth_allow.contains(&auth)
    }

    /// An AuthenticationOk without a challenge is a `cert` login, not
    /// `trust`, when pgkeel showed its client certificate to a server whose
    /// own certificate it verified: the server is the right one, and it
    /// authenticated pgkeel by the certificate.
    pub fn cert_login(&self, over_tls: bool) -> bool {
        over_tls
            && self.client_cert
            && matches!(
                self.mode,
                ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull
            )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

impl Tls {
    /// No TLS anywhere (tests and configs without `[tls]`).
    pub fn disabled() -> Tls {
        Tls {
            client_mode: ClientTlsMode::Disable,
            acceptor: None,
            server: Arc::new(ServerTls::default()),
        }
    }

    /// Reads the certificates and keys `[tls]` names. An error names the
    /// file and the key.
    pub fn build(cfg: &TlsConfig) -> Result<Tls, String> {
        let acceptor = match (&cfg.cert, &cfg.key) {
            (Some(cert), Some(key)) => {
                Some(build_acceptor(cert, key).map_err(|e| format!("[tls] cert/key: {e}"))?)
            }
            _ => None,
        };
        let connector = match cfg.server_tls_mode {
            ServerTlsMode::Disable => None,
            mode => Some(build_connector(cfg, mode).map_err(|e| format!("[tls] server: {e}"))?),
        };
        Ok(Tls {
            client_mode: cfg.client_mode(),
            acceptor,
            server: Arc::new(ServerTls {
                mode: cfg.server_tls_mode,
                connector,
                auth_allow: cfg.server_auth_allow.clone(),
                client_cert: cfg.server_cert.is_some(),
            }),
        })
    }
}

fn build_acceptor(cert: &Path, key: &Path) -> Result<Acceptor, String> {
    let certs = read_certs(cert)?;
    let end_point = channel_binding::server_end_point(&certs[0]);
    let key = read_key(key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the key does not fit the certificate: {e}"))?;
    // Offered so PostgreSQL 17 clients may negotiate directly; a client
    // that offers no ALPN (older libpq, after SSLRequest) still gets on.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Acceptor {
        tls: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        end_point,
    })
}

fn build_connector(
    cfg: &TlsConfig,
    mode: ServerTlsMode,
) -> Result<tokio_rustls::TlsConnector, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> = match mode {
        ServerTlsMode::VerifyCa | ServerTlsMode::VerifyFull => {
            let ca = cfg.server_ca.as_deref().ok_or("server_ca is not set")?;
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| format!("{}: not a usable CA: {e}", ca.display()))?;
            }
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .map_err(|e| e.to_string())?;
            if mode == ServerTlsMode::VerifyFull {
                webpki
            } else {
                Arc::new(verify::AnyName(webpki))
            }
        }
        _ => Arc::new(verify::Unchecked(provider())),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&cfg.server_cert, &cfg.server_key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(read_certs(cert)?, read_key(key)?)
            .map_err(|e| format!("server_cert/server_key: {e}"))?,
        _ => builder.with_no_client_auth(),
    };
    // PostgreSQL 17 and later check it when a client offers it; older ones ignore it.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The name to check a server's certificate against (and to send as SNI):
/// a host name, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?}: {e}"))
}
