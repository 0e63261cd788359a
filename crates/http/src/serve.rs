//! Serving, over HTTP or HTTPS, with JSON fallbacks and a bounded
//! graceful drain.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use axum::{Router, ServiceExt};
use shardline_api::ErrorCode;
use shardline_tls::ServerTls;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::error::ErrorResponse;
use crate::extract::BodyLimit;
use crate::tls::TlsListener;

async fn not_found() -> ErrorResponse {
    ErrorResponse::new(ErrorCode::NotFound, "no such endpoint")
}

async fn method_not_allowed() -> ErrorResponse {
    ErrorResponse::new(
        ErrorCode::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// Adds JSON 404/405 answers and the request-body limit to a router.
pub fn with_fallbacks(router: Router, body_limit: usize) -> Router {
    fallbacks(router).layer(axum::Extension(BodyLimit(body_limit)))
}

/// Adds JSON 404/405 answers to a router.
pub(crate) fn fallbacks(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// What [`serve`] serves: a [`Router`] or an [`Api`](crate::Api).
pub trait App:
    Service<Request, Response = Response, Error = Infallible, Future: Send>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> App for T where
    T: Service<Request, Response = Response, Error = Infallible, Future: Send>
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// Serves `app` until `shutdown` is cancelled, then stops accepting and
/// lets in-flight requests finish for up to `drain`.
pub async fn serve(
    listener: TcpListener,
    app: impl App,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    serve_on(listener, app, shutdown, drain).await
}

/// [`serve`] over HTTPS, with `tls`'s certificate (reloaded when its
/// files change).
pub async fn serve_tls(
    listener: TcpListener,
    tls: ServerTls,
    app: impl App,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()> {
    let listener = TlsListener::new(listener, tls, shutdown.clone())?;
    serve_on(listener, app, shutdown, drain).await
}

async fn serve_on<L>(
    listener: L,
    app: impl App,
    shutdown: CancellationToken,
    drain: Duration,
) -> std::io::Result<()>
where
    L: Listener<Addr = SocketAddr>,
{
    let signal = shutdown.clone();
    let server = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { signal.cancelled().await });
    let mut task = tokio::spawn(async move { server.await });
    tokio::select! {
        res = &mut task => return res.unwrap_or(Ok(())),
        () = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(drain, &mut task).await {
        Ok(res) => res.unwrap_or(Ok(())),
        Err(_) => {
            tracing::warn!(?drain, "in-flight requests did not finish in time; closing");
            task.abort();
            Ok(())
        }
    }
}

/// A connection's work, made on the thread that runs it (so its socket
/// is registered with that thread's event loop).
pub type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// Threads that run connections' [`Job`]s (the router's lanes).
pub trait Spread: Send + Sync + 'static {
    /// Runs `job` on one of them; `false` if they stopped.
    fn run(&self, job: Job) -> bool;
}

/// [`serve`] (or over HTTPS with `tls`), each connection handed to
/// `spread` to be served, its TLS handshake included, on the thread
/// that runs it. At shutdown the listener closes, each connection is
/// told to finish its request under way, and those still open after
/// `drain` are cut.
pub async fn serve_spread(
    listener: TcpListener,
    tls: Option<ServerTls>,
    app: impl App,
    shutdown: CancellationToken,
    drain: Duration,
    spread: Arc<dyn Spread>,
) -> std::io::Result<()> {
    let tracker = TaskTracker::new();
    let handshakes = Arc::new(Semaphore::new(crate::tls::MAX_HANDSHAKES));
    while let Some((tcp, peer)) = accept_next(&listener, &shutdown, "an HTTP connection").await {
        let _ = tcp.set_nodelay(true);
        let handshake = match &tls {
            None => None,
            Some(t) => {
                let Ok(permit) = Arc::clone(&handshakes).acquire_owned().await else {
                    break;
                };
                Some((t.acceptor(), permit))
            }
        };
        let (app, stop) = (app.clone(), shutdown.clone());
        let what = "an HTTP connection";
        hand_over(
            spread.as_ref(),
            &tracker,
            tcp,
            peer,
            what,
            move |tcp| async move {
                let Some((acceptor, permit)) = handshake else {
                    return connection(tcp, app, stop, drain).await;
                };
                let done =
                    tokio::time::timeout(crate::tls::HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                drop(permit);
                match done {
                    Ok(Ok(stream)) => connection(stream, app, stop, drain).await,
                    // A client that does not trust the certificate, or
                    // does not speak TLS: its own business, so debug.
                    Ok(Err(e)) => tracing::debug!(error = %e, %peer, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            },
        );
    }
    drop(listener);
    tracker.close();
    if tokio::time::timeout(drain, tracker.wait()).await.is_err() {
        tracing::warn!(?drain, "in-flight requests did not finish in time; closing");
    }
    Ok(())
}

/// Hands `socket`, accepted on this runtime, to `spread` to be served
/// by `serve` on the thread that runs it: the socket leaves this
/// runtime's poller and is registered again there. `tracker` counts it
/// from now, so a drain waits for it. `false` (logged as handing over
/// `what`) if it could not be handed over.
pub fn hand_over<S, P, F, Fut>(
    spread: &dyn Spread,
    tracker: &TaskTracker,
    socket: S,
    peer: P,
    what: &'static str,
    serve: F,
) -> bool
where
    S: Movable,
    P: std::fmt::Display + Clone + Send + 'static,
    F: FnOnce(S) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let socket = match socket.into_std() {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "hand over {what}");
            return false;
        }
    };
    let counted = tracker.token();
    let who = peer.clone();
    let handed = spread.run(Box::new(move || {
        Box::pin(async move {
            let _counted = counted;
            match S::from_std(socket) {
                Ok(socket) => serve(socket).await,
                Err(e) => tracing::warn!(error = %e, peer = %who, "register {what}"),
            }
        })
    }));
    if !handed {
        tracing::warn!(%peer, "the serving threads stopped: {what} closed");
    }
    handed
}

/// A connected socket that can leave one runtime's poller for another's
/// (see [`hand_over`]).
pub trait Movable: Sized + Send + 'static {
    /// The blocking-library socket it becomes in between.
    type Std: Send + 'static;
    fn into_std(self) -> std::io::Result<Self::Std>;
    /// Registers it with the calling thread's runtime.
    fn from_std(socket: Self::Std) -> std::io::Result<Self>;
}

impl Movable for tokio::net::TcpStream {
    type Std = std::net::TcpStream;
    fn into_std(self) -> std::io::Result<Self::Std> {
        tokio::net::TcpStream::into_std(self)
    }
    fn from_std(socket: Self::Std) -> std::io::Result<Self> {
        tokio::net::TcpStream::from_std(socket)
    }
}

impl Movable for tokio::net::UnixStream {
    type Std = std::os::unix::net::UnixStream;
    fn into_std(self) -> std::io::Result<Self::Std> {
        tokio::net::UnixStream::into_std(self)
    }
    fn from_std(socket: Self::Std) -> std::io::Result<Self> {
        tokio::net::UnixStream::from_std(socket)
    }
}

/// Serves HTTP/1 on one connection until the client closes it; at
/// `stop`, finishes the request under way and closes, cut after `drain`.
async fn connection<S>(stream: S, app: impl App, stop: CancellationToken, drain: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let mut app = app.clone();
        async move { app.call(req.map(axum::body::Body::new)).await }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            return;
        }
        () = stop.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    if tokio::time::timeout(drain, conn).await.is_err() {
        tracing::debug!("HTTP connection cut at shutdown");
    }
}

/// How long accepting pauses after an error.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The next connection on `listener`, or `None` once `shutdown` is
/// cancelled. An error (out of file descriptors and the like) is logged
/// as accepting `what`, and accepting pauses rather than spins.
pub async fn accept_next<L: Accept>(
    listener: &L,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(L::Stream, L::Peer)> {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept_one() => match accepted {
                Ok(a) => return Some(a),
                Err(e) => tracing::warn!(error = %e, "accept {what}"),
            },
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(ACCEPT_PAUSE) => {}
        }
    }
}

/// A listening socket [`accept_next`] takes connections from.
pub trait Accept {
    type Stream;
    /// Who a connection came from, for logs.
    type Peer: std::fmt::Display + Clone + Send + 'static;
    fn accept_one(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    type Peer = SocketAddr;
    fn accept_one(
        &self,
    ) -> impl Future<Output = std::io::Result<(Self::Stream, Self::Peer)>> + Send {
        self.accept()
    }
}

/// A client of a Unix-domain socket, for logs: such a client has no
/// address, so it is named by its process and user when the kernel tells.
#[derive(Debug, Clone, Copy)]
pub struct LocalPeer {
    pub pid: Option<i32>,
    pub uid: Option<u32>,
}

impl std::fmt::Display for LocalPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("local socket")?;
        if let Some(pid) = self.pid {
            write!(f, " pid {pid}")?;
        }
        if let Some(uid) = self.uid {
            write!(f, " uid {uid}")?;
        }
        Ok(())
    }
}

impl Accept for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    type Peer = LocalPeer;
    async fn accept_one(&self) -> std::io::Result<(Self::Stream, Self::Peer)> {
        let (stream, _) = self.accept().await?;
        let cred = stream.peer_cred().ok();
        let peer = LocalPeer {
            pid: cred.and_then(|c| c.pid()),
            uid: cred.map(|c| c.uid()),
        };
        Ok((stream, peer))
    }
}
