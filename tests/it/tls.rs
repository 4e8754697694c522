//! TLS on both sides through the real binary: psql with sslmode=require,
//! verify-full and channel_binding=require; tokio-postgres with
//! SCRAM-SHA-256-PLUS; direct TLS (ALPN); plaintext refused when TLS is
//! required; one SSLRequest per connection; certificates reloaded on
//! SIGHUP (a bad one keeps the old); pgkeel to a PostgreSQL of its own that
//! accepts only `hostssl`, with verify-ca / verify-full; server_auth_allow;
//! a SASLprep'd non-ASCII password. Certificates come from a test CA made
//! here with rcgen. Roles are named `tls_*`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use pgkeel::config::{ServerTlsMode, TlsConfig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{self, TiedProcess};
use crate::support::{self, Raw};

/// A test CA and certificates it signs, as PEM files in a directory.
struct Pki {
    dir: tempfile::TempDir,
    ca_key: KeyPair,
    ca: rcgen::Certificate,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "pgkeel test CA");
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { dir, ca_key, ca }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Writes `<name>.pem` and `<name>.key` for a server known as `dns`
    /// (and 127.0.0.1 when `with_ip`); returns the certificate's DER.
    fn issue(&self, name: &str, dns: &str, with_ip: bool) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec![dns.to_owned()]).unwrap();
        if with_ip {
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        p.distinguished_name.push(DnType::CommonName, dns);
        let cert = p.signed_by(&key, &self.ca, &self.ca_key).unwrap();
        std::fs::write(self.cert(name), cert.pem()).unwrap();
        std::fs::write(self.key(name), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    fn cert(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.pem"))
    }

    fn key(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.key"))
    }

    /// A rustls client that trusts the CA and checks the name (ALPN postgresql).
    fn connector(&self) -> tokio_rustls::TlsConnector {
        let tls = pgkeel::tls::Tls::build(&TlsConfig {
            server_tls_mode: ServerTlsMode::VerifyFull,
            server_ca: Some(self.ca()),
            ..TlsConfig::default()
        })
        .unwrap();
        tls.server.connector.clone().unwrap()
    }

    fn server_tls(&self) -> Arc<pgkeel::tls::ServerTls> {
        pgkeel::tls::Tls::build(&TlsConfig {
            server_tls_mode: ServerTlsMode::VerifyFull,
            server_ca: Some(self.ca()),
            ..TlsConfig::default()
        })
        .unwrap()
        .server
    }
}

/// Megabytes each way through TLS: the relay's writes to a full socket
/// must still be flushed (nothing may wait behind records rustls kept).
async fn big_both_ways(c: &tokio_postgres::Client) {
    let rows = c
        .query(
            "SELECT repeat('x', 1000) FROM generate_series(1, 8000)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 8000);
    let big = "y".repeat(4 << 20);
    let n: i32 = c
        .query_one("SELECT length($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n as usize, big.len());
}

/// A SCRAM login by hand over `stream` with mechanism `mech` and the
/// client's idea of the binding; returns the SQLSTATE of the refusal, or
/// `None` when pgkeel let it in.
async fn scram_login<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    mech: &str,
    binding: pgkeel::auth::scram::Binding<'_>,
) -> Option<String> {
    use pgkeel::auth::scram::{ClientCredential, ClientExchange};
    stream
        .write_all(&Raw::startup_packet(&[
            ("user", "app"),
            ("database", "appdb"),
        ]))
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let mut ex = None;
    loop {
        let (t, body) = pgkeel::protocol::read_message(stream, &mut buf, 1 << 20)
            .await
            .unwrap();
        let mut out = BytesMut::new();
        match (
            t,
            body.get(..4)
                .map(|c| i32::from_be_bytes(c.try_into().unwrap())),
        ) {
            (b'E', _) => {
                let f = pgkeel::protocol::parse_error_fields(&body);
                return pgkeel::protocol::error_field(&f, b'C').map(str::to_owned);
            }
            (b'Z', _) => return None,
            (b'R', Some(10)) => {
                let (e, first) = ClientExchange::start(binding);
                ex = Some(e);
                let mut m = BytesMut::new();
                m.put_slice(mech.as_bytes());
                m.put_u8(0);
                m.put_i32(first.len() as i32);
                m.put_slice(first.as_bytes());
                out.put_u8(b'p');
                out.put_i32(m.len() as i32 + 4);
                out.put_slice(&m);
            }
            (b'R', Some(11)) => {
                let fin = ex
                    .as_mut()
                    .unwrap()
                    .respond(&body[4..], ClientCredential::Password("app_password"))
                    .unwrap();
                out.put_u8(b'p');
                out.put_i32(fin.len() as i32 + 4);
                out.put_slice(fin.as_bytes());
            }
            _ => {}
        }
        if !out.is_empty() {
            stream.write_all(&out).await.unwrap();
        }
    }
}

/// An SSLRequest, `S`, and the TLS handshake to `addr`.
async fn tls_to(pki: &Pki, addr: SocketAddr) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(80_877_103);
    tcp.write_all(&req).await.unwrap();
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.unwrap();
    assert_eq!(s[0], b'S');
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    pki.connector().connect(name, tcp).await.unwrap()
}

/// A driver error's server message (its Display says only "db error").
fn error_text(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], common::free_port()))
}

/// The shared config with TLS to clients on (`tls_lines` go in `[tls]`),
/// listening on `addr` (the binary needs a known port).
fn tls_config(addr: SocketAddr, admin: SocketAddr, tls_lines: &str) -> String {
    support::config(common::shared_pg().port, "", "")
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{addr}\""),
            1,
        )
        .replacen(
            "listen = \"127.0.0.1:0\"",
            &format!("listen = \"{admin}\""),
            1,
        )
        .replace("[tls]\n", &format!("[tls]\n{tls_lines}\n"))
}

/// Runs psql with `conninfo`; returns (success, stdout + stderr).
fn psql(conninfo: &str, sql: &str) -> (bool, String) {
    let out = Command::new("psql")
        .arg(conninfo)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "10")
        // No ~/.postgresql files or service files of the machine.
        .env("PGSSLCERT", "/nonexistent")
        .env("PGSSLKEY", "/nonexistent")
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The certificate a TLS client sees at `addr` after SSLRequest.
async fn served_cert(pki: &Pki, addr: SocketAddr) -> Option<Vec<u8>> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(80_877_103);
    tcp.write_all(&req).await.ok()?;
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.ok()?;
    if s[0] != b'S' {
        return None;
    }
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = pki.connector().connect(name, tcp).await.ok()?;
    let cert = tls.get_ref().1.peer_certificates()?.first()?.to_vec();
    Some(cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_tls_psql_plus_direct_and_reload() {
    let pki = Pki::new();
    let first = pki.issue("pgkeel", "localhost", true);
    let (addr, admin) = (free_addr(), free_addr());
    let tls_lines = format!(
        "cert = {:?}\nkey = {:?}\nclient_tls_mode = \"require\"",
        pki.cert("pgkeel"),
        pki.key("pgkeel")
    );
    let cfg = tls_config(addr, admin, &tls_lines);
    let (mut child, _file) = support::spawn_binary(&cfg, addr).await;
    let port = addr.port();
    let base = format!("port={port} user=app password=app_password dbname=appdb");

    // psql: sslmode=require, verify-full against the test CA, channel binding.
    let (ok, out) = psql(
        &format!("host=127.0.0.1 {base} sslmode=require"),
        "\\conninfo",
    );
    assert!(ok && out.contains("SSL connection"), "{out}");
    let (ok, out) = psql(
        &format!(
            "host=localhost {base} sslmode=verify-full sslrootcert={}",
            pki.ca().display()
        ),
        "SELECT 'tls ok'",
    );
    assert!(ok && out.contains("tls ok"), "{out}");
    let (ok, out) = psql(
        &format!("host=127.0.0.1 {base} sslmode=require channel_binding=require"),
        "SELECT 'bound'",
    );
    assert!(ok && out.contains("bound"), "{out}");
    // The wrong password still fails over TLS with SCRAM-SHA-256-PLUS.
    let (ok, out) = psql(
        &format!(
            "host=127.0.0.1 port={port} user=app password=nope dbname=appdb sslmode=require channel_binding=require"
        ),
        "SELECT 1",
    );
    assert!(
        !ok && out.contains("password authentication failed"),
        "{out}"
    );

    // Plaintext is refused: 28000 with a message saying why.
    let e = support::connect(addr, "app", "app_password", "appdb")
        .await
        .unwrap_err();
    assert_eq!(support::sqlstate(&e), "28000", "{e}");
    assert!(error_text(&e).contains("requires TLS"), "{e}");
    let (ok, out) = psql(
        &format!("host=127.0.0.1 {base} sslmode=disable"),
        "SELECT 1",
    );
    assert!(!ok && out.contains("client_tls_mode = require"), "{out}");

    // tokio-postgres with verify-full and channel_binding=require (-PLUS).
    let mut pg = tokio_postgres::Config::new();
    pg.host("localhost")
        .port(port)
        .user("app")
        .password("app_password")
        .dbname("appdb")
        .ssl_mode(tokio_postgres::config::SslMode::Require)
        .channel_binding(tokio_postgres::config::ChannelBinding::Require);
    let (c, conn) = pg
        .connect(pgkeel::tls::postgres::MakeRustls::new(pki.server_tls()))
        .await
        .expect("tokio-postgres over TLS with channel binding");
    tokio::spawn(conn);
    let n: i32 = c.query_one("SELECT 41 + 1", &[]).await.unwrap().get(0);
    assert_eq!(n, 42);
    big_both_ways(&c).await;
    drop(c);

    // Direct TLS (PostgreSQL 17's sslnegotiation=direct): a ClientHello
    // first, ALPN "postgresql", then the startup packet inside TLS.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = pki.connector().connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let mut raw_cfg = tokio_postgres::Config::new();
    raw_cfg
        .user("app")
        .password("app_password")
        .dbname("appdb")
        .ssl_mode(tokio_postgres::config::SslMode::Disable);
    let (c, conn) = raw_cfg
        .connect_raw(tls, tokio_postgres::NoTls)
        .await
        .expect("direct TLS login");
    tokio::spawn(conn);
    let s: String = c.query_one("SELECT 'direct'", &[]).await.unwrap().get(0);
    assert_eq!(s, "direct");
    drop(c);

    // Direct TLS without ALPN: FATAL 08P01 (inside TLS), as PostgreSQL.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pki.ca.der().to_vec(),
        ))
        .unwrap();
    let no_alpn = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(no_alpn))
        .connect(name, tcp)
        .await
        .unwrap();
    let mut buf = BytesMut::new();
    let (t, body) = pgkeel::protocol::read_message(&mut tls, &mut buf, 1 << 20)
        .await
        .unwrap();
    assert_eq!(t, b'E');
    let f = pgkeel::protocol::parse_error_fields(&body);
    assert_eq!(pgkeel::protocol::error_field(&f, b'C'), Some("08P01"));

    // A second SSLRequest inside TLS: FATAL 08P01, as PostgreSQL.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(80_877_103);
    tcp.write_all(&req).await.unwrap();
    let mut s = [0u8; 1];
    tcp.read_exact(&mut s).await.unwrap();
    assert_eq!(s[0], b'S');
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = pki.connector().connect(name, tcp).await.unwrap();
    tls.write_all(&req).await.unwrap();
    let mut buf = BytesMut::new();
    let (t, body) = pgkeel::protocol::read_message(&mut tls, &mut buf, 1 << 20)
        .await
        .unwrap();
    assert_eq!(t, b'E');
    let f = pgkeel::protocol::parse_error_fields(&body);
    assert_eq!(pgkeel::protocol::error_field(&f, b'C'), Some("08P01"));

    // Channel binding by hand: the hash of the certificate pgkeel serves
    // logs in; any other (a man in the middle's) is 28000.
    use pgkeel::auth::scram::Binding;
    let end_point = pgkeel::tls::channel_binding::server_end_point(&first).unwrap();
    let mut tls = tls_to(&pki, addr).await;
    let plus = "SCRAM-SHA-256-PLUS";
    assert_eq!(
        scram_login(&mut tls, plus, Binding::EndPoint(&end_point)).await,
        None
    );
    let mut tls = tls_to(&pki, addr).await;
    let wrong = vec![0u8; end_point.len()];
    assert_eq!(
        scram_login(&mut tls, plus, Binding::EndPoint(&wrong))
            .await
            .as_deref(),
        Some("28000")
    );
    // "y" (client could bind, thinks pgkeel cannot) although -PLUS was offered.
    let mut tls = tls_to(&pki, addr).await;
    assert_eq!(
        scram_login(&mut tls, "SCRAM-SHA-256", Binding::Unused)
            .await
            .as_deref(),
        Some("28000")
    );

    // Certificate reload: new files, SIGHUP, and new logins see the new
    // certificate; a broken file on the next reload keeps it.
    assert_eq!(served_cert(&pki, addr).await.as_deref(), Some(&first[..]));
    let second = pki.issue("pgkeel", "localhost", true);
    assert_ne!(first, second);
    let hup = || unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    hup();
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            served_cert(&pki, addr).await.as_deref() == Some(&second[..])
        })
        .await,
        "the reloaded certificate was not served"
    );
    std::fs::write(pki.cert("pgkeel"), "not a certificate").unwrap();
    hup();
    assert!(
        support::wait_until(Duration::from_secs(20), || async {
            let (_, body) = support::http_get(admin, "/status").await;
            body.contains("no PEM certificate")
        })
        .await,
        "the failed reload is not reported in /status"
    );
    assert_eq!(served_cert(&pki, addr).await.as_deref(), Some(&second[..]));
    let (ok, out) = psql(
        &format!("host=127.0.0.1 {base} sslmode=require"),
        "SELECT 'still'",
    );
    assert!(ok && out.contains("still"), "{out}");
    child.kill().unwrap();
    let _ = child.wait();
}

#[tokio::test]
async fn one_ssl_request_per_connection_and_tls_off() {
    let p = support::start(&support::config(common::shared_pg().port, "", "")).await;
    let mut req = BytesMut::new();
    req.put_i32(8);
    req.put_i32(80_877_103);
    let mut gss = BytesMut::new();
    gss.put_i32(8);
    gss.put_i32(80_877_104);
    // No certificate: SSLRequest gets N, and the login goes on in plaintext.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&gss).await;
    raw.send(&req).await;
    let mut answers = [0u8; 2];
    raw.stream.read_exact(&mut answers).await.unwrap();
    assert_eq!(&answers, b"NN", "GSSENCRequest then SSLRequest: one each");
    raw.send(&req).await;
    let (sev, code) = raw.expect_error().await;
    assert_eq!((sev.as_str(), code.as_str()), ("FATAL", "08P01"));
    assert!(raw.closed().await);
    // The same loop of GSSENCRequests.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&gss).await;
    raw.send(&gss).await;
    let mut n = [0u8; 1];
    raw.stream.read_exact(&mut n).await.unwrap();
    assert_eq!(&n, b"N");
    let (_, code) = raw.expect_error().await;
    assert_eq!(code, "08P01");
    // Direct TLS to an instance without a certificate: closed, nothing sent.
    let mut raw = Raw::connect(p.local_addr()).await;
    raw.send(&[0x16, 3, 1, 0, 4, 1, 0, 0, 0]).await;
    assert!(raw.closed().await);
    // Channel binding asked for over plaintext: 28000.
    use pgkeel::auth::scram::Binding;
    let mut tcp = TcpStream::connect(p.local_addr()).await.unwrap();
    let fake = [1u8; 32];
    assert_eq!(
        scram_login(&mut tcp, "SCRAM-SHA-256-PLUS", Binding::EndPoint(&fake))
            .await
            .as_deref(),
        Some("28000")
    );
    let mut tcp = TcpStream::connect(p.local_addr()).await.unwrap();
    assert_eq!(
        scram_login(&mut tcp, "SCRAM-SHA-256", Binding::None).await,
        None
    );
    // Plaintext logins are fine here.
    support::app(p.local_addr()).await;
    p.shutdown().await;
}

#[tokio::test]
async fn server_auth_allow_refuses_cleartext_and_trust_by_default() {
    let port = common::shared_pg().port;
    let defaults = support::config(port, "", "").replace(
        "server_auth_allow = [\"scram-sha-256\", \"md5\", \"password\", \"trust\"]",
        "",
    );
    let p = support::start(&defaults).await;
    for (user, pw, what) in [
        ("clearuser", "clear_password", "cleartext password"),
        ("trustuser", "trust_password", "trust"),
    ] {
        let e = support::connect(p.local_addr(), user, pw, "appdb")
            .await
            .unwrap_err();
        let text = error_text(&e);
        assert!(
            text.contains(what) && text.contains("server_auth_allow"),
            "{user}: {text}"
        );
    }
    // SCRAM and md5 servers are fine.
    support::app(p.local_addr()).await;
    support::connect(p.local_addr(), "md5user", "md5_password", "appdb")
        .await
        .unwrap();
    p.shutdown().await;
    // Allowed: both log in.
    let p = support::start(&support::config(port, "", "")).await;
    for (user, pw) in [
        ("clearuser", "clear_password"),
        ("trustuser", "trust_password"),
    ] {
        support::connect(p.local_addr(), user, pw, "appdb")
            .await
            .unwrap_or_else(|e| panic!("{user}: {e}"));
    }
    p.shutdown().await;
}

#[tokio::test]
async fn non_ascii_password_is_saslprepped_on_both_sides() {
    let pg = common::shared_pg();
    let (c, conn) = tokio_postgres::connect(&pg.superuser_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // U+2168 ROMAN NUMERAL NINE: SASLprep makes it "IX". PostgreSQL stores
    // the verifier of the normalised form.
    c.batch_execute(
        "DROP ROLE IF EXISTS tls_nfkc;
         SET password_encryption = 'scram-sha-256';
         CREATE ROLE tls_nfkc LOGIN PASSWORD E'\\u2168';
         GRANT CONNECT ON DATABASE appdb TO tls_nfkc;",
    )
    .await
    .unwrap();
    let users = "[[users]]\nname = \"tls_nfkc\"\npassword = \"\u{2168}\"\n";
    let p = support::start(&support::config(pg.port, "", users)).await;
    // The client types the normalised form; pgkeel's verifier (from the
    // configured U+2168) and its server login (to PostgreSQL's verifier)
    // both agree only through SASLprep.
    let c = support::connect(p.local_addr(), "tls_nfkc", "IX", "appdb")
        .await
        .expect("SASLprep'd password logs in");
    let who: String = c
        .query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, "tls_nfkc");
    let e = support::connect(p.local_addr(), "tls_nfkc", "IIX", "appdb")
        .await
        .unwrap_err();
    assert_eq!(support::sqlstate(&e), "28P01");
    p.shutdown().await;
}

/// A PostgreSQL of the test's own with `ssl = on` and a pg_hba.conf that
/// accepts TCP only over TLS (`hostssl`), certificate for `localhost` only.
struct HostsslPg {
    port: u16,
    _process: TiedProcess,
    dir: PathBuf,
}

impl Drop for HostsslPg {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start_hostssl_pg(pki: &Pki) -> HostsslPg {
    let port = common::free_port();
    let dir = std::env::temp_dir().join(format!("pgkeel-test-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    common::chown(&dir);
    let data = common::initdb(&dir, "scram-sha-256");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostssl all tls_certuser 127.0.0.1/32 cert\nhostssl all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    pki.issue("pg", "localhost", false);
    for (from, to) in [
        (pki.cert("pg"), data.join("server.crt")),
        (pki.key("pg"), data.join("server.key")),
        (pki.ca(), data.join("root.crt")),
    ] {
        std::fs::copy(&from, &to).unwrap();
        common::chown(&to);
    }
    std::fs::set_permissions(
        data.join("server.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let process = common::spawn_postgres(
        &dir,
        &data,
        port,
        &[
            "ssl=on",
            "ssl_ca_file=root.crt",
            "fsync=off",
            "shared_buffers=16MB",
        ],
    );
    let server = HostsslPg {
        port,
        _process: process,
        dir: dir.clone(),
    };
    common::psql_until_up(
        &dir,
        port,
        &[
            "CREATE ROLE tls_app LOGIN PASSWORD 'tls_password'",
            "CREATE DATABASE tls_db OWNER tls_app",
            "CREATE ROLE tls_certuser LOGIN",
        ],
    );
    server
}

fn hostssl_config(pki: &Pki, host: &str, port: u16, mode: &str) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
client_login_timeout = "5s"
[admin]
listen = ""
[failover]
hold_timeout = "2s"
[health]
user = "postgres"
password = "postgres"
interval = "200ms"
[tls]
server_tls_mode = "{mode}"
server_ca = {ca:?}
[[users]]
name = "tls_app"
password = "tls_password"
[[servers]]
host = "{host}"
port = {port}
"#,
        ca = pki.ca()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_that_accepts_only_hostssl() {
    let pki = Pki::new();
    let pg = tokio::task::block_in_place(|| start_hostssl_pg(&pki));
    let login = |p: &pgkeel::ProxyHandle| {
        support::connect(p.local_addr(), "tls_app", "tls_password", "tls_db")
    };

    // verify-full against the name in the certificate: in, over TLS.
    let p = support::start(&hostssl_config(&pki, "localhost", pg.port, "verify-full")).await;
    let c = login(&p)
        .await
        .expect("pgkeel logs in to a hostssl-only server");
    let ssl: bool = c
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the server connection is TLS");
    big_both_ways(&c).await;
    drop(c);
    p.shutdown().await;

    // require (no checks) works too; verify-ca accepts another name...
    for (host, mode) in [("127.0.0.1", "require"), ("127.0.0.1", "verify-ca")] {
        let p = support::start(&hostssl_config(&pki, host, pg.port, mode)).await;
        login(&p)
            .await
            .unwrap_or_else(|e| panic!("{mode} via {host}: {e}"));
        p.shutdown().await;
    }
    // ...verify-full does not (the certificate names localhost only), and
    // plaintext meets pg_hba's "no encryption".
    for (host, mode, why) in [
        ("127.0.0.1", "verify-full", "not valid for name"),
        ("localhost", "disable", "no encryption"),
    ] {
        let p = support::start(&hostssl_config(&pki, host, pg.port, mode)).await;
        let e = login(&p).await.unwrap_err();
        let text = error_text(&e);
        assert!(
            text.to_lowercase().contains(why) || text.contains("no primary"),
            "{mode} via {host}: {text}"
        );
        p.shutdown().await;
    }
    // And the direct check, without the topology in the way.
    let tls = pgkeel::tls::Tls::build(&TlsConfig {
        server_tls_mode: ServerTlsMode::VerifyFull,
        server_ca: Some(pki.ca()),
        ..TlsConfig::default()
    })
    .unwrap();
    let creds = pgkeel::backend::ServerCredentials {
        user: "tls_app".into(),
        password: Some("tls_password".into()),
        ..Default::default()
    };
    let e = pgkeel::backend::ServerConn::connect(
        "127.0.0.1",
        pg.port,
        "tls_db",
        &creds,
        &tls.server,
        Duration::from_secs(5),
    )
    .await
    .err()
    .expect("verify-full refuses a certificate for another name");
    assert!(
        e.to_string().to_lowercase().contains("not valid for name"),
        "{e}"
    );
    pgkeel::backend::ServerConn::connect(
        "localhost",
        pg.port,
        "tls_db",
        &creds,
        &tls.server,
        Duration::from_secs(5),
    )
    .await
    .expect("verify-full with the certificate's name");

    // A client certificate (`hostssl ... cert`): no challenge, and that is
    // a cert login, not trust, once the server's certificate is verified.
    pki.issue("client", "tls_certuser", false);
    let with_cert = |mode| {
        pgkeel::tls::Tls::build(&TlsConfig {
            server_tls_mode: mode,
            server_ca: Some(pki.ca()),
            server_cert: Some(pki.cert("client")),
            server_key: Some(pki.key("client")),
            ..TlsConfig::default()
        })
        .unwrap()
        .server
    };
    let cert_creds = pgkeel::backend::ServerCredentials {
        user: "tls_certuser".into(),
        ..Default::default()
    };
    let port = pg.port;
    let connect = |tls: Arc<pgkeel::tls::ServerTls>, creds: pgkeel::backend::ServerCredentials| async move {
        pgkeel::backend::ServerConn::connect(
            "localhost",
            port,
            "tls_db",
            &creds,
            &tls,
            Duration::from_secs(5),
        )
        .await
    };
    connect(with_cert(ServerTlsMode::VerifyFull), cert_creds.clone())
        .await
        .expect("a client certificate logs pgkeel in");
    let e = connect(with_cert(ServerTlsMode::Require), cert_creds.clone())
        .await
        .err()
        .expect("unverified server letting pgkeel in unchallenged");
    assert!(e.to_string().contains("trust"), "{e}");
    let e = connect(tls.server.clone(), cert_creds)
        .await
        .err()
        .expect("no client certificate");
    assert!(e.to_string().contains("certificate"), "{e}");
}

#[tokio::test]
async fn server_tls_prefer_falls_back_require_does_not() {
    let pg = common::shared_pg();
    let creds = pgkeel::backend::ServerCredentials {
        user: "app".into(),
        password: Some("app_password".into()),
        ..Default::default()
    };
    let build = |mode| {
        pgkeel::tls::Tls::build(&TlsConfig {
            server_tls_mode: mode,
            ..TlsConfig::default()
        })
        .unwrap()
        .server
    };
    // The shared server has ssl off: it answers the SSLRequest with N.
    let conn = pgkeel::backend::ServerConn::connect(
        "127.0.0.1",
        pg.port,
        "appdb",
        &creds,
        &build(ServerTlsMode::Prefer),
        Duration::from_secs(5),
    )
    .await
    .expect("prefer goes on in plaintext");
    assert!(!conn.stream.is_tls());
    let e = pgkeel::backend::ServerConn::connect(
        "127.0.0.1",
        pg.port,
        "appdb",
        &creds,
        &build(ServerTlsMode::Require),
        Duration::from_secs(5),
    )
    .await
    .err()
    .expect("require refuses a server without TLS");
    assert!(e.to_string().contains("does not accept TLS"), "{e}");
}

#[test]
fn check_config_reads_the_certificates() {
    let pki = Pki::new();
    pki.issue("pgkeel", "localhost", true);
    let dir = tempfile::tempdir().unwrap();
    let check = |cert: &std::path::Path| {
        let cfg = support::config(5432, "", "").replace(
            "[tls]\n",
            &format!("[tls]\ncert = {cert:?}\nkey = {:?}\n", pki.key("pgkeel")),
        );
        let file = dir.path().join("pgkeel.toml");
        std::fs::write(&file, cfg).unwrap();
        Command::new(env!("CARGO_BIN_EXE_pgkeel"))
            .arg("--check-config")
            .arg(&file)
            .output()
            .unwrap()
    };
    let out = check(&pki.cert("pgkeel"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Another certificate than the key's: named, exit 2.
    pki.issue("other", "localhost", true);
    let out = check(&pki.cert("other"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[tls] cert/key"), "{err}");
}
