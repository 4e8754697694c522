//! A connection that is plain TCP or TLS over TCP, on either side (a client's
//! connection to pgkeel, pgkeel's to a server). The plaintext path costs one
//! `match` per poll: no boxing per read, no lock. The TLS stream is boxed
//! once, when the connection is upgraded.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

type Tls = TlsStream<TcpStream>;

pub struct Stream(Inner);

enum Inner {
    Plain(TcpStream),
    Tls(Box<Tls>),
    /// Between taking the TCP stream out and putting the TLS one back: a
    /// failed handshake leaves the connection here, useless.
    Upgrading,
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection was lost in a TLS handshake",
    )
}

impl Stream {
    pub fn plain(s: TcpStream) -> Stream {
        Stream(Inner::Plain(s))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.0, Inner::Tls(_))
    }

    /// The TCP socket underneath (for a peek at the kernel's queue, or the
    /// addresses).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.0 {
            Inner::Plain(s) => Some(s),
            Inner::Tls(t) => Some(t.get_ref().0),
            Inner::Upgrading => None,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().ok_or_else(gone)?.local_addr()
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().ok_or_else(gone)?.peer_addr()
    }

    /// The negotiated TLS connection, for its ALPN protocol and certificates.
    pub fn tls_common(&self) -> Option<&rustls::CommonState> {
        match &self.0 {
            Inner::Tls(t) => Some(match &**t {
                TlsStream::Client(c) => c.get_ref().1,
                TlsStream::Server(s) => s.get_ref().1,
            }),
            _ => None,
        }
    }

    /// Runs the server side of a TLS handshake on this (plain) connection.
    pub async fn accept_tls(&mut self, acceptor: &tokio_rustls::TlsAcceptor) -> io::Result<()> {
        let Inner::Plain(tcp) = std::mem::replace(&mut self.0, Inner::Upgrading) else {
            return Err(io::Error::other("TLS is already on"));
        };
        let tls = acceptor.accept(tcp).await?;
        self.0 = Inner::Tls(Box::new(TlsStream::Server(tls)));
        Ok(())
    }

    /// Runs the client side of a TLS handshake on this (plain) connection.
    pub async fn connect_tls(
        &mut self,
        connector: &tokio_rustls::TlsConnector,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<()> {
        let Inner::Plain(tcp) = std::mem::replace(&mut self.0, Inner::Upgrading) else {
            return Err(io::Error::other("TLS is already on"));
        };
        let tls = connector.connect(name, tcp).await?;
        self.0 = Inner::Tls(Box::new(TlsStream::Client(tls)));
        Ok(())
    }

    /// Waits until a read would find something, holding no buffer
    /// meanwhile (an idle client's). Plain TCP only: a TLS stream may hold
    /// decrypted bytes its socket no longer shows, so it is ready at once.
    pub async fn readable(&self) -> io::Result<()> {
        match &self.0 {
            Inner::Plain(s) => s.readable().await,
            _ => Ok(()),
        }
    }

    /// Borrowed read and write halves, usable at once (the relay's
    /// `select!`). Plain TCP splits for free; TLS shares one state.
    pub fn split(&mut self) -> (ReadHalf<'_>, WriteHalf<'_>) {
        match &mut self.0 {
            Inner::Plain(s) => {
                let (r, w) = s.split();
                (
                    ReadHalf(ReadInner::Plain(r)),
                    WriteHalf(WriteInner::Plain(w)),
                )
            }
            Inner::Tls(t) => {
                let (r, w) = tokio::io::split(&mut **t);
                (ReadHalf(ReadInner::Tls(r)), WriteHalf(WriteInner::Tls(w)))
            }
            Inner::Upgrading => (ReadHalf(ReadInner::Gone), WriteHalf(WriteInner::Gone)),
        }
    }
}

fn wants_write(t: &Tls) -> bool {
    match t {
        TlsStream::Client(c) => c.get_ref().1.wants_write(),
        TlsStream::Server(s) => s.get_ref().1.wants_write(),
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(t) => {
                // A write may have left records in rustls (the socket was
                // full): whoever reads next waits for an answer to them, so
                // reading drives them out. Pending registers the waker.
                if wants_write(t) {
                    if let Poll::Ready(Err(e)) = Pin::new(&mut **t).poll_flush(cx) {
                        return Poll::Ready(Err(e));
                    }
                }
                Pin::new(&mut **t).poll_read(cx, buf)
            }
            Inner::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
            Inner::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
            Inner::Upgrading => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            Inner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Inner::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
            Inner::Upgrading => Poll::Ready(Err(gone())),
        }
    }
}

pub struct ReadHalf<'a>(ReadInner<'a>);

enum ReadInner<'a> {
    Plain(tokio::net::tcp::ReadHalf<'a>),
    Tls(tokio::io::ReadHalf<&'a mut Tls>),
    Gone,
}

pub struct WriteHalf<'a>(WriteInner<'a>);

enum WriteInner<'a> {
    Plain(tokio::net::tcp::WriteHalf<'a>),
    Tls(tokio::io::WriteHalf<&'a mut Tls>),
    Gone,
}

impl AsyncRead for ReadHalf<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            ReadInner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ReadInner::Tls(t) => Pin::new(t).poll_read(cx, buf),
            ReadInner::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for WriteHalf<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().0 {
            WriteInner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            WriteInner::Tls(t) => Pin::new(t).poll_write(cx, buf),
            WriteInner::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            WriteInner::Plain(s) => Pin::new(s).poll_flush(cx),
            WriteInner::Tls(t) => Pin::new(t).poll_flush(cx),
            WriteInner::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().0 {
            WriteInner::Plain(s) => Pin::new(s).poll_shutdown(cx),
            WriteInner::Tls(t) => Pin::new(t).poll_shutdown(cx),
            WriteInner::Gone => Poll::Ready(Err(gone())),
        }
    }
}
