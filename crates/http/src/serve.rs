//! Serving, over HTTP or HTTPS, with JSON fallbacks and a bounded
//! graceful drain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::serve::Listener;
use axum::{Router, ServiceExt};
use shardline_api::ErrorCode;
use shardline_tls::ServerTls;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
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
