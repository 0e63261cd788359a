//! HTTPS: a listener that hands axum connections whose TLS handshake is
//! done, with the certificate of [`ServerTls`] (reloaded when its files
//! change, see `shardline_tls::server`).
//!
//! Handshakes run in tasks of their own, not in `accept`: axum accepts
//! one connection at a time, and a client that opens a connection and
//! says nothing would otherwise stop every other one from being served.
//! Each handshake has [`HANDSHAKE_TIMEOUT`] and at most
//! [`MAX_HANDSHAKES`] run at once (more connections wait in the
//! kernel's backlog).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use shardline_tls::ServerTls;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::serve::accept_next;

/// How long a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at most.
pub const MAX_HANDSHAKES: usize = 256;

/// The HTTP versions offered in ALPN (the servers speak HTTP/1 only).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Connections over TLS, handshake done.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Accepts on `listener` until `shutdown` is cancelled (or the
    /// listener is dropped), serving `tls`'s current certificate to each
    /// new connection.
    pub fn new(
        listener: TcpListener,
        tls: ServerTls,
        shutdown: CancellationToken,
    ) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let span = tracing::info_span!("https_accept", %local);
        tokio::spawn(accept_loop(listener, tls, tx, shutdown).instrument(span));
        Ok(TlsListener { ready, local })
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: ServerTls,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    shutdown: CancellationToken,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            () = tx.closed() => return,
            p = Arc::clone(&handshakes).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = accept_next(&listener, &shutdown, "an HTTPS connection") => match accepted {
                Some(a) => a,
                None => return,
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = tls.acceptor();
        let tx = tx.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send((stream, peer)).await;
                    }
                    // A client that does not trust the certificate, or
                    // does not speak TLS: its own business, so debug.
                    Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!("TLS handshake timed out"),
                }
            }
            .instrument(tracing::debug_span!("tls_handshake", %peer)),
        );
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accept loop ended (shutdown): nothing more comes, and
            // axum's graceful shutdown ends the serving.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
