//! TLS on the wire listener: the certificate and key a router serves
//! (`shardline_tls::ServerTls`: reloaded when its files change), and the
//! client stream that is plain TCP or TLS after an `SSLRequest`.
//!
//! Logins stay SCRAM-SHA-256 over TLS too: cleartext passwords are never
//! offered, so a client's token never reaches the router, even one that
//! skips verifying the certificate.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use anyhow::bail;
use shardline_tls::ServerTls;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

use crate::RouterConfig;

/// The protocol named in TLS's ALPN by PostgreSQL 17 and later clients
/// (older ones send none, which is accepted too).
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// A wire listener's TLS: its certificate (reloaded when its files
/// change) and whether plain TCP logins are refused.
pub struct WireTls {
    tls: ServerTls,
    required: bool,
}

impl WireTls {
    /// Reads the PEM certificate chain (server certificate first) and
    /// private key; the error names the file that could not be used.
    pub fn load(cert: &Path, key: &Path, required: bool) -> anyhow::Result<Self> {
        let tls = ServerTls::load(cert, key, &[ALPN_POSTGRESQL])?;
        Ok(Self { tls, required })
    }

    /// The TLS of `cfg`'s `pg_tls_*` settings; `None` without a
    /// certificate.
    pub fn from_config(cfg: &RouterConfig) -> anyhow::Result<Option<Self>> {
        match (&cfg.pg_tls_cert, &cfg.pg_tls_key) {
            (Some(cert), Some(key)) => Self::load(cert, key, cfg.pg_tls_required).map(Some),
            (None, None) => Ok(None),
            _ => bail!("pg_tls_cert and pg_tls_key go together: set both or neither"),
        }
    }

    /// Whether a login over plain TCP is refused.
    pub fn required(&self) -> bool {
        self.required
    }
}

/// A client's connection: plain TCP, TLS once negotiated, or a local
/// Unix-domain socket (never TLS, as PostgreSQL's own).
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    Local(UnixStream),
    /// None: a TLS handshake took the TCP stream and failed.
    Closed,
}

impl ClientStream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Self::Tls(_))
    }

    /// Whether it came through the Unix-domain socket.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local(_))
    }

    /// Runs the server side of a TLS handshake on the plain stream.
    pub(super) async fn start_tls(&mut self, tls: &WireTls) -> io::Result<()> {
        let Self::Plain(tcp) = std::mem::replace(self, Self::Closed) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "TLS requested on a connection that is not plain TCP",
            ));
        };
        let stream = tls.tls.acceptor().accept(tcp).await?;
        *self = Self::Tls(Box::new(stream));
        Ok(())
    }
}

impl From<TcpStream> for ClientStream {
    fn from(s: TcpStream) -> Self {
        Self::Plain(s)
    }
}

impl From<UnixStream> for ClientStream {
    fn from(s: UnixStream) -> Self {
        Self::Local(s)
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "client connection closed")
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Local(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Local(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Local(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Self::Closed => Poll::Ready(Err(closed())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Local(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
            Self::Closed => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Local(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Local(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("missing.crt");
        let key = dir.path().join("missing.key");
        let e = WireTls::load(&cert, &key, false).err().unwrap().to_string();
        assert!(e.contains("missing.crt"), "{e}");
        let empty = dir.path().join("empty.crt");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = WireTls::load(&empty, &key, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("empty.crt") && e.contains("no certificate"),
            "{e}"
        );
    }
}
